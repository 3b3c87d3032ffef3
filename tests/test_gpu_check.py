"""``bench/gpu_check.sh``: its CPU dry run end to end, and how the summary judges a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def test_dry_run_writes_one_summary(tmp_path):
    out = tmp_path / "gc"
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(proc.stdout)
    assert summary["mode"] == "dry-run" and summary["ok"] is True
    steps = summary["steps"]
    assert list(steps) == list(gpu_check.STEPS) and all(s["rc"] == 0 for s in steps.values())
    lines = [ln.strip() for f in (ROOT / "tests").glob("test_*.py") for ln in f.read_text().splitlines()]
    n_gpu = lines.count("@pytest.mark.gpu")
    tests = steps["gpu_tests"]
    assert tests["passed"] + tests["skipped"] == n_gpu >= 2 and tests["failed"] == 0
    rows = steps["train_step"]["result"]["rows"]
    assert [(r["kind"], r["seq"]) for r in rows] == [("dense", 64), ("dense", 128)]
    assert all(r["tokens_per_s"] > 0 and r["backward"] for r in rows)
    bench = steps["bench_long"]["result"]
    full, anchor = bench["results"]["256"]["full"], bench["results"]["256"]["anchor"]
    assert full["kv_entries"] == 256 + 4 and anchor["kv_entries"] < full["kv_entries"] / 4
    assert bench["anchor_kv_kept"] == pytest.approx(anchor["kv_entries"] / full["kv_entries"])
    tiles = steps["vllm_tiles"]["result"]
    assert tiles["ok"] and set(tiles["cases"]) == {"decode", "prefill"}
    decode, prefill = tiles["cases"]["decode"], tiles["cases"]["prefill"]
    assert decode["max_abs_err"] <= tiles["tolerance"] and prefill["max_abs_err"] <= tiles["tolerance"]
    assert decode["kv_rows_full"] == 2 * 256 and decode["kv_rows_kept"] < decode["kv_rows_full"] / 2
    assert prefill["kv_rows_kept"] == prefill["kv_rows_full"] == 2 * 128  # a prefill writes every token's row


def _write_run(out: Path, rcs: dict, passed: int, skipped: int, failed: int = 0) -> None:
    out.mkdir(exist_ok=True)
    (out / "steps.tsv").write_text("".join(f"{n}\t{rc}\t1500\n" for n, rc in rcs.items()))
    cases = [f"<testcase classname='t' name='p{i}'/>" for i in range(passed)]
    cases += [f"<testcase classname='t' name='s{i}'><skipped/></testcase>" for i in range(skipped)]
    cases += [f"<testcase classname='t' name='f{i}'><failure/></testcase>" for i in range(failed)]
    (out / "gpu_tests.xml").write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")


@pytest.mark.parametrize(
    "rcs, passed, skipped, failed, mode, ok",
    [
        ({"gpu_tests": 0, "train_step": 0, "bench_long": 0, "vllm_tiles": 0}, 2, 0, 0, "gpu", True),
        ({"gpu_tests": 0, "train_step": 0, "bench_long": 0, "vllm_tiles": 1}, 2, 0, 0, "gpu", False),  # parity failed
        (
            {"gpu_tests": 0, "train_step": 0, "bench_long": 0, "vllm_tiles": 0},
            0,
            2,
            0,
            "gpu",
            False,
        ),  # skipped on a GPU: not run
        ({"gpu_tests": 0, "train_step": 0, "bench_long": 0, "vllm_tiles": 0}, 0, 2, 0, "dry-run", True),
        ({"gpu_tests": 1, "train_step": 0, "bench_long": 0, "vllm_tiles": 0}, 1, 0, 1, "gpu", False),
        ({"gpu_tests": 0, "train_step": 124, "bench_long": 0, "vllm_tiles": 0}, 2, 0, 0, "gpu", False),  # timed out
        ({"gpu_tests": 0, "train_step": 0}, 2, 0, 0, "gpu", False),  # a step never ran
    ],
)
def test_summary_judges_the_run(tmp_path, rcs, passed, skipped, failed, mode, ok):
    _write_run(tmp_path, rcs, passed, skipped, failed)
    s = gpu_check.summary(tmp_path, mode)
    assert s["ok"] is ok
    assert s["steps"]["gpu_tests"]["failures"] == [f"t::f{i}" for i in range(failed)]
    assert s["steps"]["train_step"]["timed_out"] is (rcs["train_step"] == 124)
    assert s["seconds"] == 1.5 * len(rcs)


def test_smollm2_shape_stands_in_without_weights():
    from anllm.bench import SMOLLM2_SHAPE, shaped_model

    lm = shaped_model("smollm2-shape", positions=40000, num_hidden_layers=1)
    cfg = lm.model.config
    assert cfg.max_position_embeddings == 40000 and cfg.num_hidden_layers == 1
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert getattr(cfg, key) == SMOLLM2_SHAPE[key]
    assert sorted(lm.anchor_ids) == sorted(lm.tokenizer.convert_tokens_to_ids(list(".!?")))
