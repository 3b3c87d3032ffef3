"""anllm's side of "kvpress side by side": score the recall items and the prose text, and export the exact inputs.

Runs in anllm's environment. Writes two files into ``--out-dir``:

* ``inputs.jsonl`` — what the peer scores: a ``meta`` line (model folder, EOS ids, decoding length), one ``recall``
  line per item (context ids, question ids, answer ids, the anchor cache's entries after the prompt) and one ``ppl``
  line (the text's ids, the chunk size, the anchor cache's entries before each chunk);
* ``anllm.json`` — anllm's own scores on the same inputs (``anllm eval recall`` / ``eval ppl`` with
  ``--budget anchor``, plus the base model with a full cache), tagged with the inputs' SHA-256 so that
  ``report.py`` refuses to merge results computed on other inputs.

    python bench/peers/export_inputs.py --model default --distances 256,1024 --n 4 \
        --families single,multi,chat --text-file anllm/resources/heldout_prose.txt --max-tokens 2048 \
        --out-dir runs/peers
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

import anllm
from anllm.config import AnLLMError
from anllm.evaluation.peers import ANLLM_SCHEMA, anchor_chunk_budgets, recall_inputs, write_inputs
from anllm.evaluation.ppl import encode_text, perplexity, perplexity_text
from anllm.evaluation.recall import builtin_items, evaluate_recall, recall_record, render, score_item
from anllm.generation import eos_ids
from anllm.models import load_model, smollm2_path
from anllm.resources import HELDOUT_PROSE, resource_path
from anllm.textio import read_text_file

MODES = ("full", "anchor", "streaming", "sepllm")
METHODS = {
    "full": "full cache",
    "anchor": "anchor cache (as served)",
    "streaming": "StreamingLLM cache, same entries",
    "sepllm": "SepLLM-style cache (sinks + window = same, + separators)",
}


def _log(msg: str) -> None:
    print(f"[export {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def export(
    out_dir: str | Path,
    *,
    model: str = "default",
    base_model: str | None = "smollm2-135m",
    distances: tuple[int, ...] = (256, 1024),
    n: int = 4,
    families: tuple[str, ...] = ("single", "multi", "chat"),
    seed: int = 0,
    text_file: str | Path | None = None,
    max_tokens: int | None = 2048,
    max_new_tokens: int = 24,
) -> dict:
    """Score and export (see module doc); returns the anllm results written to ``anllm.json``.

    ``text_file`` defaults to the packaged held-out prose.
    """
    out_dir = Path(out_dir)
    text_file = resource_path(HELDOUT_PROSE) if text_file is None else text_file
    text = read_text_file(text_file, "text")
    lm = load_model(model)
    if lm.default_mode != "anchor":
        _log(f"note: {model} is not anchor-trained; its anchor rows use the training-free rule")
    items = builtin_items(lm, seed=seed, distances=distances, n=n, families=families)
    rendered = [render(lm, it) for it in items]
    _log(f"recall: {len(items)} items x {len(MODES)} modes on {model}")
    res = evaluate_recall(lm, items, MODES, budget="anchor", max_new_tokens=max_new_tokens)
    records = list(res.items)
    ids = encode_text(lm, text, max_tokens)
    chunk = lm.anchor.chunk_size
    _log(f"ppl: {len(ids)} tokens x {len(MODES)} modes")
    ppl = {m: r.to_dict() for m, r in perplexity_text(lm, text, MODES, max_tokens=max_tokens, budget="anchor").items()}
    budgets = anchor_chunk_budgets(lm, ids, chunk)
    for m, r in ppl.items():  # entries each cache holds before a chunk after the first (what the peer is sized to)
        before = budgets if m == "anchor" else anchor_chunk_budgets(lm, ids, chunk, r["mode"])
        r["kv_before_mean"] = sum(before[1:]) / max(1, len(before) - 1)
    labels = {m: {"method": METHODS[m], "model": model} for m in MODES}
    if base_model:
        base = load_model(base_model)
        _log(f"recall + ppl: full cache on {base_model}")
        for it, (prompt, ans) in zip(items, rendered):
            s = score_item(base, prompt, it.answer, ans, base.policy("full"), max_new_tokens=max_new_tokens)
            records.append(recall_record(it, prompt, "full-base", "full", s))
        ppl["full-base"] = perplexity(base, ids, "full", chunk_size=chunk).to_dict()
        starts = range(chunk, len(ids), chunk)
        ppl["full-base"]["kv_before_mean"] = sum(starts) / max(1, len(starts))
        labels["full-base"] = {"method": "full cache", "model": base_model}
    model_dir = str(smollm2_path()) if model in ("default", "smollm2-135m") else None
    meta = {
        "model": model,
        "model_dir": model_dir,  # the base weights the peer loads (the converted SmolLM2 folder)
        "eos_ids": sorted(eos_ids(lm)),
        "max_new_tokens": max_new_tokens,
        "chunk_size": chunk,
        "seed": seed,
        "distances": list(distances),
        "families": list(families),
        "n": n,
        "text_file": Path(text_file).name,
    }
    ppl_line = {"kind": "ppl", "text_file": Path(text_file).name, "ids": ids, "chunk_size": chunk, "budgets": budgets}
    sha = write_inputs(out_dir / "inputs.jsonl", meta, recall_inputs(lm, items, rendered, res.items), [ppl_line])
    result = {
        "schema": ANLLM_SCHEMA,
        "inputs_sha256": sha,
        "model": model,
        "base_model": base_model,
        "versions": {
            "anllm": anllm.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "labels": labels,
        "recall": records,
        "ppl": ppl,
        "seconds": res.seconds,
    }
    (out_dir / "anllm.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _log(f"wrote {out_dir / 'inputs.jsonl'} (sha256 {sha[:12]}) and {out_dir / 'anllm.json'}")
    return result


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise AnLLMError(f"--distances must be comma-separated integers, got {s!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default="runs/peers")
    p.add_argument("--model", default="default")
    p.add_argument("--base-model", default="smollm2-135m", help="also scored with a full cache; 'none' to skip")
    p.add_argument("--distances", default="256,1024")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--families", default="single,multi,chat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-file", default=str(resource_path(HELDOUT_PROSE)))
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args(argv)
    try:
        export(
            args.out_dir,
            model=args.model,
            base_model=None if args.base_model.lower() == "none" else args.base_model,
            distances=_ints(args.distances),
            n=args.n,
            families=tuple(f.strip() for f in args.families.split(",") if f.strip()),
            seed=args.seed,
            text_file=args.text_file,
            max_tokens=args.max_tokens,
            max_new_tokens=args.max_new_tokens,
        )
    except AnLLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
