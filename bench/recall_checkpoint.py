"""Recall (``anllm eval recall``'s items and scoring) of a training checkpoint's adapter on SmolLM2-135M.

    python bench/recall_checkpoint.py --adapter runs/smollm2-memory/checkpoints/step-0000150/adapter \\
        --max-segment 48 --distances 256,1024 --n 4 --json out.json

The adapter is merged into the base (as ``--model default`` merges the shipped one) and served with ``--sinks`` sinks
+ a ``--window``-token window (default 1 + 16) and forced anchors after ``--max-segment`` tokens without one.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapter_eval import with_adapter  # noqa: E402

from anllm.evaluation.recall import builtin_items, evaluate_recall  # noqa: E402
from anllm.models import load_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", required=True, help="a peft adapter directory (a checkpoint's adapter/ or final/)")
    p.add_argument("--max-segment", type=int, default=48)
    p.add_argument("--sinks", type=int, default=1)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--distances", default="256,1024")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--families", default="single,multi,chat")
    p.add_argument("--modes", default="full,anchor,streaming")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result (rows, summary) here")
    args = p.parse_args()
    base = load_model("smollm2-135m")
    lm = with_adapter(base, args.adapter)
    lm = replace(lm, anchor=lm.anchor.replace(n_sink=args.sinks, window=args.window, max_segment=args.max_segment))
    items = builtin_items(
        lm,
        seed=args.seed,
        distances=tuple(int(d) for d in args.distances.split(",")),
        n=args.n,
        families=tuple(args.families.split(",")),
    )
    res = evaluate_recall(lm, items, tuple(args.modes.split(",")))
    for r in res.rows:
        print(f"{r.mode:<10} {r.family:<7} {r.distance:>5} EM {r.em:6.1%} logp {r.logprob:6.2f} KV {r.kv_entries:7.1f}")
    print(json.dumps(res.summary()))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"adapter": args.adapter, "anchor": asdict(lm.anchor), **res.to_dict()}) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
