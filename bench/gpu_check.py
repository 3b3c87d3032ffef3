"""The Python half of ``bench/gpu_check.sh``: the long-context bench and the one JSON summary.

python bench/gpu_check.py bench --model smollm2-shape --device cuda --dtype bfloat16 --context 32768 --json-out F
python bench/gpu_check.py summary OUT_DIR --mode gpu     # reads OUT_DIR's step files, prints the summary JSON
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

STEPS = ("gpu_tests", "train_step", "bench_long")


def long_bench(args) -> dict:
    """Full vs anchor cache at one long context: prefill time, decode tokens/s, KV entries and bytes, peak memory."""
    import torch

    from anllm.bench import BenchConfig, builtin_passage, results_json, run_bench, shaped_model

    need = args.context + args.new_tokens
    lm = shaped_model(args.model, positions=need, dtype=getattr(torch, args.dtype), device=args.device)
    text = builtin_passage()
    while len(lm.tokenizer(text)["input_ids"]) < need:  # the passage is ~34k SmolLM2 tokens; repeat it if short
        text = text + "\n\n" + text
    cfg = BenchConfig(
        contexts=(args.context,),
        modes=("full", "anchor"),
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        compare_hf=False,
    )
    results = results_json(run_bench(lm, cfg, text))
    row = results[str(args.context)]
    device = torch.device(args.device)
    return {
        "model": args.model,
        "notes": lm.notes,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "dtype": args.dtype,
        "context": args.context,
        "results": results,
        "anchor_decode_speedup": row["anchor"]["decode_tok_s"] / row["full"]["decode_tok_s"],
        "anchor_kv_kept": row["anchor"]["kv_entries"] / max(row["full"]["kv_entries"], 1),
    }


def junit_counts(path: Path) -> dict:
    """Passed / failed / errors / skipped counts and failing test ids from a pytest ``--junitxml`` file."""
    out = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    if not path.is_file():
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        name = f"{case.get('classname')}::{case.get('name')}"
        if "failure" in tags or "error" in tags:
            out["failed" if "failure" in tags else "errors"] += 1
            out["failures"].append(name)
        elif "skipped" in tags:
            out["skipped"] += 1
        else:
            out["passed"] += 1
    return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def summary(out_dir: Path, mode: str) -> dict:
    """One JSON object: versions, and per step its exit status, seconds and results; ``ok`` when all passed."""
    steps = {}
    for line in (out_dir / "steps.tsv").read_text(encoding="utf-8").splitlines():
        name, rc, ms = line.split("\t")
        steps[name] = {"rc": int(rc), "seconds": round(int(ms) / 1000, 1), "timed_out": int(rc) == 124}
    tests = steps.get("gpu_tests", {})
    tests.update(junit_counts(out_dir / "gpu_tests.xml"))
    if "train_step" in steps:
        steps["train_step"]["result"] = _read_json(out_dir / "train_step.json")
    if "bench_long" in steps:
        steps["bench_long"]["result"] = _read_json(out_dir / "bench_long.json")
    ok = all(s.get("rc") == 0 for s in steps.values()) and set(STEPS) <= set(steps)
    ok = ok and tests.get("failed", 0) == tests.get("errors", 0) == 0
    if mode == "gpu":  # on a GPU a skipped gpu test means it did not run where it should have
        ok = ok and tests.get("skipped", 0) == 0 and tests.get("passed", 0) > 0
    return {
        "mode": mode,
        "ok": bool(ok),
        "seconds": round(sum(s.get("seconds", 0) for s in steps.values()), 1),
        "versions": {n: _version(n) for n in ("torch", "transformers")} | {"python": platform.python_version()},
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("bench", help="full vs anchor cache at one long context")
    b.add_argument("--model", default="smollm2-shape", help="smollm2-shape (random weights) or a loadable model")
    b.add_argument("--device", default="cuda")
    b.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    b.add_argument("--context", type=int, default=32768)
    b.add_argument("--new-tokens", type=int, default=32)
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--json-out", required=True)
    s = sub.add_parser("summary", help="print the summary JSON of a gpu_check.sh output folder")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--mode", choices=["gpu", "dry-run"], default="gpu")
    args = p.parse_args(argv)
    if args.what == "bench":
        result = long_bench(args)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({k: v for k, v in result.items() if k != "results"}))
        return 0
    result = summary(args.out_dir, args.mode)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
