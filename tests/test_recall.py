"""The recall benchmark: deterministic items that never leak the answer, scored exactly through the real caches."""

import json
import random
import re
import subprocess
import sys

import pytest
import torch

from anllm.config import AnLLMError
from anllm.evaluation.recall import (
    answer_logprob,
    builtin_items,
    evaluate_recall,
    exact_match,
    load_user_items,
    render,
    score_item,
)
from anllm.evaluation.tasks import load_task
from anllm.generation import make_cache, prefill
from anllm.memory import (
    EVAL_TEMPLATES,
    FAMILIES,
    TRAIN_FORM_TEMPLATES,
    TRAIN_TEMPLATES,
    TRAIN_TEMPLATES_V2,
    FormTemplate,
    _train_form_values,
    _values,
    leaks,
    make_items,
)
from tests.conftest import make_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FILLER = " ".join(f"Sentence number {i} talks about the weather and the fields." for i in range(200))


def chars(s: str) -> int:
    return len(s)


def items(seed=3, families=FAMILIES, distances=(40, 200), n=3):
    return make_items(
        seed=seed,
        distances=distances,
        n_per_distance=n,
        filler=FILLER,
        count_tokens=chars,
        families=families,
        fewshot_items=load_task("toy"),
    )


def test_items_are_deterministic_per_seed_and_differ_across_seeds():
    a, b, c = items(3), items(3), items(4)
    assert [i.to_dict() for i in a] == [i.to_dict() for i in b]
    assert [i.to_dict() for i in a] != [i.to_dict() for i in c]
    assert {i.family for i in a} == set(FAMILIES) and len(a) == len(FAMILIES) * 2 * 3


def test_answer_never_leaks_into_the_question_and_is_in_the_context():
    for it in items(5, families=("single", "multi", "chat"), n=20):  # fewshot: the packaged QA task's own items
        assert not leaks(it.answer, it.question), it
        assert re.search(rf"\b{re.escape(it.answer)}\b", it.context), it


@pytest.mark.parametrize("family", ["single", "chat"])
def test_distance_is_the_filler_between_fact_and_question(family):
    for it in items(1, families=(family,), distances=(300,), n=5):
        fact_end = it.context.index(it.answer) + len(it.answer)
        after = len(it.context) - fact_end
        assert 300 <= after <= 300 + 600, after  # at least the distance, at most one more turn of filler


def wording(templates) -> list[str]:
    """Every statement and question of a template set (all paraphrases of a form template)."""
    out = []
    for t in templates:
        out += [t.statement, *(t.questions if isinstance(t, FormTemplate) else [t.question])]
    return out


def test_eval_and_train_templates_share_no_wording():
    def norm(x):
        return re.sub(r"\{\w+\}", "{}", x)

    for train_set in (TRAIN_TEMPLATES, TRAIN_TEMPLATES_V2):
        assert not {norm(x) for x in wording(train_set)} & {norm(x) for x in wording(EVAL_TEMPLATES)}


def test_exact_match_rules():
    assert exact_match("4821", "The code is 4821.")
    assert exact_match("Lisbon", "lisbon!\nsomething else")
    assert not exact_match("4821", "48210")
    assert not exact_match("Lisbon", "I do not know.\nLisbon")  # only the first line counts
    assert not exact_match("", "anything")


