"""Multiple-choice QA: accuracy on a hand-checkable toy task, scorer agreement, C⇓, few-shot <AC>, bad input."""

import json

import pytest
import torch

from anllm.cli import main
from anllm.config import AC_TOKEN, AnLLMError
from anllm.evaluation.harness import HarnessBackend, register_with_lm_eval, write_local_task
from anllm.evaluation.qa import LOCAL_TASKS, build_requests, evaluate_qa, load_jsonl, load_task, score_one_pass
from tests.conftest import make_lm
from tests.reference import expected_kept

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def uniform_lm(kind="ep"):
    """A model whose every weight is zero: logits are 0, so each token has log-probability -log(V)."""
    lm = make_lm(kind=kind)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.zero_()
    return lm


def test_toy_accuracy_is_hand_checkable():
    # Under a uniform model a choice scores -(1 + len(choice)) * log V (one character = one token, plus the
    # leading space): `acc` picks the shortest choice, `acc_norm` (per character) the longest. So the expected
    # accuracies are the fractions of items whose right answer is the shortest / the longest choice.
    rows = [json.loads(line) for line in LOCAL_TASKS["toy"].read_text().splitlines()]
    shortest = sum(min(range(len(r["choices"])), key=lambda i: len(r["choices"][i])) == r["label"] for r in rows)
    longest = sum(max(range(len(r["choices"])), key=lambda i: len(r["choices"][i])) == r["label"] for r in rows)
    assert (shortest, longest, len(rows)) == (4, 1, 12)  # by eye: toy-02, -04, -10, -11 / toy-09 (data README)
    res = evaluate_qa(uniform_lm(), load_task("toy"), shots=0)
    for s in ("masked", "anchor", "full", "nocache"):
        assert res.scorers[s].acc == pytest.approx(shortest / len(rows))
        assert res.scorers[s].acc_norm == pytest.approx(longest / len(rows))


@pytest.mark.parametrize("mode", ["ep", "ac"])
def test_scorers_agree_and_kv_reduction(mode):
    lm = make_lm(kind=mode)
    items = load_task("toy", limit=5)
    res = evaluate_qa(lm, items, shots=2)
    reqs = build_requests(items, 2, ac=mode == "ac")
    tok = lm.tokenizer
    kept = total = 0
    for r in reqs:
        ctx = tok(r.contexts[0])["input_ids"]
        conts = [tok(c, add_special_tokens=False)["input_ids"] for c in r.continuations]
        masked = [score_one_pass(lm, ctx, c, masked=True) for c in conts]
        plain = [score_one_pass(lm, ctx, c, masked=False) for c in conts]
        assert res.scorers["masked"].predictions[reqs.index(r)] == max(range(len(masked)), key=masked.__getitem__)
        assert res.scorers["nocache"].predictions[reqs.index(r)] == max(range(len(plain)), key=plain.__getitem__)
        kept += len(expected_kept(ctx, set(lm.anchor_ids)))
        total += len(ctx)
    # real anchor decoding ranks like the masked pass, the full cache like no cache (float64, true positions)
    assert res.scorers["anchor"].predictions == res.scorers["masked"].predictions
    assert res.scorers["full"].predictions == res.scorers["nocache"].predictions
    assert res.kv_reduction_prompt == pytest.approx(1 - kept / total)  # C⇓ = 1 - kept / total
    sp = res.speedups()
    assert sp["speedup_vs_nocache"] == pytest.approx(res.scorers["nocache"].seconds / res.scorers["anchor"].seconds)
    assert sp["speedup_vs_full"] == pytest.approx(res.scorers["full"].seconds / res.scorers["anchor"].seconds)


def test_cached_loglik_equals_masked_loglik():
    lm = make_lm()
    from anllm.evaluation.qa import score_cached

    ctx = lm.tokenizer("Birds fly. Fish swim. Question: what do birds do?\nAnswer:")["input_ids"]
    conts = [lm.tokenizer(c, add_special_tokens=False)["input_ids"] for c in (" they fly. Yes", " swim")]
    res = score_cached(lm, ctx, conts, "anchor")
    for c, ll in zip(conts, res.logliks):
        assert ll == pytest.approx(score_one_pass(lm, ctx, c, masked=True), abs=1e-9)
    full = score_cached(lm, ctx, conts, "full")
    for c, ll in zip(conts, full.logliks):
        assert ll == pytest.approx(score_one_pass(lm, ctx, c, masked=False), abs=1e-9)


