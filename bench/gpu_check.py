"""The Python half of ``bench/gpu_check.sh``: the long-context bench, the serving plugin's attention, the summary.

python bench/gpu_check.py bench --model smollm2-shape --device cuda --dtype bfloat16 --context 32768 --json-out F
python bench/gpu_check.py tiles --device cuda --dtype bfloat16 --requests 32 --context 8192 --json-out F
python bench/gpu_check.py summary OUT_DIR --mode gpu     # reads OUT_DIR's step files, prints the summary JSON
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

STEPS = ("gpu_tests", "train_step", "bench_long", "vllm_tiles")


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


def _timed_ms(fn, device, reps: int) -> float:
    """Mean milliseconds of ``fn()`` over ``reps`` calls after one warm-up (CUDA synchronised)."""
    import torch

    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1000


def _tiles_case(R: int, L: int, Q: int, served, device: str, dtype, g) -> dict:
    """``R`` requests of ``L`` tokens whose last ``Q`` are this step's queries, the kept rows in a paged cache (as
    the plugin's worker leaves it): the step's tiles, the dense one-pass reference and full-attention inputs."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from anllm.bench import SMOLLM2_SHAPE
    from anllm.serving.vllm.flags import AnchorFlags
    from anllm.serving.vllm.rows import blocks_for, request_rows, row_slots
    from anllm.serving.vllm.step import compute_step
    from anllm.serving.vllm.visibility import request_visibility

    H, H_kv = SMOLLM2_SHAPE["num_attention_heads"], SMOLLM2_SHAPE["num_key_value_heads"]
    D, BS, nc = SMOLLM2_SHAPE["hidden_size"] // H, 16, L - Q  # head size 64; vLLM's GPU block size
    tokens = torch.randint(10, 40, (R, L), generator=g)  # (R, L)
    tokens[torch.rand(R, L, generator=g) < 1 / 25] = served.anchor_ids[0]  # a sentence every ~25 tokens
    k, v = torch.randn(2, R, L, H_kv, D, generator=g).unbind(0)  # (R, L, H_kv, D) each
    q = torch.randn(R, Q, H, D, generator=g)  # (R, Q, H, D)
    rows = [request_rows(tokens[i], nc, served) for i in range(R)]
    n_blocks = np.array([blocks_for(r.n_before + Q, BS) for r in rows])
    block_rows = np.zeros((R, int(n_blocks.max())), dtype=np.int64)
    cache = torch.zeros(int(n_blocks.sum()) + 1, H_kv, BS, 2 * D)  # block 0: vLLM's null block
    start = 1
    for i, r in enumerate(rows):
        block_rows[i, : n_blocks[i]] = np.arange(start, start + n_blocks[i])
        start += n_blocks[i]
        slots = row_slots(torch.from_numpy(block_rows[i, : n_blocks[i]].copy()), torch.arange(r.n_before + Q), BS)
        cache[slots // BS, :, slots % BS] = torch.cat([k[i, r.key_pos], v[i, r.key_pos]], -1)
    t0 = time.perf_counter()
    step = compute_step([str(i) for i in range(R)], tokens.numpy(), np.full(R, nc), np.full(R, Q), block_rows,
                        n_blocks, BS, served, AnchorFlags(served))  # fmt: skip
    host_ms = (time.perf_counter() - t0) * 1000
    ref = torch.cat([
        F.scaled_dot_product_attention(q[i].transpose(0, 1), k[i].transpose(0, 1), v[i].transpose(0, 1),
                                       attn_mask=request_visibility(tokens[i], nc, served), scale=D**-0.5,
                                       enable_gqa=True).transpose(0, 1)
        for i in range(R)
    ])  # (R * Q, H, D), float32 on the host: the one-pass AnSAN result over every token  # fmt: skip
    return {
        "groups": [gr.to(device) for gr in step.groups],  # moved once per step, as a GPU runner would
        "cache": cache.to(device, dtype),
        "query": q.reshape(R * Q, H, D).to(device, dtype),
        "ref": ref,
        "scale": D**-0.5,
        "full_q": q.transpose(1, 2).to(device, dtype),  # (R, H, Q, D)
        "full_kv": [x.transpose(1, 2).to(device, dtype) for x in (k, v)],  # (R, H_kv, L, D): every token, unpaged
        "kept_rows": sum(r.n_before + Q for r in rows),
        "host_ms": host_ms,
    }


def tiles_bench(args) -> dict:
    """The serving plugin's anchor attention (``anllm.serving.vllm.tiles`` over the kept rows) against full attention
    over every token, SmolLM2-135M's heads: a decode step of ``requests`` x ``context`` and a prefill of
    ``prefill_requests`` x ``prefill``; the error against the dense one-pass result, ms per layer, host ms per step."""
    import torch
    import torch.nn.functional as F

    from anllm.serving.export import ServedAnchor
    from anllm.serving.vllm import tiles

    dtype = getattr(torch, args.dtype)
    served = ServedAnchor(kind="ep", anchor_ids=(5,), n_sink=1, window=24, max_segment=48)  # the default's setting
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    cases = {"decode": (args.requests, args.context, 1), "prefill": (args.prefill_requests, args.prefill, args.prefill)}
    out: dict = {"device": args.device, "dtype": args.dtype, "served": served.to_dict(),
                 "tolerance": tol, "cases": {}}  # fmt: skip
    if torch.device(args.device).type == "cuda":
        out["device"] = torch.cuda.get_device_name(torch.device(args.device))
    g = torch.Generator().manual_seed(0)
    for name, (R, L, Q) in cases.items():
        c = _tiles_case(R, L, Q, served, args.device, dtype, g)
        res = torch.empty_like(c["query"])
        tiles.attend(c["groups"], c["query"], c["cache"], c["scale"], res)
        err = float((res.float().cpu() - c["ref"]).abs().max())
        causal = Q == L  # a prefill from token 0: the plain causal kernel; a decode query sees every token

        def full(c=c, causal=causal):
            return F.scaled_dot_product_attention(
                c["full_q"], *c["full_kv"], is_causal=causal, scale=c["scale"], enable_gqa=True
            )

        def anchor(c=c, res=res):
            tiles.attend(c["groups"], c["query"], c["cache"], c["scale"], res)

        full_ms, anchor_ms = _timed_ms(full, args.device, args.reps), _timed_ms(anchor, args.device, args.reps)
        out["cases"][name] = {
            "requests": R, "context": L, "queries_per_request": Q, "max_abs_err": err, "parity": err <= tol,
            "kv_rows_kept": c["kept_rows"], "kv_rows_full": R * L, "anchor_ms_per_layer": anchor_ms,
            "full_ms_per_layer": full_ms, "host_ms_per_step": c["host_ms"],
        }  # fmt: skip
    out["ok"] = all(c["parity"] for c in out["cases"].values())
    return out


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
    if "vllm_tiles" in steps:
        steps["vllm_tiles"]["result"] = _read_json(out_dir / "vllm_tiles.json")
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
    t = sub.add_parser("tiles", help="the serving plugin's anchor attention vs full attention, parity and time")
    t.add_argument("--device", default="cuda")
    t.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    t.add_argument("--requests", type=int, default=32, help="requests in the decode step")
    t.add_argument("--context", type=int, default=8192, help="tokens of each decoding request")
    t.add_argument("--prefill-requests", type=int, default=4)
    t.add_argument("--prefill", type=int, default=2048, help="tokens of each prefill (from token 0)")
    t.add_argument("--reps", type=int, default=20)
    t.add_argument("--json-out", required=True)
    s = sub.add_parser("summary", help="print the summary JSON of a gpu_check.sh output folder")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--mode", choices=["gpu", "dry-run"], default="gpu")
    args = p.parse_args(argv)
    if args.what == "bench":
        result = long_bench(args)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({k: v for k, v in result.items() if k != "results"}))
        return 0
    if args.what == "tiles":
        result = tiles_bench(args)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    result = summary(args.out_dir, args.mode)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
