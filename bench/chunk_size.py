"""Prefill speed by chunk size, anchor and full cache, to choose anllm.config.DEFAULT_CHUNK_SIZE.

The first N tokens of the built-in passage are prefilled through the cache in chunks of each size (0 = one pass),
logits kept only for the last token (as in generation). Medians of the repetitions, tokens/s.

    python bench/chunk_size.py --context 2048 --chunks 64 128 256 512 1024 0 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from anllm.bench import bench_tokens, builtin_passage, run_once
from anllm.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 0])
    ap.add_argument("--modes", nargs="+", default=["anchor", "full"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    lm = load_model(args.model)
    ids = torch.tensor([bench_tokens(lm, builtin_passage(), args.context + 1)])
    ctx, cont = ids[:, :-1], ids[0, -1:]
    run_once(lm, ctx[:, :64], cont, lm.policy("anchor"), 32)  # warm-up
    rows: dict[str, dict[str, float]] = {}
    for mode in args.modes:
        rows[mode] = {}
        for c in args.chunks:
            runs = [run_once(lm, ctx, cont, lm.policy(mode), c or None)["prefill_s"] for _ in range(args.repeats)]
            rows[mode][str(c)] = args.context / statistics.median(runs)
            print(f"{mode:<7} chunk {c or 'one pass':>8}: {rows[mode][str(c)]:7.1f} tok/s", flush=True)
    print(json.dumps({"context": args.context, "threads": torch.get_num_threads(), "prefill_tok_s": rows}))


if __name__ == "__main__":
    main()