@pytest.mark.parametrize("mode", ["full", "anchor", "streaming:sink=2,window=9", "sepllm:sink=1,window=5"])
@pytest.mark.parametrize("anchors", ["ep", "ac"])
def test_scoring_through_the_real_cache_equals_one_masked_forward(mode, anchors):
    lm = make_lm("qwen2", anchors, n_sink=1, window=3)
    it = items(2, families=("single",), distances=(60,), n=1)[0]
    prompt, answer = render(lm, it, chat=False)
    with torch.no_grad():
        cache = make_cache(lm, mode)
        chunk = None if cache.policy.uses_model_causal_mask else 7
        last = prefill(lm.model, cache, torch.tensor([prompt]), chunk_size=chunk)
        got = answer_logprob(lm, cache, last, answer)
        # reference: prompt + answer in one forward pass with the policy's whole-sequence mask, no eviction
        ids = torch.tensor([prompt + answer])
        mask, pos = make_cache(lm, mode).prepare(ids, dtype=lm.model.dtype)
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1].double(), -1)
        want = float(logp.gather(1, torch.tensor(answer)[:, None]).mean())
    assert abs(got - want) < 1e-6
    if mode == "anchor":
        assert int(cache.n_kept()[0]) < len(prompt)  # the cache really evicted
    again = score_item(lm, prompt, it.answer, answer, mode, chunk_size=chunk, max_new_tokens=3)
    assert abs(again.logprob - want) < 1e-6 and again.prompt_tokens == len(prompt)


def test_budgets_are_matched_per_item_and_rows_aggregate_items():
    lm = make_lm("llama", "ep", dtype=torch.float32, n_sink=1, window=4)
    its = items(7, families=("single", "multi"), distances=(50,), n=2)
    res = evaluate_recall(lm, its, ("full", "anchor", "streaming"), chat=False, max_new_tokens=2)
    by = {(r["id"], r["mode"]): r for r in res.items}
    for it in its:
        anchor_kv = by[(it.id, "anchor")]["kv_entries"]
        assert by[(it.id, "streaming")]["spec"] == f"streaming:budget={anchor_kv},sink=4"
        assert by[(it.id, "streaming")]["kv_entries"] == anchor_kv
        assert by[(it.id, "full")]["kv_entries"] == by[(it.id, "full")]["prompt_tokens"]
    assert {(r.mode, r.family) for r in res.rows} == {(m, f) for m in ("full", "anchor", "streaming") for f in
                                                       ("single", "multi")}  # fmt: skip
    assert all(r.n == 2 for r in res.rows)
    row = next(r for r in res.rows if r.mode == "anchor" and r.family == "multi")
    mine = [by[(it.id, "anchor")] for it in its if it.family == "multi"]
    assert row.logprob == pytest.approx(sum(m["logprob"] for m in mine) / 2)


def test_too_long_distance_is_refused_before_running():
    lm = make_lm("llama", "ep", dtype=torch.float32)
    its = items(1, families=("single",), distances=(5000,), n=1)
    with pytest.raises(AnLLMError, match="distance 5000 needs .* positions but the model supports 4096"):
        evaluate_recall(lm, its, ("full", "anchor"), chat=False)


