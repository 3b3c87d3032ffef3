"""The budget sweep (issue 27): recall exact match and held-out perplexity of the anchor cache, StreamingLLM and
SepLLM-style at KV budgets of a few percent of the context, on the adapted weights and on the base's (adapter
disabled on the same model). docs/evaluation.md, "Budget sweep".

Budgets are fractions of the context (the item's prompt, or the scored text). Every cache is sized to reach it:

* ``streaming``: ``sink=4`` + window, exactly ``round(b * T)`` entries;
* ``sepllm``: ``sink=4``, its window solved from the token ids so sinks + window + older separators come closest to
  ``round(b * T)`` (with more separators than that, the smallest window: the point shows the real size);
* ``anchor``: of :data:`ANCHOR_VARIANTS` (sinks, window, forced-anchor segment length), the one whose cache after the
  same tokens is closest to the budget (anchor caches depend on the token ids only, so this is model-independent).

Every reported size is counted through the real caches (``PolicyCache.n_kept`` after the prompt / at the end of the
text), never predicted; ``reached`` says whether it lies within :data:`TOLERANCE` (relative) of the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from anllm.config import AnLLMError
from anllm.evaluation.acceptance import ACCEPTANCE_FAMILIES, FILLERS, adapter_disabled, run_config, start_jsonl
from anllm.evaluation.bootstrap import bootstrap_interval
from anllm.evaluation.ppl import encode_text, perplexity
from anllm.evaluation.recall import render, score_item
from anllm.generation import make_cache, prefill
from anllm.memory import ACCEPTANCE_OPENERS, FORM_TEMPLATES, make_items
from anllm.models import LoadedModel
from anllm.policies import budget_spec
from anllm.policies.sepllm import SepLLMPolicy
from anllm.resources import read_resource

METHODS = ("anchor", "streaming", "sepllm")
TOLERANCE = 0.25  # a point "reaches" its budget when |entries / (b * T) - 1| <= this
# (sinks, window, forced-anchor segment length): the served setting (1, 24, 48) and smaller / larger neighbours
ANCHOR_VARIANTS: tuple[tuple[int, int, int], ...] = (
    (1, 0, 48), (1, 8, 48), (1, 24, 48), (1, 64, 48), (1, 128, 48), (1, 256, 48), (1, 512, 48),
    (1, 0, 24), (1, 24, 24), (1, 64, 24), (4, 0, 0),
)  # fmt: skip


@dataclass(frozen=True)
class SweepConfig:
    """What one sweep covers."""

    budgets: tuple[float, ...] = (0.04, 0.08, 0.16)
    distances: tuple[int, ...] = (1024,)
    n: int = 2  # recall items per family and distance
    families: tuple[str, ...] = ACCEPTANCE_FAMILIES
    filler: str = "literary"  # recall filler
    ppl_fillers: tuple[str, ...] = ("literary", "technical")
    ppl_tokens: int = 2048
    weights: tuple[str, ...] = ("default", "base")  # base = the same model with the adapter disabled
    variants: tuple[tuple[int, int, int], ...] = ANCHOR_VARIANTS
    seed: int = 11
    max_new_tokens: int = 24

    def __post_init__(self) -> None:
        if not self.budgets or any(not 0.0 < b < 1.0 for b in self.budgets):
            raise AnLLMError(f"sweep: budgets are fractions of the context in (0, 1), got {self.budgets}")
        for f in (self.filler, *self.ppl_fillers):
            if f not in FILLERS:
                raise AnLLMError(f"sweep: unknown filler {f!r}; choose from {', '.join(FILLERS)}")
        bad = set(self.weights) - {"default", "base"}
        if bad or not self.weights:
            raise AnLLMError(f"sweep: weights are default and/or base, got {self.weights}")
        if self.n < 0 or self.ppl_tokens < 0 or not self.variants:
            raise AnLLMError("sweep: n and ppl_tokens must be >= 0 (0 skips that part) and variants non-empty")
        if any(s < 0 or w < 0 or m < 0 for s, w, m in self.variants):
            raise AnLLMError(f"sweep: anchor variants are (sinks, window, max_segment) >= 0, got {self.variants}")


# -- sizing each cache to a budget -----------------------------------------------------------------------------------
def variant_lm(lm: LoadedModel, sink: int, window: int, max_segment: int) -> LoadedModel:
    """``lm`` (same model object) whose ``anchor`` mode keeps ``sink`` sinks, a ``window`` and forced anchors every
    ``max_segment`` tokens without one (0 = none)."""
    anchor = lm.anchor.replace(n_sink=sink, window=window, max_segment=max_segment)
    return dataclasses.replace(lm, anchor=anchor)


def variant_name(v: tuple[int, int, int]) -> str:
    return f"anchor:sink={v[0]},window={v[1]},max_segment={v[2]}"


@torch.inference_mode()
def kept_entries(lm: LoadedModel, ids: list[int], mode: str) -> int:
    """Entries a ``mode`` cache holds after prefilling ``ids`` (counted by the real cache)."""
    cache = make_cache(lm, mode)
    chunk = None if cache.policy.uses_model_causal_mask else lm.anchor.chunk_size
    device = next(lm.model.parameters()).device
    prefill(lm.model, cache, torch.tensor([ids], device=device), chunk_size=chunk)
    return int(cache.n_kept()[0])


def closest_variant(sizes: dict[tuple[int, int, int], int], target: float) -> tuple[int, int, int]:
    """The variant whose size is closest to ``target`` entries (in log ratio; ties: the first listed)."""
    return min(sizes, key=lambda v: abs(math.log(max(sizes[v], 1) / max(target, 1e-9))))


def sepllm_window(lm: LoadedModel, ids: list[int], entries: int, sink: int = 4) -> int:
    """The SepLLM window whose cache after ``ids`` holds the count closest to ``entries`` (counted on the token ids
    with the policy's own separator test; the sweep reports the real cache's count)."""
    pol = SepLLMPolicy.from_model(lm, n_sink=sink, window=1)
    n = len(ids)
    sep = (pol.is_separator(torch.tensor(ids)) & (torch.arange(n) >= sink)).tolist()  # (T,) separators after sinks
    before = [0]  # before[k] = separators (after the sinks) at positions < k
    for x in sep:
        before.append(before[-1] + int(x))

    def size(w: int) -> int:  # the keep rule: p < sink, or p > n - w (the w - 1 most recent), or a separator
        r = max(n - w + 1, 0)
        return min(sink, n) + max(0, n - max(r, sink)) + before[max(r, 0)]

    return min(range(1, n + 2), key=lambda w: (abs(size(w) - entries), w))


# -- the run ---------------------------------------------------------------------------------------------------------
def _weights(lm: LoadedModel, which: str):
    return adapter_disabled(lm) if which == "base" else contextlib.nullcontext(lm)


def _point(method: str, spec: str, budget: float, tokens: int, kv: int) -> dict:
    target = budget * tokens
    return {
        "method": method,
        "spec": spec,
        "budget": budget,
        "target_entries": round(target),
        "kv_entries": kv,
        "tokens": tokens,
        "kv_frac": kv / max(tokens, 1),
        "reached": abs(kv / max(target, 1e-9) - 1.0) <= TOLERANCE,
    }


def _specs(lm: LoadedModel, ids: list[int], budget: float, sizes: dict) -> list[tuple[str, LoadedModel, str]]:
    """(method, lm to run, mode spec) sized to ``budget`` of ``ids``."""
    n = max(2, round(budget * len(ids)))
    v = closest_variant(sizes, budget * len(ids))
    return [
        ("anchor", variant_lm(lm, *v), "anchor"),
        ("streaming", lm, budget_spec("streaming", n)),
        ("sepllm", lm, f"sepllm:sink=4,window={sepllm_window(lm, ids, n)}"),
    ]


def run_sweep(
    lm: LoadedModel,
    cfg: SweepConfig,
    out: str | Path | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    resume: bool = False,
) -> list[dict]:
    """Every (weights, budget, method) point: recall items scored through the sized caches, and perplexity of the
    held-out texts; records appended to ``out`` (JSONL) as they finish. Returns the records.

    A record is keyed by :func:`point_key`; with ``resume``, the points ``out`` already holds are kept, not run again
    (the records returned include them), and the configuration in its first line must equal this run's."""
    if "base" in cfg.weights and getattr(lm.model, "disable_adapter", None) is None:
        raise AnLLMError(f"{lm.name}: the base weights need an unmerged adapter (load with load_adapted)")
    path = Path(out) if out is not None else None
    records: list[dict] = (
        start_jsonl(path, run_config(lm, cfg), resume, lambda rs: list({point_key(r): r for r in rs}.values()))
        if path is not None
        else []
    )  # resumed: one record per point (a duplicate is dropped)
    done = {point_key(r) for r in records}

    def emit(rec: dict) -> None:
        records.append(rec)
        if path is not None:
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        if progress is not None:
            progress(f"{rec['part']} {rec['weights']} {rec['method']} b={rec['budget']} kv={rec['kv_frac']:.3f}")

    texts = {f: encode_text(lm, read_resource(FILLERS[f]), cfg.ppl_tokens) for f in cfg.ppl_fillers} if (
        cfg.ppl_tokens
    ) else {}  # fmt: skip
    text_sizes = {f: {v: kept_entries(variant_lm(lm, *v), ids, "anchor") for v in cfg.variants} for f, ids in
                  texts.items()}  # fmt: skip
    items = []
    if cfg.n:
        tok = lm.tokenizer
        items = make_items(
            seed=cfg.seed,
            distances=cfg.distances,
            n_per_distance=cfg.n,
            filler=read_resource(FILLERS[cfg.filler]),
            count_tokens=lambda s: len(tok(s, add_special_tokens=False)["input_ids"]),
            families=cfg.families,
            templates=FORM_TEMPLATES,
            chat_openers=ACCEPTANCE_OPENERS,
        )
    rendered = [render(lm, it) for it in items]
    item_sizes = [{v: kept_entries(variant_lm(lm, *v), p, "anchor") for v in cfg.variants} for p, _ in rendered]
    for which in cfg.weights:
        with _weights(lm, which):
            for f, ids in texts.items():
                if point_key({"part": "ppl", "weights": which, "filler": f, "method": "full",
                              "budget": 1.0}) not in done:  # fmt: skip
                    t0 = time.perf_counter()
                    full = perplexity(lm, ids, "full")
                    emit({"part": "ppl", "weights": which, "filler": f, **_point("full", "full", 1.0, len(ids),
                          full.kv_kept_end), "ppl": full.ppl, "seconds": time.perf_counter() - t0})  # fmt: skip
                for b in cfg.budgets:
                    for method, run_lm, spec in _specs(lm, ids, b, text_sizes[f]):
                        if point_key({"part": "ppl", "weights": which, "filler": f, "method": method,
                                      "budget": b}) in done:  # fmt: skip
                            continue
                        t0 = time.perf_counter()
                        r = perplexity(run_lm, ids, spec)
                        name = variant_name(_variant_of(run_lm)) if method == "anchor" else spec
                        emit({"part": "ppl", "weights": which, "filler": f, **_point(method, name, b, len(ids),
                              r.kv_kept_end), "ppl": r.ppl, "seconds": time.perf_counter() - t0})  # fmt: skip
            for it, (prompt, ans), sizes in zip(items, rendered, item_sizes):
                for b in cfg.budgets:
                    for method, run_lm, spec in _specs(lm, prompt, b, sizes):
                        if point_key({"part": "recall", "weights": which, "filler": cfg.filler, "id": it.id,
                                      "family": it.family, "distance": it.distance, "method": method,
                                      "budget": b}) in done:  # fmt: skip
                            continue
                        t0 = time.perf_counter()
                        s = score_item(run_lm, prompt, it.answer, ans, spec, max_new_tokens=cfg.max_new_tokens)
                        name = variant_name(_variant_of(run_lm)) if method == "anchor" else spec
                        emit({"part": "recall", "weights": which, "filler": cfg.filler, "id": it.id,
                              "family": it.family, "distance": it.distance,
                              **_point(method, name, b, len(prompt), s.kv_entries), "em": s.em,
                              "logprob": s.logprob, "answer": it.answer, "output": s.output,
                              "seconds": time.perf_counter() - t0})  # fmt: skip
    return records


