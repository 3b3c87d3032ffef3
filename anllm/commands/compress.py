"""``anllm compress``: read a document once and save its (anchor) KV cache to a file for later questions."""

from __future__ import annotations

import sys
import time

from anllm.commands.common import add_model_args, load_from_args, read_text


def register(sub) -> None:
    p = sub.add_parser("compress", help="read a text once and save its KV cache (anchor mode: compressed) to a file")
    add_model_args(p)
    p.add_argument("--text-file", required=True, help="the document, a UTF-8 file")
    p.add_argument("-o", "--output", required=True, help="the cache file to write (safetensors), e.g. doc.kv")
    p.add_argument(
        "--policy", "--mode", dest="policy", default=None,
        help="cache policy: anchor | full | streaming | sepllm | spec (default: the model's; --mode: former name)",
    )  # fmt: skip
    p.add_argument("--raw", action="store_true", help="no chat template: questions continue the text as plain text")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from anllm.chat import compress

    text = read_text(None, args.text_file, "text")
    lm = load_from_args(args)
    policy = args.policy or lm.default_mode
    if policy == "full" and args.policy is None:
        print("note: this model was not trained for anchors, so --policy defaults to full", file=sys.stderr)
    t0 = time.perf_counter()
    with torch.inference_mode():
        session = compress(lm, text, policy, chat=not args.raw, progress=True)
        path = session.save(args.output)
    seconds = time.perf_counter() - t0
    s = session.stats()
    size = path.stat().st_size
    print(
        f"{path}: {s['tokens_seen']} tokens read, {s['kv_entries']} entries kept "
        f"({s['kv_kept_frac']:.1%}, {s['policy']}), file {size / 2**20:.2f} MiB, "
        f"{seconds:.1f} s"
    )
    return 0
