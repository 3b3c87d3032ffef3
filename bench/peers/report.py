"""Merge anllm's scores and a peer's (kvpress) into one markdown table; exact match scored by anllm for both.

    python bench/peers/report.py --anllm runs/peers/anllm.json --peers runs/peers/kvpress.json \
        [--json docs/benchmarks-data/kvpress-side-by-side.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from anllm.config import AnLLMError
from anllm.evaluation.peers import (
    combine_peer_results,
    markdown_table,
    merge,
    read_anllm_results,
    read_peer_results,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--anllm", required=True, help="anllm.json written by export_inputs.py")
    p.add_argument(
        "--peers", required=True, nargs="+", help="the peer's results JSON (run_kvpress.py --out); several are combined"
    )
    p.add_argument("--json", default=None, help="also write the merged rows and both inputs to this JSON file")
    args = p.parse_args(argv)
    try:
        anllm_res = read_anllm_results(args.anllm)
        peer = combine_peer_results([read_peer_results(p) for p in args.peers])
        rows = merge(anllm_res, peer)
    except AnLLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    if args.json:
        merged = {
            "rows": [dataclasses.asdict(r) for r in rows],
            "anllm": anllm_res,
            "peer": peer,
        }
        Path(args.json).write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