def point_key(rec: dict) -> tuple:
    """The stable key of one sweep point (its record): part, weights, filler, item (recall) or None, method, budget."""
    item = (rec["id"], rec["family"], rec["distance"]) if rec["part"] == "recall" else None
    return (rec["part"], rec["weights"], rec["filler"], item, rec["method"], float(rec["budget"]))


def _variant_of(lm: LoadedModel) -> tuple[int, int, int]:
    return (lm.anchor.n_sink, lm.anchor.window, lm.anchor.max_segment)


def summarise_sweep(records: list[dict], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Points per (weights, method, budget): recall EM with its bootstrap interval and mean KV fraction; perplexity
    per held-out text with its KV fraction at the end of the text."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r["part"] == "recall":
            groups.setdefault((r["weights"], r["method"], r["budget"]), []).append(r)
    recall = []
    for (w, m, b), rs in sorted(groups.items()):
        ci = bootstrap_interval([float(r["em"]) for r in rs], n_boot=n_boot, seed=seed)
        recall.append(
            {
                "weights": w,
                "method": m,
                "budget": b,
                "n": ci.n,
                "em": ci.mean,
                "lo": ci.lo,
                "hi": ci.hi,
                "kv_frac": sum(r["kv_frac"] for r in rs) / len(rs),
                "reached": sum(r["reached"] for r in rs) / len(rs),
                "specs": sorted({r["spec"] for r in rs}),
            }
        )
    ppl = [
        {k: r[k] for k in ("weights", "filler", "method", "budget", "spec", "ppl", "kv_frac", "kv_entries", "tokens",
                           "reached")}
        for r in records
        if r["part"] == "ppl"
    ]  # fmt: skip
    return {"recall": recall, "ppl": ppl, "tolerance": TOLERANCE, "seconds": sum(r["seconds"] for r in records)}
