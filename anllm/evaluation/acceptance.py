"""The recall acceptance harness (issue 27): held-out item forms, two held-out filler domains, the base model as the
reference row, 95 % bootstrap intervals per cell (docs/evaluation.md, "Recall acceptance").

Rows, all on one loaded model (the base with the anchor adapter attached, not merged):

* ``base:full``: the full cache with the adapter **disabled** (peft's ``disable_adapter()``) — the reference;
* ``full``, ``anchor``: the adapted model (the default's weights) with its full cache and its served anchor cache;
* ``streaming``, ``sepllm``: the peers on the adapted weights, sized per item to the anchor cache's entries.

Items come from :data:`anllm.memory.FORM_TEMPLATES` (answers of many forms, paraphrased questions, several facts
per row; never trained on) in the families single, multi, chat and fewshot-recall. Records are appended to a JSONL
file item by item, so a partial run is usable (:func:`summarise` reads it back).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from anllm.config import AnLLMError
from anllm.evaluation.bootstrap import bootstrap_interval
from anllm.evaluation.recall import evaluate_recall
from anllm.memory import ACCEPTANCE_OPENERS, FORM_TEMPLATES, MemoryItem, make_items
from anllm.models import LoadedModel
from anllm.resources import KJV_GENESIS, NETTLE_PROSE, read_resource

ACCEPTANCE_FAMILIES = ("single", "multi", "chat", "fewshot-recall")
FILLERS = {"literary": KJV_GENESIS, "technical": NETTLE_PROSE}  # both held out from every training corpus
PEERS = ("full", "anchor", "streaming", "sepllm")
REFERENCE = "base:full"
POOLED = "all"  # the filler name of cells pooling both fillers


@dataclass(frozen=True)
class AcceptanceConfig:
    """What one acceptance run covers; ``n`` items per family, distance and filler (4 families: 4 n per cell)."""

    distances: tuple[int, ...] = (256, 1024, 2048, 4096)
    n: int = 15
    families: tuple[str, ...] = ACCEPTANCE_FAMILIES
    fillers: tuple[str, ...] = ("literary", "technical")
    policies: tuple[str, ...] = PEERS
    reference: bool = True  # the base model's full cache, adapter disabled
    seed: int = 7
    max_new_tokens: int = 24
    chunk_size: int | None = None
    n_boot: int = 2000

    def __post_init__(self) -> None:
        if self.n < 1 or not self.distances or any(d < 0 for d in self.distances):
            raise AnLLMError(f"acceptance: n >= 1 and distances >= 0 needed, got n={self.n}, {self.distances}")
        bad = [f for f in self.fillers if f not in FILLERS]
        if bad or not self.fillers:
            raise AnLLMError(f"acceptance: unknown filler(s) {bad}; choose from {', '.join(FILLERS)}")
        bad = [f for f in self.families if f not in ACCEPTANCE_FAMILIES]
        if bad or not self.families:
            raise AnLLMError(f"acceptance: unknown families {bad}; choose from {', '.join(ACCEPTANCE_FAMILIES)}")
        if "anchor" not in self.policies:
            raise AnLLMError("acceptance: the policies must include anchor (the peers' budgets are matched to it)")
        if self.max_new_tokens < 1 or self.n_boot < 1:
            raise AnLLMError("acceptance: max_new_tokens and n_boot must be >= 1")


# -- one model, adapter on and off -----------------------------------------------------------------------------------
def load_adapted(adapter_dir: str | Path | None = None, *, device: str = "cpu") -> LoadedModel:
    """The base SmolLM2 with the anchor adapter attached **unmerged** (so it can be switched off), served with the
    adapter's ``anchor.json``: the same weights as ``--model default`` up to float rounding of the merge."""
    from peft import PeftModel

    from anllm.models import ADAPTER_DIR, _adapter_anchor, load_model

    adapter_dir = Path(adapter_dir or ADAPTER_DIR)
    anchor = _adapter_anchor(adapter_dir / "anchor.json")
    lm = load_model("smollm2-135m", anchor=anchor, device=device)
    model = PeftModel.from_pretrained(lm.model, str(adapter_dir)).eval()
    return LoadedModel(model, lm.tokenizer, lm.anchor, lm.anchor_ids, "default (adapter unmerged)", lm.notes, True)


@contextlib.contextmanager
def adapter_disabled(lm: LoadedModel) -> Iterator[LoadedModel]:
    """``lm`` with its peft adapter switched off (the base model's weights) inside the block, on the same object.

    Raises:
        AnLLMError: ``lm.model`` has no switchable adapter (a merged or plain model cannot give the base row).
    """
    switch = getattr(lm.model, "disable_adapter", None)
    if switch is None:
        raise AnLLMError(
            f"{lm.name or 'this model'} has no switchable adapter: load it with load_adapted() (adapter unmerged)"
        )
    with switch():
        yield lm


