"""The budget sweep: every point's KV entries are counted through the real caches and match its budget."""

import json
import math
import subprocess
import sys

import pytest
import torch

from anllm.config import AnLLMError
from anllm.evaluation import sweep as sweep_mod
from anllm.evaluation.acceptance import CONFIG_KEY, read_records
from anllm.evaluation.ppl import encode_text, perplexity
from anllm.evaluation.sweep import (
    TOLERANCE,
    SweepConfig,
    closest_variant,
    kept_entries,
    run_sweep,
    sepllm_window,
    summarise_sweep,
    variant_lm,
)
from anllm.resources import read_resource
from tests.test_acceptance import _count_calls, _strip, peft_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def text_ids(lm, n=500):
    return encode_text(lm, read_resource("kjv_genesis.txt"), n)


@pytest.mark.parametrize("budget", [0.04, 0.08, 0.16])
def test_streaming_and_sepllm_sizes_counted_through_the_real_caches(budget):
    lm = peft_lm()
    ids = text_ids(lm)
    n = round(budget * len(ids))
    assert kept_entries(lm, ids, f"streaming:budget={n},sink=4") == n  # exactly the budget
    w = sepllm_window(lm, ids, n)
    real = kept_entries(lm, ids, f"sepllm:sink=4,window={w}")
    sep = sum(1 for i, t in enumerate(ids) if i >= 4 and t in set(lm.policy("sepllm").separator_ids))
    if sep + 4 < n:  # fewer separators than the budget: the window fills the rest
        assert abs(real - n) <= 1
    else:  # more separators than the budget: the smallest window, every separator kept
        assert w == 1 and real == 4 + sep
    for other in (max(1, w - 5), w + 5):  # the solved window is the best one, by the real cache's own count
        assert abs(real - n) <= abs(kept_entries(lm, ids, f"sepllm:sink=4,window={other}") - n)


def test_anchor_variant_is_the_closest_real_size():
    lm = peft_lm()
    ids = text_ids(lm, 400)
    variants = ((1, 0, 48), (1, 24, 24), (1, 64, 0), (1, 160, 0))
    sizes = {v: kept_entries(variant_lm(lm, *v), ids, "anchor") for v in variants}
    assert sizes[(1, 0, 48)] < sizes[(1, 64, 0)] < sizes[(1, 160, 0)]  # a wider window keeps more
    for target in (10, 30, 60, 120, 200):
        best = closest_variant(sizes, target)
        ratio = {v: abs(math.log(s / target)) for v, s in sizes.items()}
        assert ratio[best] == min(ratio.values())
    assert variant_lm(lm, 1, 8, 48).model is lm.model  # same weights, another anchor setting


def test_sweep_points_are_what_they_claim(tmp_path):
    lm = peft_lm()
    cfg = SweepConfig(budgets=(0.08, 0.16), distances=(120,), n=1, families=("single",), ppl_tokens=400,
                      ppl_fillers=("technical",), variants=((1, 0, 40), (1, 16, 40), (1, 48, 40)),
                      max_new_tokens=2)  # fmt: skip
    out = tmp_path / "sweep.jsonl"
    recs = run_sweep(lm, cfg, out)
    assert read_records(out) == recs and json.loads(out.read_text().splitlines()[0])[CONFIG_KEY]["n"] == 1
    ids = encode_text(lm, read_resource("nettle_manual_prose.txt"), 400)
    for r in recs:
        if r["method"] == "full":
            assert r["kv_entries"] == r["tokens"]
            continue
        assert r["target_entries"] == round(r["budget"] * r["tokens"])
        assert r["reached"] == (abs(r["kv_entries"] / (r["budget"] * r["tokens"]) - 1) <= TOLERANCE)
        if r["method"] == "streaming":
            assert r["kv_entries"] == r["target_entries"] and r["reached"]
        if r["part"] == "ppl":  # recount independently: a fresh cache over the same tokens
            v = tuple(int(x.split("=")[1]) for x in r["spec"].split(":")[1].split(",")) if r["method"] == "anchor" \
                else None  # fmt: skip
            got = kept_entries(variant_lm(lm, *v), ids, "anchor") if v else kept_entries(lm, ids, r["spec"])
            assert got == r["kv_entries"]
    assert {(r["part"], r["weights"]) for r in recs} == {(p, w) for p in ("ppl", "recall") for w in ("default", "base")}
    s = summarise_sweep(recs, n_boot=200)
    assert {(p["method"], p["budget"]) for p in s["recall"]} == {(m, b) for m in ("anchor", "streaming", "sepllm")
                                                                 for b in (0.08, 0.16)}  # fmt: skip


