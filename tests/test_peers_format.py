"""kvpress side by side (bench/peers/): the exported inputs, the peer runner's scoring without kvpress, the results
schema and the merged table. kvpress itself is not installed here (docs/benchmarks.md, "kvpress side by side")."""

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from anllm.config import AnchorConfig, AnLLMError
from anllm.evaluation.peers import (
    RESULTS_SCHEMA,
    anchor_chunk_budgets,
    combine_peer_results,
    file_sha256,
    markdown_table,
    merge,
    question_start,
    read_anllm_results,
    read_peer_results,
)
from anllm.evaluation.recall import builtin_items, render
from anllm.memory import MemoryItem
from anllm.models import load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "peers"))
import export_inputs  # noqa: E402
import run_kvpress  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("peers")
    export_inputs.export(
        out,
        model="tiny-random",
        base_model="tiny-random",
        distances=(8,),
        n=1,
        families=("single", "chat"),
        max_tokens=300,
        max_new_tokens=6,
    )
    meta, recall, ppl, sha = run_kvpress.read_inputs(out / "inputs.jsonl")
    return SimpleNamespace(dir=out, meta=meta, recall=recall, ppl=ppl, sha=sha, lm=load_model("tiny-random"))


# -- the exporter ------------------------------------------------------------------------------------------------------
def test_question_start_splits_a_plain_prompt_where_the_question_begins():
    lm = load_model("tiny-random")  # character tokenizer: one token per character, no BOS
    item = MemoryItem("u-1", "user", -1, "Ann lives in Oslo. The sky was grey.", "Where does Ann live?", "Oslo")
    prompt, _ = render(lm, item, chat=False)
    text = item.plain_prompt()
    k = question_start(lm, item, prompt)
    assert k == text.rindex(item.question)
    assert lm.tokenizer.decode(prompt[k:]).startswith(item.question)


def test_question_start_refuses_a_prompt_without_the_question():
    lm = load_model("tiny-random")
    item = MemoryItem("u-2", "user", -1, "Some context.", "Where?", "x")
    with pytest.raises(AnLLMError, match="u-2.*does not appear"):
        question_start(lm, item, lm.tokenizer("Some context.")["input_ids"])


def test_exported_inputs_are_anllms_prompts_split_at_the_question(exported):
    anllm_res = read_anllm_results(exported.dir / "anllm.json")
    assert anllm_res["inputs_sha256"] == exported.sha == file_sha256(exported.dir / "inputs.jsonl")
    lm = exported.lm
    items = builtin_items(lm, seed=0, distances=(8,), n=1, families=("single", "chat"))
    assert [x["id"] for x in exported.recall] == [it.id for it in items]
    anchor_kv = {r["id"]: r["kv_entries"] for r in anllm_res["recall"] if r["mode"] == "anchor"}
    for line, it in zip(exported.recall, items):
        prompt, answer = render(lm, it)
        assert line["context_ids"] + line["question_ids"] == prompt and line["answer_ids"] == answer
        assert lm.tokenizer.decode(line["question_ids"]).startswith(it.question)
        assert line["anchor_kv"] == anchor_kv[it.id] < len(prompt)
    assert exported.meta["eos_ids"] == [lm.tokenizer.eos_token_id] and exported.meta["max_new_tokens"] == 6
    (ppl,) = exported.ppl
    assert len(ppl["ids"]) == 300 and ppl["chunk_size"] == 256 and ppl["budgets"][0] == 0
    assert set(anllm_res["ppl"]) == {"full", "anchor", "streaming", "sepllm", "full-base"}


def test_chunk_budgets_of_a_full_cache_are_the_tokens_seen():
    lm = load_model("tiny-random")
    ids = list(range(5, 75))
    assert anchor_chunk_budgets(lm, ids, 16, "full") == [0, 16, 32, 48, 64]
    anchor = anchor_chunk_budgets(lm, ids, 16)
    assert anchor[0] == 0 and all(0 < k < 16 * i for i, k in enumerate(anchor) if i)


# -- the runner (kvpress venv), scored here without kvpress ------------------------------------------------------------
def test_runner_without_a_press_reproduces_anllms_full_cache(exported):
    """Same ids, same stopping rules: the peer harness equals anllm's own full-cache scoring."""
    anllm_res = json.loads((exported.dir / "anllm.json").read_text())
    full = {r["id"]: r for r in anllm_res["recall"] if r["mode"] == "full-base"}
    model, tok = exported.lm.model, exported.lm.tokenizer
    for line in exported.recall:
        rec = run_kvpress.score_recall(
            model, tok, line, "none", eos_ids=set(exported.meta["eos_ids"]), max_new_tokens=6
        )
        assert rec["output"] == full[line["id"]]["output"]
        assert rec["logprob"] == pytest.approx(full[line["id"]]["logprob"], abs=1e-5)
        assert rec["kv_entries"] == full[line["id"]]["kv_entries"] and rec["compression_ratio"] == 0.0
    p = run_kvpress.score_ppl(model, exported.ppl[0], "none")
    assert p["ppl"] == pytest.approx(anllm_res["ppl"]["full-base"]["ppl"], rel=1e-5)
    assert p["kv_mean"] == 256 and p["tokens"] == 300