# -- the run ---------------------------------------------------------------------------------------------------------
def acceptance_items(lm: LoadedModel, cfg: AcceptanceConfig) -> list[tuple[str, MemoryItem]]:
    """``(filler, item)`` pairs ordered by item index first, then distance, filler and family, so a run stopped
    early has every cell, each with the same number of items (one per family and filler per round)."""
    tok = lm.tokenizer

    def count(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    out = []
    for k, name in enumerate(cfg.fillers):
        items = make_items(
            seed=cfg.seed + 1000 * k,
            distances=cfg.distances,
            n_per_distance=cfg.n,
            filler=read_resource(FILLERS[name]),
            count_tokens=count,
            families=cfg.families,
            templates=FORM_TEMPLATES,
            chat_openers=ACCEPTANCE_OPENERS,
        )
        out += [(name, it) for it in items]
    rank_d = {d: i for i, d in enumerate(cfg.distances)}
    rank_f = {f: i for i, f in enumerate(cfg.fillers)}
    rank_fam = {f: i for i, f in enumerate(cfg.families)}
    return sorted(
        out,
        key=lambda p: (int(p[1].id.rsplit("-", 1)[1]), rank_d[p[1].distance], rank_f[p[0]], rank_fam[p[1].family]),
    )


def run_acceptance(
    lm: LoadedModel,
    cfg: AcceptanceConfig,
    out: str | Path | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Every item through every row; returns the records and appends each item's records to ``out`` (JSONL).

    A record: ``filler``, ``row`` (``base:full`` or a mode), ``id``, ``family``, ``kind``, ``distance``, ``em``,
    ``logprob``, ``kv_entries``, ``prompt_tokens``, ``spec``, ``answer``, ``output``, ``seconds``.
    """
    pairs = acceptance_items(lm, cfg)
    if cfg.reference and getattr(lm.model, "disable_adapter", None) is None:  # refused before anything runs
        raise AnLLMError(f"{lm.name}: the base reference row needs an unmerged adapter (load with load_adapted)")
    path = Path(out) if out is not None else None
    records: list[dict] = []
    for i, (filler, it) in enumerate(pairs):
        mine: list[dict] = []
        if cfg.reference:
            t0 = time.perf_counter()
            with adapter_disabled(lm):
                res = evaluate_recall(
                    lm, [it], ("full",), budget=None, chunk_size=cfg.chunk_size, max_new_tokens=cfg.max_new_tokens
                )
            mine += _records(res.items, filler, it, time.perf_counter() - t0, row=REFERENCE)
        t0 = time.perf_counter()
        res = evaluate_recall(
            lm, [it], cfg.policies, budget="anchor", chunk_size=cfg.chunk_size, max_new_tokens=cfg.max_new_tokens
        )
        mine += _records(res.items, filler, it, time.perf_counter() - t0)
        records += mine
        if path is not None:
            with path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in mine)
        if progress is not None:
            progress(i + 1, len(pairs))
    return records


def _records(items: list[dict], filler: str, it: MemoryItem, seconds: float, row: str | None = None) -> list[dict]:
    out = []
    for r in items:
        out.append(
            {
                "filler": filler,
                "row": row or r["mode"],
                "kind": it.kind,
                **{k: r[k] for k in ("id", "family", "distance", "spec", "em", "logprob", "kv_entries")},
                **{k: r[k] for k in ("prompt_tokens", "answer", "output")},
                "seconds": seconds / max(len(items), 1),  # the item's wall time shared among its policies
            }
        )
    return out


def read_records(path: str | Path) -> list[dict]:
    """The records of a (possibly partial) run's JSONL file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines if x.strip()]


@dataclass(frozen=True)
class Cell:
    """Exact match of one row at one (filler, distance), all families pooled, with its bootstrap interval."""

    filler: str
    distance: int
    row: str
    n: int
    em: float
    lo: float
    hi: float
    kv_entries: float
    prompt_tokens: float


def summarise(records: list[dict], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Cells per (filler, distance, row) — and with filler ``"all"`` both fillers pooled — and per (filler, distance,
    row, family): EM with 95 % percentile-bootstrap intervals over items (seeded), mean KV entries and prompt tokens;
    only items every row finished are counted."""
    rows = list(dict.fromkeys(r["row"] for r in records))
    done: dict[tuple, set] = {}
    for r in records:
        done.setdefault((r["filler"], r["id"]), set()).add(r["row"])
    complete = {k for k, v in done.items() if v == set(rows)}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if (r["filler"], r["id"]) in complete:
            groups.setdefault((r["filler"], r["distance"], r["row"]), []).append(r)
            groups.setdefault((r["filler"], r["distance"], r["row"], r["family"]), []).append(r)
            groups.setdefault((POOLED, r["distance"], r["row"]), []).append(r)

    def cell(key: tuple, rs: list[dict]) -> dict:
        ci = bootstrap_interval([float(r["em"]) for r in rs], n_boot=n_boot, seed=seed)
        kv = sum(r["kv_entries"] for r in rs) / len(rs)
        pt = sum(r["prompt_tokens"] for r in rs) / len(rs)
        c = asdict(Cell(key[0], int(key[1]), key[2], ci.n, ci.mean, ci.lo, ci.hi, kv, pt))
        return {**c, "family": key[3]} if len(key) == 4 else c

    order = {r: i for i, r in enumerate(rows)}

    def sort_key(k):
        return (k[0], k[1], order[k[2]], k[3] if len(k) == 4 else "")

    cells = [cell(k, groups[k]) for k in sorted((k for k in groups if len(k) == 3), key=sort_key)]
    by_family = [cell(k, groups[k]) for k in sorted((k for k in groups if len(k) == 4), key=sort_key)]
    return {
        "rows": rows,
        "items_complete": len(complete),
        "cells": cells,
        "by_family": by_family,
        "seconds": sum(r["seconds"] for r in records),
    }
