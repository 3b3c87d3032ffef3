"""Where the anchor cache loses a fact: the served anchor cache, but with the fact's own sentence kept whole.

    python bench/fact_kept.py --baseline docs/benchmarks-data/recall-acceptance-v2b-2026-12-07.jsonl \\
        --distances 256,1024 --n 8 --out docs/benchmarks-data/fact-kept-v2b-DATE

Runs one row, ``anchor+fact``, on the items of a complete acceptance run: the same seed, draw and model
(``--model default``, with the adapter left unmerged as ``anllm eval acceptance`` loads it). That row is the served
anchor cache, plus every token of the sentence that states the asked fact (``MemoryItem.fact``). Those tokens stay
in the cache, and every later query may see them. The script pairs the row with the baseline run's ``anchor``,
``full`` and ``base:full`` rows for the same items.

- If ``anchor+fact`` reaches the full cache, the fact is lost when its sentence is folded into the anchor, and
  training has to put more of the sentence into the anchor.
- If ``anchor+fact`` stays near ``anchor``, the model cannot use the fact even when it sees the fact's tokens
  among the anchors. Then the training has to teach reading, not compression.

The other tokens follow the served rule: 1 sink, a 64-token window and forced anchors. The extra tokens are counted
in ``kv_entries``. Output: ``OUT.jsonl`` (one record per item) and ``OUT.json`` (EM per distance with 95 % bootstrap
intervals, and the differences against each baseline row, paired by item).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from anllm.config import AnLLMError
from anllm.evaluation.acceptance import (
    AcceptanceConfig,
    acceptance_items,
    item_key,
    load_adapted,
    read_baseline,
)
from anllm.evaluation.bootstrap import bootstrap_interval
from anllm.evaluation.recall import render, score_item
from anllm.models import LoadedModel
from anllm.policies.anchor import AnchorPolicy
from anllm.policies.base import TokenMeta

ROW = "anchor+fact"
BASE_ROWS = ("base:full", "full", "anchor")


@dataclass
class FactKeptPolicy(AnchorPolicy):
    """The anchor policy, plus the positions ``[lo, hi)``: kept, and visible to every later query (exact)."""

    lo: int = 0
    hi: int = 0
    name: ClassVar[str] = ROW

    def _span(self, pos: Tensor) -> Tensor:
        return (pos >= self.lo) & (pos < self.hi)

    def visible(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        return super().visible(q, k) | self._span(k.pos)[:, None, :]  # (B, Q, K); the cache adds causality

    def keep(self, meta: TokenMeta, n_seen: Tensor, n_seg: Tensor) -> Tensor:
        return (super().keep(meta, n_seen, n_seg) | self._span(meta.pos)) & meta.valid  # (B, K)


def fact_span(lm: LoadedModel, item, prompt: list[int]) -> tuple[int, int]:
    """Token positions ``[lo, hi)`` of ``item.fact`` inside ``prompt`` (as :func:`render` made it, chat template).

    Raises:
        AnLLMError: the item has no fact sentence, or its tokens cannot be located in the prompt.
    """
    if not item.fact:
        raise AnLLMError(f"item {item.id} names no fact sentence")
    tok = lm.tokenizer
    text = tok.apply_chat_template(item.messages(), add_generation_prompt=True, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != prompt:
        raise AnLLMError(f"item {item.id}: re-encoding the chat text does not give the rendered prompt")
    start = text.rfind(item.fact)
    if start < 0:
        raise AnLLMError(f"item {item.id}: its fact sentence is not in the prompt text")
    end = start + len(item.fact)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a < end]
    return inside[0], inside[-1] + 1


def em_cell(values: list[bool]) -> dict:
    iv = bootstrap_interval([float(v) for v in values])
    return {"n": len(values), "em": iv.mean, "lo": iv.lo, "hi": iv.hi}


def summary(records: list[dict], baseline: dict[tuple, dict[str, dict]]) -> dict:
    """EM of the new row and of each baseline row per distance, with the paired differences (new minus baseline)."""
    out = {}
    for d in sorted({r["distance"] for r in records}):
        mine = [r for r in records if r["distance"] == d]
        cell = {ROW: em_cell([r["em"] for r in mine])}
        for row in BASE_ROWS:
            pairs = [(r["em"], baseline[item_key(r["filler"], r)][row]["em"]) for r in mine]
            cell[row] = em_cell([b for _, b in pairs])
            diff = bootstrap_interval([float(a) - float(b) for a, b in pairs])
            cell[f"{ROW} - {row}"] = {"diff": diff.mean, "lo": diff.lo, "hi": diff.hi}
        cell["kv_entries_mean"] = {
            ROW: sum(r["kv_entries"] for r in mine) / len(mine),
            "anchor": sum(baseline[item_key(r["filler"], r)]["anchor"]["kv_entries"] for r in mine) / len(mine),
        }
        out[str(d)] = cell
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="a complete acceptance run's JSONL (base:full, full, anchor)")
    p.add_argument("--distances", default="256,1024")
    p.add_argument("--n", type=int, default=8, help="items per family, distance and filler, as the baseline run")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--out", required=True, help="writes OUT.jsonl and OUT.json")
    args = p.parse_args(argv)
    by: dict[tuple, dict[str, dict]] = {}
    for r in read_baseline(args.baseline):
        by.setdefault(item_key(r["filler"], r), {})[r["row"]] = r
    cfg = AcceptanceConfig(
        distances=tuple(int(x) for x in args.distances.split(",")),
        n=args.n,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        policies=("anchor",),
    )
    torch.manual_seed(0)
    lm = load_adapted()
    pairs = acceptance_items(lm, cfg)
    missing = [item_key(f, it) for f, it in pairs if not set(BASE_ROWS) <= set(by.get(item_key(f, it), {}))]
    if missing:
        raise SystemExit(f"fact_kept: {len(missing)} items lack a {'/'.join(BASE_ROWS)} row in {args.baseline}, "
                         f"e.g. {missing[0]}: give the run made with the same --distances, --n and --seed")  # fmt: skip
    served = FactKeptPolicy.from_config(lm.anchor)  # the served rule, no span yet
    records = []
    with open(f"{args.out}.jsonl", "w", encoding="utf-8") as f:
        for i, (filler, it) in enumerate(pairs):
            prompt, answer_ids = render(lm, it)
            lo, hi = fact_span(lm, it, prompt)
            policy = replace(served, lo=lo, hi=hi)
            s = score_item(lm, prompt, it.answer, answer_ids, policy, max_new_tokens=cfg.max_new_tokens)
            rec = {
                "filler": filler, "row": ROW, "id": it.id, "family": it.family, "distance": it.distance,
                "kind": it.kind, "fact_tokens": [lo, hi], "em": s.em, "logprob": s.logprob,
                "kv_entries": s.kv_entries, "prompt_tokens": s.prompt_tokens, "answer": it.answer, "output": s.output,
            }  # fmt: skip
            records.append(rec)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(f"{i + 1}/{len(pairs)} {filler} {it.id} em={s.em} {s.output[:60]!r}", file=sys.stderr)
    result = {"baseline": args.baseline, "config": vars(args), "summary": summary(records, by)}
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