@pytest.mark.parametrize("n_tokens", [1, 2, 7, 64, 255, 383, 1024, 1779, 4099])
def test_ratio_makes_kvpress_keep_exactly_the_budget(n_tokens):
    for n_keep in sorted(k for k in {1, 2, 3, n_tokens // 3, n_tokens - 1, n_tokens} if 1 <= k <= n_tokens):
        r = run_kvpress.ratio_for(n_tokens, n_keep)
        assert 0 <= r < 1
        assert max(1, int(n_tokens * (1 - r))) == n_keep  # kvpress's compute_n_kept (0.5.5)


def test_context_keep_leaves_room_for_the_uncompressed_question():
    assert run_kvpress.context_keep(400, 15, 29) == 14  # 14 context + 15 question = the anchor's 29 entries
    assert run_kvpress.context_keep(400, 30, 29) == 1  # a question longer than the budget: one entry of context
    assert run_kvpress.context_keep(20, 5, 90) == 20  # a budget above the prompt: nothing is dropped
    with pytest.raises(ValueError):
        run_kvpress.ratio_for(10, 0)


class _KeepFirst:
    """A stand-in press with kvpress's contract (``with press(model):`` around the prefill, a ratio of entries
    removed): keeps the first ``max(1, int(C * (1 - ratio)))`` entries of every layer after the pass."""

    def __init__(self, compression_ratio):
        self.ratio = compression_ratio

    def __call__(self, model):
        def hook(module, args, kwargs, output):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            n = max(1, int(cache.get_seq_length() * (1 - self.ratio)))
            for layer in cache.layers:  # as kvpress writes its pruned keys and values back
                layer.keys, layer.values = layer.keys[:, :, :n], layer.values[:, :, :n]

        handle = model.model.register_forward_hook(hook, with_kwargs=True)
        return _Removing(handle)


class _Removing:
    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_a_press_is_sized_to_the_anchor_caches_entries(exported, monkeypatch):
    monkeypatch.setattr(run_kvpress, "make_press", lambda name, ratio: _KeepFirst(ratio) if ratio else None)
    model, tok = exported.lm.model, exported.lm.tokenizer
    for line in exported.recall:
        rec = run_kvpress.score_recall(model, tok, line, "KnormPress", eos_ids={2}, max_new_tokens=3)
        q = len(line["question_ids"])
        assert rec["context_kept"] == max(1, line["anchor_kv"] - q)
        assert rec["kv_entries"] == max(line["anchor_kv"], q + 1)
        assert 0 < rec["compression_ratio"] < 1
    p = run_kvpress.score_ppl(model, exported.ppl[0], "KnormPress")
    assert p["kv_mean"] == exported.ppl[0]["budgets"][1] and math.isfinite(p["ppl"])


# -- results schema, merge and table -----------------------------------------------------------------------------------
def _peer(exported, **over):
    recall = [
        {"id": line["id"], "press": "SnapKVPress", "kv_entries": line["anchor_kv"], "logprob": -1.5 - i,
         "output": f"It is {line['answer']}." if i == 0 else "I do not know."}
        for i, line in enumerate(exported.recall)
    ]  # fmt: skip
    obj = {
        "schema": RESULTS_SCHEMA,
        "tool": "kvpress",
        "model_label": "base",
        "inputs_sha256": exported.sha,
        "recall": recall,
        "ppl": [{"press": "SnapKVPress", "ppl": 30.0, "nll": math.log(30.0), "tokens": 300, "kv_mean": 40.0}],
        "errors": [{"press": "TOVAPress", "where": "recall single-8-0", "error": "AssertionError: boom"}],
    }
    obj.update(over)
    return obj


def _write(tmp_path, obj, name="peer.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_merge_scores_the_peer_with_anllms_exact_match(exported, tmp_path):
    peer = read_peer_results(_write(tmp_path, _peer(exported)))
    rows = merge(read_anllm_results(exported.dir / "anllm.json"), peer)
    assert [(r.tool, r.method) for r in rows][-2:] == [("kvpress", "SnapKVPress"), ("kvpress", "TOVAPress")]
    assert [r.tool for r in rows[:5]] == ["anllm"] * 5 and rows[0].method == "full cache"
    snap, tova = rows[-2], rows[-1]
    kv = sum(x["anchor_kv"] for x in exported.recall) / 2
    assert snap.recall == {8: {"em": 0.5, "logprob": -2.0, "kv": kv, "n": 2}}  # one right of two; mean of -1.5, -2.5
    assert (snap.ppl, snap.ppl_kv) == (30.0, 40.0)
    assert tova.recall == {} and tova.error == "recall single-8-0: AssertionError: boom"
    anchor = next(r for r in rows if r.method.startswith("anchor"))
    assert anchor.recall[8]["kv"] == kv  # the press held the anchor cache's entries
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| tool | method | model | EM @8 | logp @8 | KV @8 | prose ppl | ppl KV |")
    assert "| kvpress | SnapKVPress | base | 50% (2) | -2.00 |" in "\n".join(table)
    assert table[-1] == "- kvpress TOVAPress: recall single-8-0: AssertionError: boom"


@pytest.mark.parametrize(
    "change, match",
    [
        ({"schema": "other/1"}, "schema 'other/1'"),
        ({"tool": ""}, "'tool' must be a non-empty string"),
        ({"recall": [{"id": "x", "press": "p", "kv_entries": 3, "logprob": float("nan"), "output": ""}]},
         r"recall\[0\]: 'logprob' must be a finite float"),
        ({"recall": [{"id": "x", "press": "p", "kv_entries": True, "logprob": -1.0, "output": ""}]},
         r"recall\[0\]: 'kv_entries' must be a finite int"),
        ({"ppl": [{"press": "p", "ppl": 3.0, "nll": 1.0, "tokens": 9}]}, r"ppl\[0\]: 'kv_mean' .* \(got missing\)"),
        ({"errors": "boom"}, "'errors' must be a list"),
    ],
)  # fmt: skip
def test_bad_peer_results_are_named(exported, tmp_path, change, match):
    path = _write(tmp_path, _peer(exported, **change))
    with pytest.raises(AnLLMError, match=match):
        read_peer_results(path)


def test_results_from_other_inputs_or_items_are_refused(exported, tmp_path):
    with pytest.raises(AnLLMError, match="one tool on one inputs file"):
        combine_peer_results([_peer(exported), _peer(exported, inputs_sha256="0" * 64)])
    anllm_res = read_anllm_results(exported.dir / "anllm.json")
    with pytest.raises(AnLLMError, match="other inputs"):
        merge(anllm_res, _peer(exported, inputs_sha256="0" * 64))
    stray = _peer(exported)
    stray["recall"][0]["id"] = "single-9999-0"
    with pytest.raises(AnLLMError, match="did not score: single-9999-0"):
        merge(anllm_res, stray)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(AnLLMError, match="broken.json is not valid JSON"):
        read_peer_results(broken)


def test_report_cli_prints_the_table_or_one_error_line(exported, tmp_path):
    good = _write(tmp_path, _peer(exported))
    cmd = [sys.executable, str(ROOT / "bench" / "peers" / "report.py"), "--anllm", str(exported.dir / "anllm.json")]
    out = tmp_path / "merged.json"
    ppl_only = _write(
        tmp_path,
        _peer(exported, recall=[], errors=[], ppl=[{**_peer(exported)["ppl"][0], "press": "KnormPress"}]),
        "p2.json",
    )
    proc = subprocess.run(
        [*cmd, "--peers", str(good), str(ppl_only), "--json", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("| tool | method |") and "SnapKVPress" in proc.stdout
    assert [r["method"] for r in json.loads(out.read_text())["rows"]][-3:] == ["SnapKVPress", "KnormPress", "TOVAPress"]
    bad = _write(tmp_path, _peer(exported, inputs_sha256="f" * 64), "bad.json")
    proc = subprocess.run([*cmd, "--peers", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: the peer results were computed on other")


@pytest.mark.slow
def test_question_start_on_the_default_chat_template():
    """The real tokenizer and chat template: the question's ids begin with the question, the context ends with the
    user turn's header (chat) or the blank line before the question."""
    from transformers import AutoTokenizer

    from anllm.models import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    lm = SimpleNamespace(tokenizer=tok, anchor=AnchorConfig())
    items = builtin_items(lm, seed=0, distances=(32,), n=1, families=("single", "chat"))
    for it in items:
        prompt, _ = render(lm, it)
        k = question_start(lm, it, prompt)
        assert tok.decode(prompt[k:]).startswith(it.question)
        assert tok.decode(prompt[:k]).endswith("\n\n" if it.family == "single" else "<|im_start|>user\n")


def test_committed_table_is_the_committed_data():
    """docs/benchmarks.md's kvpress table is what the merge makes of the committed JSON."""
    data = json.loads((ROOT / "docs" / "benchmarks-data" / "kvpress-side-by-side-2026-12-01.json").read_text())
    table = markdown_table(merge(data["anllm"], data["peer"]))
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    assert table in doc
    assert "| kvpress | none | base (smollm2-135m-instruct) | 50% (12) | -7.30 | 444.5 | 67% (12) |" in table


def test_peer_requirements_pin_a_cpu_torch_and_a_transformers_kvpress_accepts():
    pins = {}
    for line in (ROOT / "bench" / "peers" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            pins[name] = tuple(int(x) for x in version.split("."))
    assert pins["torch"] == (2, 13, 0) and pins["kvpress"] == (0, 5, 5)
    assert (4, 56) <= pins["transformers"] < (5, 3)  # kvpress 0.5.5 requires transformers>=4.56,<5.3
