"""Evaluate an anchor adapter for SmolLM2-135M-Instruct against the training-free base (issue 4's table).

Perplexity by real cache decoding (``anllm.evaluation.ppl``) on held-out English text, for the base and for the
base with the peft adapter merged: full cache, anchor cache, and StreamingLLM / SepLLM at the anchor cache's mean
KV budget.

    python bench/adapter_eval.py --adapter runs/smollm2-anchor/checkpoints/step-0000200/adapter \
        --text runs/corpus-fortunes/heldout.txt --text anllm/data/kjv_genesis.txt --max-tokens 1024
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from anllm.evaluation.ppl import perplexity_text
from anllm.models import load_model

MODES = ("full", "anchor", "streaming", "sepllm")


def with_adapter(lm, adapter: str):
    """A copy of the LoadedModel with the peft adapter merged into its weights."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(lm.model, adapter).merge_and_unload().eval()
    return replace(lm, model=model, name=f"{lm.name}+{Path(adapter).name}", anchor_trained=True)


def evaluate(lm, texts: list[str], max_tokens: int, chunk_size: int) -> list[dict]:
    rows = []
    for path in texts:
        text = Path(path).read_text(encoding="utf-8")
        res = perplexity_text(lm, text, MODES, chunk_size=chunk_size, max_tokens=max_tokens, budget="anchor")
        for r in res.values():
            rows.append({"model": lm.name, "text": Path(path).name, "mode": r.mode, "ppl": r.ppl,
                         "kv_kept_mean_frac": r.kv_kept_mean_frac, "kv_kept_end": r.kv_kept_end,
                         "tokens": r.tokens})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", required=True, help="a peft adapter directory (adapter_config.json)")
    p.add_argument("--text", action="append", required=True, help="held-out UTF-8 text (repeatable)")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-base", action="store_true", help="evaluate only the adapted model (base rows known)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_model("smollm2-135m")
    rows = [] if args.no_base else evaluate(base, args.text, args.max_tokens, args.chunk_size)
    rows += evaluate(with_adapter(base, args.adapter), args.text, args.max_tokens, args.chunk_size)
    for r in rows:
        print(json.dumps(r))
    if args.no_base:
        return
    by = {(r["model"].split("+")[-1] if "+" in r["model"] else "base", r["text"], r["mode"].split(":")[0]): r["ppl"]
          for r in rows}  # fmt: skip
    for text in dict.fromkeys(r["text"] for r in rows):
        b_full, b_anc = by[("base", text, "full")], by[("base", text, "anchor")]
        a = Path(args.adapter).name
        a_full, a_anc = by[(a, text, "full")], by[(a, text, "anchor")]
        print(
            f"{text}: base full {b_full:.2f} anchor {b_anc:.2f} | adapted full {a_full:.2f} anchor {a_anc:.2f} | "
            f"anchor ratio {a_anc / b_anc:.3f} (<= 0.5?), full ratio {a_full / b_full:.3f} (<= 1.10?)"
        )


if __name__ == "__main__":
    main()
