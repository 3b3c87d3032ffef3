"""Chat distillation data (issue 27, item 4): training instructions never worded like ``anllm eval assistant``'s,
deterministic, and records whose end of turn carries its own loss weight."""

import json
import re

import pytest

from anllm.config import AnLLMError
from anllm.evaluation.assistant import TEMPLATES as EVAL_TEMPLATES
from anllm.train.chat_data import TRAIN_CHAT_TEMPLATES, build_chat_data, chat_prompts, chat_record


def _words(x: str) -> list[str]:
    return re.findall(r"[\w']+", re.sub(r"\{\w+\}", "{}", x).lower())


def _grams(x: str, k: int = 5) -> set[tuple[str, ...]]:
    w = _words(x)
    return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}


def _eval_values() -> set[str]:
    """The benchmark's topic slot values (its counts, number words, are shared vocabulary, not topics)."""
    from anllm.evaluation.assistant import NUMBER_WORDS

    out = set()
    for t in EVAL_TEMPLATES:
        for s in t.slots:
            out |= {str(v).lower() for v in s.values() if isinstance(v, str) and len(v) > 3}
    return out - set(NUMBER_WORDS)


def test_training_instructions_share_no_wording_or_slot_values_with_the_assistant_benchmark():
    held = set().union(*(_grams(t.text, 4) for t in EVAL_TEMPLATES))
    for t in TRAIN_CHAT_TEMPLATES:
        assert not _grams(t.text, 4) & held, t.name  # not even four words in a row
    values = _eval_values()
    assert values  # the benchmark's topics were read
    for t in TRAIN_CHAT_TEMPLATES:
        for pool in t.pools.values():
            assert not {str(v).lower() for v in pool} & values, t.name
    prompts = [p for _, p in chat_prompts(400, 5)]
    evals = {t.text.format(**s).lower() for t in EVAL_TEMPLATES for s in t.slots}
    assert not {p.lower() for p in prompts} & evals


def test_chat_prompts_are_deterministic_distinct_and_cover_every_template():
    a, b = chat_prompts(200, 5), chat_prompts(200, 5)
    assert a == b and len({p for _, p in a}) == 200
    assert {n for n, _ in a} == {t.name for t in TRAIN_CHAT_TEMPLATES}
    assert chat_prompts(200, 6) != a
    with pytest.raises(AnLLMError, match="distinct instructions"):
        chat_prompts(100_000, 5)


@pytest.mark.slow
def test_a_record_weights_the_end_of_turn_and_trains_through_segments(tmp_path):
    from anllm.models import load_model
    from anllm.train.config import TrainConfig
    from anllm.train.data import segments_example

    lm = load_model("smollm2-135m")
    tok = lm.tokenizer
    rec = chat_record(tok, "Name a colour.", "Blue.", answer_weight=1.5, end_weight=4.0)
    cfg = TrainConfig.from_dict({"model": "smollm2-135m", "train_files": ["x.jsonl"], "block_size": 256})
    ex = segments_example(rec, cfg, tok)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    k = ex.input_ids.index(eos, len(ex.input_ids) - 3)  # the end of turn after the answer
    assert ex.weights[k] == 4.0 and ex.weights[k - 1] == 1.5 and ex.weights[0] == 1.0
    assert tok.decode(ex.input_ids).count("Blue.") == 1 and not any(ex.targets)
    # the builder keeps only answers the teacher ended itself, and resumes
    out = tmp_path / "chat.jsonl"
    counts = build_chat_data(lm, out, n=3, seed=5, max_new_tokens=24, batch_size=3)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert counts["kept"] == len(lines) and counts["kept"] + counts["dropped"] == 3
    for r in lines:
        assert r["segments"][2]["text"].startswith(tok.eos_token) and r["instruction"] in r["segments"][0]["text"]
    again = build_chat_data(lm, out, n=3, seed=5, max_new_tokens=24, batch_size=3)
    assert again["already"] == len(lines) and again["asked"] == 3 - len(lines)


def test_the_command_refuses_bad_numbers_before_loading_anything(tmp_path, capsys):
    from anllm.train.chat_data import main

    assert main(["--out", str(tmp_path / "c.jsonl"), "--n", "100000"]) == 2
    assert "distinct instructions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "c.jsonl"), "--n", "0"])
    assert not (tmp_path / "c.jsonl").exists()
