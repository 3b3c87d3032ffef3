"""``anllm export``: write a plain Hugging Face folder a serving engine loads, with the anchor setting beside it."""

from __future__ import annotations

from anllm.commands.common import add_model_args, load_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a plain HF model folder (adapter merged) + anllm_anchor.json, for vLLM (docs/serving.md)"
    )
    add_model_args(p)
    p.add_argument("--out", required=True, help="the folder to write (a new one)")
    p.set_defaults(func=run)


def run(args) -> int:
    from anllm.serving.export import ANCHOR_FILE, export_model

    lm = load_from_args(args)
    out = export_model(lm, args.out, source=args.model)
    print(f"{out}: weights, tokenizer, config and {ANCHOR_FILE}; serve it with the vLLM plugin (docs/serving.md)")
    return 0