def test_user_jsonl_bad_line_is_named(tmp_path):
    good = {"context": "The key is under the mat.", "question": "Where is the key?", "answer": "under the mat"}
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "answer": 7}) + "\n")
    with pytest.raises(AnLLMError, match=r"items.jsonl:3: 'answer' must be a non-empty string \(got int\)"):
        load_user_items(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(AnLLMError, match=r"items.jsonl:2: malformed JSON"):
        load_user_items(path)
    path.write_text(json.dumps(good) + "\n")
    (it,) = load_user_items(path)
    assert it.family == "user" and it.answer == "under the mat"


def test_builtin_items_use_the_model_tokens_for_distance():
    lm = make_lm("llama", "ep")
    its = builtin_items(lm, distances=(120,), n=2, families=("single",))
    assert len(its) == 2 and all(len(it.context) >= 120 for it in its)  # character tokenizer: 1 char = 1 token


def test_cli_recall_json_and_plot(tmp_path):
    plot = tmp_path / "recall.html"
    cmd = [sys.executable, "-m", "anllm", "eval", "recall", "--model", "tiny-random", "--modes", "full,anchor",
           "--distances", "40", "--n", "1", "--families", "single,fewshot", "--max-new-tokens", "2",
           "--no-chat", "--plot", str(plot), "--json"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {r["mode"] for r in out["rows"]} == {"full", "anchor"}
    assert {r["family"] for r in out["rows"]} == {"single", "fewshot"}
    assert plot.is_file() and "exact match" in plot.read_text()
    bad = subprocess.run(cmd[:-4] + ["--distances", "9000"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "distance 9000" in bad.stderr and "Traceback" not in bad.stderr


def test_memory_training_records_use_training_templates_only(tmp_path):
    from anllm.models import tiny_tokenizer
    from anllm.train.memory_data import build_memory_data

    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": FILLER[i * 500 : (i + 1) * 500]}) + "\n" for i in range(20)))
    out = tmp_path / "mem.jsonl"
    info = build_memory_data(corpus, out, tiny_tokenizer(), n=30, seed=2, max_distance=200, answer_weight=3.0)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert info["records"] == len(records) == 30
    eval_regex = [re.compile(re.sub(r"\\\{\w+\\\}", r".+?", re.escape(t.question))) for t in EVAL_TEMPLATES]
    for r in records:
        prompt, answer = r["segments"]  # the tiny tokenizer has no chat template: plain layout
        assert answer["target"] and answer["weight"] == 3.0 and prompt["weight"] == 1.0
        question = prompt["text"].rsplit("Question: ", 1)[1].split("\nAnswer:")[0]
        assert not any(rx.fullmatch(question) for rx in eval_regex), question
        assert answer["text"].strip(" .") in prompt["text"]


def test_memory_training_distance_range_is_checked(tmp_path):
    from anllm.models import tiny_tokenizer
    from anllm.train.memory_data import build_memory_data

    corpus = tmp_path / "train.jsonl"
    corpus.write_text(json.dumps({"text": FILLER[:2000]}) + "\n")
    for lo, hi in ((0, 100), (300, 200)):
        with pytest.raises(AnLLMError, match="min_distance <= max_distance"):
            build_memory_data(corpus, tmp_path / "m.jsonl", tiny_tokenizer(), n=3, min_distance=lo, max_distance=hi)
    assert not (tmp_path / "m.jsonl").exists()  # nothing written for a refused range


def test_acceptance_forms_share_no_wording_with_training():
    from anllm.memory import (
        ACCEPTANCE_OPENERS,
        CHAT_OPENERS_EVAL,
        CHAT_OPENERS_TRAIN,
        CHAT_OPENERS_TRAIN_V2,
        FORM_TEMPLATES,
        TRAIN_FORM_TEMPLATES,
    )

    def norm(x):
        return re.sub(r"\{\w+\}", "{}", x).lower()

    def grams(x, k=5):
        w = re.findall(r"[\w{}']+", norm(x))
        return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}

    train = wording(TRAIN_TEMPLATES_V2)  # the v1 templates and the v2 form templates
    held = wording(FORM_TEMPLATES)
    assert not {norm(x) for x in train} & {norm(x) for x in held}
    shared = set().union(*(grams(x) for x in train)) & set().union(*(grams(x) for x in held))
    assert not shared, shared  # not even five words in a row
    # the v2 additions share no five words in a row with the benchmark's templates either
    new = wording(TRAIN_FORM_TEMPLATES) + list(CHAT_OPENERS_TRAIN_V2)
    shared = set().union(*(grams(x) for x in new)) & set().union(*(grams(x) for x in wording(EVAL_TEMPLATES)))
    assert not shared, shared
    for openers in (CHAT_OPENERS_TRAIN, CHAT_OPENERS_TRAIN_V2):
        assert not {norm(x) for x in openers} & {norm(x) for x in (*ACCEPTANCE_OPENERS, *CHAT_OPENERS_EVAL)}


def test_v2_training_items_are_deterministic_and_never_leak():
    from anllm.memory import CHAT_OPENERS_TRAIN_V2

    def v2(seed):
        return make_items(seed=seed, distances=(40, 200), n_per_distance=20, filler=FILLER, count_tokens=chars,
                          templates=TRAIN_TEMPLATES_V2, chat_openers=CHAT_OPENERS_TRAIN_V2)  # fmt: skip

    a, b, c = v2(11), v2(11), v2(12)
    assert [i.to_dict() for i in a] == [i.to_dict() for i in b] != [i.to_dict() for i in c]
    forms = {i.template for i in a + c if isinstance(TRAIN_TEMPLATES_V2[i.template], FormTemplate)}
    assert len(forms) > 10  # the new forms are drawn, not only the v1 templates
    for it in a + c:
        assert not leaks(it.answer, it.question), it
        assert re.search(rf"(?<!\w){re.escape(it.answer)}(?!\w)", it.context), it
    rng = random.Random(0)
    for t in TRAIN_FORM_TEMPLATES:  # every paraphrase fills, and its answer is stated in the fact
        assert t.pool == "train" and len(t.asks) >= 2
        for k in range(len(t.asks)):
            values = {**_values(rng), **_train_form_values(rng)}
            statement, question, answer = t.fill(values, k)
            assert answer in statement and "{" not in statement + question
    kinds = {t.kind for t in TRAIN_FORM_TEMPLATES}
    assert {"date", "name", "number", "code", "phrase", "title", "multi"} <= kinds
    assert sum(len({slot for _, slot in t.asks}) >= 2 for t in TRAIN_FORM_TEMPLATES) >= 6  # several facts at once


def test_memory_training_v2_draws_filler_from_both_corpora(tmp_path):
    from anllm.models import tiny_tokenizer
    from anllm.train.memory_data import build_memory_data

    lit = " ".join(f"The old shepherd number {i} sang to the hills at dusk." for i in range(300))
    tech = " ".join(f"The daemon number {i} writes its socket path to the config file." for i in range(300))
    for name, text in (("lit", lit), ("tech", tech)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": text[i * 600 : (i + 1) * 600]}) + "\n"
                                                        for i in range(25)))  # fmt: skip
    kw = dict(n=40, seed=5, max_distance=120, templates="v2", second_corpus=tmp_path / "tech.jsonl")
    info = build_memory_data(tmp_path / "lit.jsonl", tmp_path / "m.jsonl", tiny_tokenizer(), **kw)
    again = build_memory_data(tmp_path / "lit.jsonl", tmp_path / "m2.jsonl", tiny_tokenizer(), **kw)
    text = (tmp_path / "m.jsonl").read_text()
    assert text == (tmp_path / "m2.jsonl").read_text() and info["items_per_corpus"] == again["items_per_corpus"]
    assert info["templates"] == "v2" and info["n_templates"] == len(TRAIN_TEMPLATES_V2)
    assert min(info["items_per_corpus"]) >= 10 and sum(info["items_per_corpus"]) == 40
    prompts = [json.loads(x)["segments"][0]["text"] for x in text.splitlines()]
    shepherd, daemon = (sum(word in p for p in prompts) for word in ("shepherd", "daemon"))
    assert shepherd >= 10 and daemon >= 10, (shepherd, daemon)
    eval_regex = [re.compile(re.sub(r"\\\{\w+\\\}", r".+?", re.escape(q))) for q in wording(EVAL_TEMPLATES)]
    for p in prompts:
        question = p.rsplit("Question: ", 1)[1].split("\nAnswer:")[0]
        assert not any(rx.fullmatch(question) for rx in eval_regex), question
    with pytest.raises(AnLLMError, match="unknown template set"):
        build_memory_data(tmp_path / "lit.jsonl", tmp_path / "x.jsonl", tiny_tokenizer(), n=2, templates="v9")


def test_held_out_form_items_are_unchanged_by_the_training_forms():
    """The acceptance harness's items (FORM_TEMPLATES) draw their values in the order they always did: adding the
    training forms' value pools must not move them (pinned: seed 3, KJV Genesis filler, characters as tokens)."""
    from anllm.memory import FORM_TEMPLATES
    from anllm.resources import KJV_GENESIS, read_resource

    got = make_items(seed=3, distances=(200,), n_per_distance=5, filler=read_resource(KJV_GENESIS), count_tokens=chars,
                     families=("single",), templates=FORM_TEMPLATES)  # fmt: skip
    assert [i.template for i in got] == [3, 5, 6, 11, 13]
    assert [i.answer for i in got] == ["8:50", "on top of the wardrobe", "Seven Paper Boats", "Bergen", "Quentin"]
