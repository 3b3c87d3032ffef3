"""``anllm verify``: prove anchor-cache decoding equals one AnSAN-masked forward on a text."""

from __future__ import annotations

import argparse

from anllm.commands.common import add_model_args, emit_json, load_from_args, read_text
from anllm.config import AnLLMError


def register(sub) -> None:
    p = sub.add_parser("verify", help="check anchor-cache decoding against one masked forward pass")
    add_model_args(p, dtype_default="float64")
    p.add_argument("--text-file", required=True, help="UTF-8 text to decode")
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # removed: refused below (else --model's prefix)
    p.add_argument("--verify-chunk-size", type=int, default=64, help="chunk length of the chunked decoding")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(func=run)


def run(args) -> int:
    from anllm.verify import TOLERANCE, verify_text

    if args.mode is not None:
        raise AnLLMError(f"verify --mode was removed: give the anchor kind as --anchors {args.mode}")
    text = read_text(None, args.text_file, "text")
    lm = load_from_args(args)
    report = verify_text(lm, text, chunk_size=args.verify_chunk_size)
    if args.json:
        emit_json(report.to_dict())
    else:
        print(
            f"tokens {report.tokens}, anchors {report.anchors}, KV kept {report.kv_kept}; max |Δlogit| "
            f"{report.max_abs_diff:.3g} (step {report.step_diff:.3g}, chunked {report.chunk_diff:.3g}) -> "
            f"{'OK' if report.ok else f'FAIL (> {TOLERANCE})'}"
        )
    return 0 if report.ok else 1
