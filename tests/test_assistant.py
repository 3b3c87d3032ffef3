"""``anllm eval assistant`` (issue 27, item 4): the held-out prompts, their checks, the EOS and all-checks shares, and
the command's refusals. Tiny models only; the real run is docs/benchmarks-data/assistant-default-2026-12-07.json."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from anllm.cli import main
from anllm.commands.checks import OPTIONS
from anllm.config import GenerationConfig
from anllm.evaluation import assistant as A
from anllm.evaluation.acceptance import REFERENCE, adapter_disabled
from anllm.generation import eos_ids, generate_batch
from tests.conftest import make_lm
from tests.test_acceptance import peft_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = {p.id: p for p in A.assistant_prompts()}


# -- the prompts -----------------------------------------------------------------------------------------------------
def test_prompts_are_deterministic_distinct_and_enough():
    first, again = A.assistant_prompts(), A.assistant_prompts()
    assert first == again and len(first) == A.N_PROMPTS >= 50
    assert len({p.prompt for p in first}) == len(first) and len({p.id for p in first}) == len(first)
    assert all(len(p.checks) >= 2 for p in first)  # several instructions, one check each
    assert OPTIONS["eval assistant --n"].hi == A.N_PROMPTS  # the CLI's range is the prompts there are
    short = A.assistant_prompts(len(A.TEMPLATES))  # slot-major: a short run has one prompt of every template
    assert {p.template for p in short} == {t.name for t in A.TEMPLATES}
    assert A.assistant_prompts(7) == first[:7]


def _fragments(template_text: str) -> list[str]:
    """The literal pieces of a ``{slot}`` template (5-word runs must not cross a slot)."""
    return [x for x in re.split(r"\{[^}]*\}", template_text) if x.strip()]


def _shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    ws = A.words(text)
    return {tuple(ws[i : i + k]) for i in range(len(ws) - k + 1)}


def ui_strings() -> dict[str, str]:
    """Every module-level ``NAME = "text"`` of ``anllm/ui`` (the app's example prompts among them), read with ``ast``
    so that gradio is not imported."""
    out = {}
    for path in sorted((Path(A.__file__).parents[1] / "ui").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                out.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return out


def test_prompts_share_no_wording_with_memory_templates_or_the_app_examples():
    from anllm import memory

    app = ui_strings()
    assert {"DEFAULT_PROMPT", "DEFAULT_EXPLORER_TEXT"} <= set(app)  # the Generate and Explorer tabs' examples
    others = list(app.values())
    for t in (*memory.EVAL_TEMPLATES, *memory.TRAIN_TEMPLATES):
        others += _fragments(t.statement) + _fragments(t.question)
    for t in memory.FORM_TEMPLATES:
        others += _fragments(t.statement) + [f for q in t.questions for f in _fragments(q)]
    others += [*memory.CHAT_OPENERS_EVAL, *memory.CHAT_OPENERS_TRAIN, *memory.ACCEPTANCE_OPENERS]
    theirs = set().union(*(_shingles(o) for o in others))
    for p in A.assistant_prompts():
        assert p.prompt not in others
        assert not _shingles(p.prompt) & theirs, p.prompt


# -- the checks on hand-written answers ------------------------------------------------------------------------------
CASES = [  # (prompt id, answer, expected result of each of its checks in order)
    ("yes-no-1", "No. Penguins have wings built for swimming, not flying.", [True, True, True, True]),
    ("yes-no-1", "Penguins cannot fly because their wings are small.", [False, False, True, True]),
    ("yes-no-1", "Yes, they can.", [True, False, False, True]),
    ("yes-no-1", "**No**, they can't. Their wings are flippers. They swim instead.", [True, True, True, False]),
    ("favourite-0", "Red and blue are primary colours, and my favourite is blue.", [True, True, True]),
    ("favourite-0", "Red is nice. Blue is too. I like green.", [True, False, False]),
    ("favourite-0", "My favourite primary colour is yellow.", [False, True, True]),
    ("sum-parity-0", "12. It is an even number.", [True, True, True]),
    ("sum-parity-0", "Twelve, which is even.", [True, True, True]),
    ("sum-parity-0", "The answer is 13, which is odd.", [False, False, True]),
    ("list-done-0", "1. Carrot\n2. Potato\n3. Onion\nDONE", [True, True]),
    ("list-done-0", "1. Carrot\n2) Potato\nDone.", [False, True]),
    ("list-done-0", "- Carrot\n- Pea\n- Leek\n- Bean", [False, False]),
    ("two-words-0", "The river was wide. We ate fresh bread.", [True, True, True]),
    ("two-words-0", "The river was wide.", [True, False, True]),
    ("two-words-0", "Here you go. The river was wide. We ate bread.", [True, True, False]),
    ("capital-0", "The capital of France is Paris, in Europe.", [True, True, True]),
    ("capital-0", "Paris. It is in Europe.", [True, True, False]),
    ("capital-0", "The capital of France is Lyon.", [False, False, True]),
    ("opposite-0", "Cold. The water was cold this morning.", [True, True, True]),
    ("opposite-0", "Cold.", [True, False, True]),
    ("opposite-0", "Warm " * 31, [False, False, False]),
    ("bullets-0", "- Sandwiches\n- A blanket\n- Cold drinks", [True, True]),
    ("bullets-0", "* Food and drinks for everyone at the picnic in the park today\n* Blanket\n* Hat", [True, False]),
    ("bullets-0", "Sandwiches, a blanket and drinks.", [False, False]),
    ("comma-line-0", "shark, dolphin, octopus", [True, True]),
    ("comma-line-0", "Shark, dolphin and whale.\nThey all swim.", [True, False]),
    ("comma-line-0", "Shark, dolphin, whale, crab", [False, True]),
    ("word-limit-0", "A hammer is used for driving nails into wood.", [True, True]),
    ("word-limit-0", "It drives nails into wood and pulls them out again when you need it to.", [False, False]),
    ("count-0", "one, two, three, four, five. The largest is five.", [True, True]),
    ("count-0", "1, 2, 3, 4, 5", [False, False]),
    ("count-0", "one, two, four, five. Five is the largest.", [False, True]),
    ("french-0", "Chat. My cat sleeps on the sofa.", [True, True, True]),
    ("french-0", "Le chat.", [True, False, True]),
]


@pytest.mark.parametrize("pid, answer, expected", CASES)
def test_checks_on_hand_written_answers(pid, answer, expected):
    got = [c["pass"] for c in PROMPTS[pid].score(answer)]
    assert got == expected, [c["check"] for c in PROMPTS[pid].score(answer)]


def test_readers():
    assert A.sentences("Yes. It is 3.5 m long! Really?\nSure") == ["Yes.", "It is 3.5 m long!", "Really?", "Sure"]
    assert A.list_items("Intro:\n1. a b\n 2) c\n- d\n* e\n• f\n3.5 is not") == ["a b", "c", "d", "e", "f"]
    assert A.first_number("forty-two apples and 7 pears") == 42
    assert A.first_number("It is twelve.") == 12 and A.first_number("none here") is None
    assert A.first_number("Sum: 19") == 19
    assert A.mentions("Cats are nice.", "cat") and not A.mentions("A category.", "cat")
    assert A.mentions("It lies in north America.", "North America")
    with pytest.raises(Exception, match="unknown check"):
        A.Check("x", "no_such_check")


# -- the shares ------------------------------------------------------------------------------------------------------
def test_eos_share_on_a_synthetic_case(monkeypatch):
    """Decoded ids chosen by hand: an answer ends by EOS only when its last id is an end-of-sequence id."""
    lm = make_lm(dtype=torch.float32)
    eos = lm.tokenizer.eos_token_id
    ids = lm.tokenizer("Red and blue; my favourite is red.", add_special_tokens=False)["input_ids"]
    canned = {"full": [ids + [eos], ids[:4], ids[:2] + [eos]], "anchor": [ids[:4], ids[:4], ids + [eos]]}
    monkeypatch.setattr(
        "anllm.generation.generate_batch", lambda lm, prompts, policy, gen: canned[policy][: len(prompts)]
    )
    cfg = A.AssistantConfig(n=3, reference=False, batch_size=3, max_new_tokens=40)
    recs = A.run_assistant(lm, cfg)
    assert [(r["row"], r["eos"], r["new_tokens"]) for r in recs] == [
        ("full", True, len(ids)), ("full", False, 4), ("full", True, 2),
        ("anchor", False, 4), ("anchor", False, 4), ("anchor", True, len(ids)),
    ]  # fmt: skip
    assert recs[0]["all_pass"] and recs[0]["output"] == "Red and blue; my favourite is red."
    s = A.summarise(recs, n_boot=200)
    rows = {r["row"]: r for r in s["rows"]}
    assert rows["full"]["eos"]["mean"] == pytest.approx(2 / 3) and rows["anchor"]["eos"]["mean"] == pytest.approx(1 / 3)
    assert rows["full"]["eos"]["lo"] <= 2 / 3 <= rows["full"]["eos"]["hi"] and rows["full"]["n"] == 3
    parts = [sum(c["pass"] for c in r["checks"]) / len(r["checks"]) for r in recs[:3]]
    assert rows["full"]["parts"]["mean"] == pytest.approx(sum(parts) / 3) and parts[0] == 1.0
    acc = s["acceptance"]
    assert acc["eos"]["ratio"] == pytest.approx(0.5) and not acc["eos"]["holds"] and not acc["holds"]
    diff = acc["eos"]["anchor_minus_full"]  # paired per prompt: (0 - 1, 0 - 0, 1 - 1) / 3
    assert diff["mean"] == pytest.approx(-1 / 3) and diff["lo"] <= -1 / 3 <= diff["hi"] and diff["n"] == 3
    assert {(t["template"], t["row"]) for t in s["by_template"]} == {
        (p.template, row) for p in A.assistant_prompts(3) for row in ("full", "anchor")
    }


def test_acceptance_verdict():
    def row(name, eos, ok):
        return {"row": name, "eos": {"mean": eos}, "all_pass": {"mean": ok}}

    assert A.acceptance([row("full", 0.5, 0.4), row("anchor", 0.45, 0.36)])["holds"]  # exactly 0.9 x full
    assert not A.acceptance([row("full", 0.5, 0.4), row("anchor", 0.45, 0.3)])["holds"]
    assert A.acceptance([row("full", 0.5, 0.4)]) is None


def test_rows_run_the_base_with_the_adapter_off_and_the_adapted_full_and_anchor_caches():
    lm = peft_lm()
    cfg = A.AssistantConfig(n=2, max_new_tokens=6)
    recs = A.run_assistant(lm, cfg)
    assert [r["row"] for r in recs] == [REFERENCE] * 2 + ["full"] * 2 + ["anchor"] * 2
    prompts = [p.prompt for p in A.assistant_prompts(2)]
    gen = GenerationConfig(max_new_tokens=6, chat=True)
    with adapter_disabled(lm):
        base = generate_batch(lm, prompts, "full", gen)
    want = {REFERENCE: base, "full": generate_batch(lm, prompts, "full", gen)}
    want["anchor"] = generate_batch(lm, prompts, "anchor", gen)
    stops = eos_ids(lm)
    for row, outs in want.items():
        mine = [r for r in recs if r["row"] == row]
        for r, ids in zip(mine, outs):
            assert r["output"] == lm.tokenizer.decode(ids, skip_special_tokens=True).strip()
            assert r["eos"] == (ids[-1] in stops) and r["new_tokens"] == len(ids) - r["eos"]
    batched = A.run_assistant(lm, A.AssistantConfig(n=2, max_new_tokens=6, batch_size=2))
    assert [r["output"] for r in batched] == [r["output"] for r in recs]
    with pytest.raises(Exception, match="unmerged adapter"):
        A.run_assistant(make_lm(), cfg)


def test_config_is_validated():
    for bad in (dict(n=0), dict(n=A.N_PROMPTS + 1), dict(max_new_tokens=0), dict(batch_size=0)):
        with pytest.raises(Exception, match="assistant"):
            A.AssistantConfig(**bad)


# -- the command -----------------------------------------------------------------------------------------------------
def test_cli_writes_the_json_with_the_command(tmp_path, capsys):
    out = tmp_path / "a.json"
    argv = ["eval", "assistant", "--model", "tiny-random", "--no-reference", "--out", str(out), "--n", "2",
            "--max-new-tokens", "3"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["command"].startswith("anllm ") and data["config"]["n"] == 2
    assert [r["row"] for r in data["rows"]] == ["full", "anchor"] and len(data["records"]) == 4
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["acceptance"]["target"] == A.TARGET


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--n", "0"], "--n must be a number >= 1"),
        (["--n", str(A.N_PROMPTS + 1)], f"<= {A.N_PROMPTS}"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--batch-size", "0"], "--batch-size"),
        (["--model", "no-such-model"], "no-such-model"),
    ],
)
def test_cli_refuses_bad_options_with_one_line(tmp_path, capsys, extra, says):
    out = tmp_path / "a.json"
    assert main(["eval", "assistant", "--model", "tiny-random", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and err[0].startswith("anllm eval: error:")
    assert not out.exists()


def test_cli_refuses_an_output_directory_and_the_base_row_without_adapter(tmp_path, capsys):
    assert main(["eval", "assistant", "--model", "tiny-random", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    out = tmp_path / "a.json"
    assert main(["eval", "assistant", "--model", "tiny-random", "--out", str(out), "--n", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unmerged adapter" in err[0] and "--no-reference" in err[0] and not out.exists()