def test_fewshot_ac_placement():
    items = load_task("toy", limit=7)
    for r in build_requests(items, 5, ac=True):
        demos = r.contexts[0].split("\n\n")
        assert len(demos) == 6 and r.contexts[0].count(AC_TOKEN) == 5
        assert all(d.endswith(" " + AC_TOKEN) for d in demos[:-1]) and AC_TOKEN not in demos[-1]
    sentence = build_requests(items, 5, ac=True, ac_placement="sentence")[0].contexts[0]
    assert sentence.count(AC_TOKEN) > 5  # every demonstration has two or more sentences
    assert AC_TOKEN not in build_requests(items, 5, ac=False)[0].contexts[0]


@pytest.mark.parametrize(
    "lines,words",
    [
        (
            ['{"query": "q", "choices": ["a", "b"], "label": 0}', '{"query": "q", "choices": ["a"], "label": 0}'],
            ":2: 'choices'",
        ),
        (['{"query": "q", "choices": ["a", "b"], "label": 2}'], ":1: 'label'"),
        (['{"query": "q", "choices": ["a", "b"], "label": 0}', "", "{not json"], ":3: malformed JSON"),
        (['{"question": "q", "choices": ["a", "b"], "label": 0}'], ":1: give exactly one of 'query'"),
        (['["q", "a"]'], ":1: expected a JSON object"),
    ],
)
def test_wrong_schema_names_the_line(tmp_path, lines, words):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnLLMError) as e:
        load_jsonl(f)
    assert words in str(e.value) and str(f) in str(e.value)


def test_unknown_task_and_long_context(tmp_path):
    with pytest.raises(AnLLMError, match="unknown task 'nosuch'"):
        load_task("nosuch")
    lm = make_lm()
    lm.model.config.max_position_embeddings = 40  # the check reads the config
    with pytest.raises(AnLLMError, match="supports 40 positions"):
        evaluate_qa(lm, load_task("toy", limit=2))


def test_cli_qa_json(capsys):
    assert main(["eval", "qa", "--model", "tiny-random", "--task", "toy", "--limit", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["items"] == 3 and out["shots"] == 0
    assert {"acc_masked", "acc_anchor", "acc_full", "acc_nocache", "kv_reduction_prompt", "speedup_vs_full"} <= set(out)
    assert main(["eval", "qa", "--model", "tiny-random", "--task", "nosuch"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_harness_backend(tmp_path):
    lm = make_lm(kind="ac")
    b = HarnessBackend(lm, scorer="anchor")
    assert b.mark_demos("a b\n\nc d\n\nq") == f"a b {AC_TOKEN}\n\nc d {AC_TOKEN}\n\nq"
    pairs = [("Birds fly.\n\nQ: sky?", " blue"), ("Birds fly.\n\nQ: sky?", " green"), ("Other.", " x")]
    got = b.loglikelihood(pairs)
    tok = lm.tokenizer
    for (ctx, cont), (ll, _) in zip(pairs, got):
        ref = score_one_pass(
            lm, tok(b.mark_demos(ctx))["input_ids"], tok(cont, add_special_tokens=False)["input_ids"], masked=True
        )
        assert ll == pytest.approx(ref, abs=1e-9)
    task = write_local_task(LOCAL_TASKS["toy"], tmp_path)
    assert str(LOCAL_TASKS["toy"].resolve()) in task.read_text()
    try:
        import lm_eval  # noqa: F401
    except ImportError:  # the optional dependency is absent: the entry point must say how to get it
        with pytest.raises(AnLLMError, match="pip install lm_eval"):
            register_with_lm_eval()
    else:
        from anllm.evaluation.harness import run_harness

        res = run_harness(make_lm(), str(LOCAL_TASKS["toy"]), limit=4)
        ours = evaluate_qa(make_lm(), load_task("toy", limit=4), scorers=("anchor",))
        assert res["anllm_local_mc"]["acc,none"] == pytest.approx(ours.scorers["anchor"].acc)


def test_hub_task_offline_is_a_clear_error():
    # `datasets` missing -> install/convert hint; present but the Hub unreachable (HF_HUB_OFFLINE=1) -> load error
    with pytest.raises(AnLLMError, match="arc_easy"):
        load_task("arc_easy", limit=2)


def test_cli_harness_flag(capsys):
    rc = main(["eval", "qa", "--harness", "--model", "tiny-random", "--task", "toy", "--limit", "2"])
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        assert rc == 2 and "pip install lm_eval" in capsys.readouterr().err
    else:
        assert rc == 0
