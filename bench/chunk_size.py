"""Prefill speed by chunk size per cache mode, against the backbone limit: to choose each policy's prefill chunk.

The first N tokens of the built-in passage are prefilled through each mode's cache in chunks of each size (0 = one
pass) with :func:`anllm.generation.prefill` (logits for the last token only, as in generation), and through the
backbone alone on the same chunks (:func:`anllm.bench.backbone_forward`, the limit ``anllm bench`` reports).
Repetitions are interleaved (repetition 1 of every cell, then repetition 2, ...); their median (``--stat best``:
the fastest) is reported, as tokens/s and as a fraction of the backbone on the same chunks.

    python bench/chunk_size.py --context 2048 --chunks 64 128 256 512 1024 0 --repeats 2
    python bench/chunk_size.py --model default --modes anchor streaming sepllm full --context 8160 \
        --chunks 128 256 384 512 0 --repeats 3 --stat best

``--clock process`` times with the process's CPU time instead of the wall clock: on a machine shared with other
jobs it leaves out the time spent waiting for a core (use it with one torch thread, OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from anllm.bench import backbone_forward, bench_tokens, builtin_passage
from anllm.generation import make_cache, prefill
from anllm.models import load_model

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 0])
    ap.add_argument("--modes", nargs="+", default=["anchor", "full"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stat", choices=("median", "best"), default="median")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    args = ap.parse_args()
    clock = CLOCKS[args.clock]
    lm = load_model(args.model)
    ctx = torch.tensor([bench_tokens(lm, builtin_passage(), args.context)])  # (1, N)
    cells = [(m, c) for m in ["backbone", *args.modes] for c in args.chunks]
    times: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    with torch.inference_mode():
        prefill(lm.model, make_cache(lm, "anchor"), ctx[:, :64], chunk_size=32)  # warm-up
        for r in range(args.repeats):
            for mode, c in cells:
                t0 = clock()
                if mode == "backbone":
                    backbone_forward(lm, ctx, c or None)
                else:
                    prefill(lm.model, make_cache(lm, mode), ctx, chunk_size=c or None)
                dt = clock() - t0
                times[mode, c].append(dt)
                print(f"repeat {r} {mode:<10} chunk {c or 'one pass':>8}: {dt:7.2f} s", flush=True)
    pick = statistics.median if args.stat == "median" else min
    best = {cell: pick(ts) for cell, ts in times.items()}
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for mode, c in cells:
        tok_s = args.context / best[mode, c]
        of_limit = best["backbone", c] / best[mode, c]
        rows.setdefault(mode, {})[str(c)] = {"tok_s": tok_s, "of_limit": of_limit}
        print(f"{mode:<10} chunk {c or 'one pass':>8}: {tok_s:7.1f} tok/s  {of_limit:5.2f} of the backbone", flush=True)
    meta = {"model": args.model, "context": args.context, "stat": args.stat, "clock": args.clock}
    print(json.dumps({**meta, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