def test_base_weights_are_the_adapter_disabled(tmp_path):
    lm = peft_lm()
    cfg = SweepConfig(budgets=(0.16,), n=0, ppl_tokens=300, ppl_fillers=("literary",), variants=((1, 16, 40),))
    recs = run_sweep(lm, cfg)
    from tests.conftest import make_lm

    plain = make_lm("llama", "ep", dtype=torch.float32, n_sink=1, window=6, max_segment=40)
    ids = text_ids(plain, 300)
    base = {r["method"]: r["ppl"] for r in recs if r["weights"] == "base"}
    default = {r["method"]: r["ppl"] for r in recs if r["weights"] == "default"}
    assert base["full"] == pytest.approx(perplexity(plain, ids, "full").ppl, rel=1e-5)
    assert base["streaming"] == pytest.approx(perplexity(plain, ids, "streaming:budget=48,sink=4").ppl, rel=1e-5)
    assert abs(default["full"] - base["full"]) > 1e-3


def test_a_stopped_sweep_resumed_gives_the_unbroken_runs_records_running_only_the_missing(tmp_path, monkeypatch):
    lm = peft_lm()
    cfg = SweepConfig(budgets=(0.08, 0.16), distances=(120,), n=1, families=("single",), ppl_tokens=300,
                      ppl_fillers=("technical",), variants=((1, 0, 40), (1, 16, 40)), max_new_tokens=2)  # fmt: skip
    full = tmp_path / "full.jsonl"
    whole = run_sweep(lm, cfg, full)
    lines = full.read_text().splitlines()
    n_ppl = sum(r["part"] == "ppl" for r in whole)
    assert len(lines) == 1 + len(whole) and n_ppl == 2 * (1 + 2 * 3)  # 2 weights x (full + 2 budgets x 3 methods)
    k = 9  # stopped after 9 records (the default's 7 perplexity points and 2 recall points), the 10th cut mid-write
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[: 1 + k]) + "\n" + lines[1 + k][:30], encoding="utf-8")
    ppl_calls = _count_calls(monkeypatch, sweep_mod, "perplexity")
    recall_calls = _count_calls(monkeypatch, sweep_mod, "score_item")
    with pytest.warns(UserWarning, match="truncated last line"):
        resumed = run_sweep(lm, cfg, cut, resume=True)
    missing = whole[k:]
    assert len(ppl_calls) == sum(r["part"] == "ppl" for r in missing) == 7  # only the missing points ran
    assert len(recall_calls) == sum(r["part"] == "recall" for r in missing) == 4 + 6
    assert _strip(resumed) == _strip(whole) and _strip(read_records(cut)) == _strip(whole)
    assert len(cut.read_text().splitlines()) == len(lines)  # the cut line replaced, nothing duplicated
    ppl_calls.clear(), recall_calls.clear()
    assert _strip(run_sweep(lm, cfg, cut, resume=True)) == _strip(whole) and not ppl_calls and not recall_calls
    with pytest.raises(AnLLMError, match=r"budgets=\[0\.08, 0\.16\].*budgets=\[0\.08\]"):
        run_sweep(lm, SweepConfig(**{**cfg.__dict__, "budgets": (0.08,)}), cut, resume=True)


def test_config_is_validated():
    for bad in (dict(budgets=(0.0,)), dict(budgets=(1.5,)), dict(weights=("other",)), dict(filler="legal"),
                dict(variants=((1, -1, 0),))):  # fmt: skip
        with pytest.raises(AnLLMError):
            SweepConfig(**bad)


def test_cli_sweep_writes_json_and_plot(tmp_path):
    stem = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "anllm", "eval", "sweep", "--model", "tiny-random", "--weights", "default",
           "--out", str(stem), "--budgets", "0.1", "--n", "0", "--ppl-tokens", "200",
           "--ppl-fillers", "literary"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {p["method"] for p in out["ppl"]} == {"full", "anchor", "streaming", "sepllm"}
    assert "perplexity" in stem.with_suffix(".html").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr
    jsonl = stem.with_suffix(".jsonl")
    whole = read_records(jsonl)
    jsonl.write_text("".join(x + "\n" for x in jsonl.read_text().splitlines()[:3]), encoding="utf-8")  # 2 points
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _strip(read_records(jsonl)) == _strip(whole)
    res = subprocess.run(cmd + ["--resume", "--ppl-tokens", "150"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "ppl_tokens=200" in res.stderr and "ppl_tokens=150" in res.stderr
