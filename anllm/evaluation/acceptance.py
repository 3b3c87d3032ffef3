"""The recall acceptance harness (issue 27): held-out item forms, two held-out filler domains, the base model as the
reference row, 95 % bootstrap intervals per cell (docs/evaluation.md, "Recall acceptance").

Rows, all on one loaded model (the base with the anchor adapter attached, not merged):

* ``base:full``: the full cache with the adapter **disabled** (peft's ``disable_adapter()``) — the reference;
* ``full``, ``anchor``: the adapted model (the default's weights) with its full cache and its served anchor cache;
* ``streaming``, ``sepllm``: the peers on the adapted weights, sized per item to the anchor cache's entries.

Items come from :data:`anllm.memory.FORM_TEMPLATES` (answers of many forms, paraphrased questions, several facts
per row; never trained on) in the families single, multi, chat and fewshot-recall. Records are appended to a JSONL
file item by item, so a partial run is usable (:func:`summarise` reads it back) and can be continued
(``resume=True``): its first line holds the run's configuration (:data:`CONFIG_KEY`), checked against the resumed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
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
CONFIG_KEY = "anllm_run_config"  # the first line of a run's JSONL: {CONFIG_KEY: {setting: value}}


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
    """The base SmolLM2 with an anchor adapter attached **unmerged** (so it can be switched off): the shipped one
    (the same weights as ``--model default`` up to float rounding of the merge) or ``adapter_dir`` (e.g. a training
    checkpoint's ``adapter/``). Served with the adapter's ``anchor.json``; a directory without one (a checkpoint) is
    served with the shipped adapter's setting, which every recipe in ``configs/recipes`` trains with.

    Raises:
        AnLLMError: ``adapter_dir`` is not a peft adapter folder (:func:`anllm.models.check_adapter_dir`).
    """
    from peft import PeftModel

    from anllm.models import ADAPTER_DIR, _adapter_anchor, check_adapter_dir, load_model

    path = check_adapter_dir(adapter_dir or ADAPTER_DIR, "adapter folder")
    own = path / "anchor.json"
    anchor = _adapter_anchor(own if own.is_file() else Path(ADAPTER_DIR) / "anchor.json")
    lm = load_model("smollm2-135m", anchor=anchor, device=device)
    model = PeftModel.from_pretrained(lm.model, str(path)).eval()
    name = "default (adapter unmerged)" if adapter_dir is None else f"smollm2-135m + adapter {path} (unmerged)"
    return LoadedModel(model, lm.tokenizer, lm.anchor, lm.anchor_ids, name, lm.notes, True)


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
    resume: bool = False,
) -> list[dict]:
    """Every item through every row; returns the records and appends each item's records to ``out`` (JSONL).

    A record: ``filler``, ``row`` (``base:full`` or a mode), ``id``, ``family``, ``kind``, ``distance``, ``em``,
    ``logprob``, ``kv_entries``, ``prompt_tokens``, ``spec``, ``answer``, ``output``, ``seconds``. An item is keyed by
    :func:`item_key`; with ``resume``, the items ``out`` already holds with every row are kept, not run again (the
    records returned include them), and the configuration in its first line must equal this run's.
    """
    pairs = acceptance_items(lm, cfg)
    if cfg.reference and getattr(lm.model, "disable_adapter", None) is None:  # refused before anything runs
        raise AnLLMError(f"{lm.name}: the base reference row needs an unmerged adapter (load with load_adapted)")
    path = Path(out) if out is not None else None
    rows = ((REFERENCE,) if cfg.reference else ()) + tuple(cfg.policies)
    wanted = {item_key(f, it) for f, it in pairs}

    def complete(recs: list[dict]) -> list[dict]:  # records of planned items that have every row
        by: dict[tuple, dict[str, dict]] = {}
        for r in recs:
            by.setdefault(item_key(r["filler"], r), {})[r["row"]] = r
        return [r for k, rs in by.items() if k in wanted and set(rs) == set(rows) for r in rs.values()]

    done = start_jsonl(path, run_config(lm, cfg), resume, complete) if path is not None else []
    done_keys = {item_key(r["filler"], r) for r in done}
    records: list[dict] = list(done)
    for i, (filler, it) in enumerate(pairs):
        if item_key(filler, it) in done_keys:
            if progress is not None:
                progress(i + 1, len(pairs))
            continue
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


def item_key(filler: str, item) -> tuple:
    """The stable key of one acceptance item (a :class:`MemoryItem` or one of its records)."""
    get = item.get if isinstance(item, dict) else lambda k: getattr(item, k)
    return (filler, get("id"), get("family"), get("distance"))


def run_config(lm: LoadedModel, cfg) -> dict:
    """The settings a run's records depend on (JSON values), with the model's name: a resumed run must match them."""
    conf = {k: v for k, v in asdict(cfg).items() if k != "n_boot"}  # n_boot only shapes the summary
    return json.loads(json.dumps({"model": lm.name, **conf}))


# -- the JSONL file: a configuration line, then records -----------------------------------------------------------
def read_jsonl(path: str | Path) -> tuple[dict | None, list[dict]]:
    """A run's JSONL: its configuration (None for a file without one) and its records. A truncated last line (a run
    killed mid-write) is dropped with a warning.

    Raises:
        AnLLMError: a line other than the last is not JSON.
    """
    path = Path(path)
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    config, records = None, []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: dropped a truncated last line (a run stopped mid-write)", stacklevel=2)
                break
            raise AnLLMError(f"{path}: line {i + 1} is not JSON (the file is damaged)") from None
        if i == 0 and isinstance(rec, dict) and set(rec) == {CONFIG_KEY}:
            config = rec[CONFIG_KEY]
        else:
            records.append(rec)
    return config, records


def start_jsonl(
    path: Path, config: dict, resume: bool, complete: Callable[[list[dict]], list[dict]] = lambda rs: rs
) -> list[dict]:
    """Make ``path`` ready for appending; return the records a resumed run keeps (``[]`` for a new file).

    A missing or empty file gets ``config`` as its first line. With ``resume``, an existing file's configuration must
    equal ``config``; its records are filtered by ``complete`` (e.g. an item some rows of which a stop cut off), and
    the file is rewritten with only those when anything was dropped. Without ``resume``, records are appended.

    Raises:
        AnLLMError: (resume) the file has no configuration line, or a setting differs (naming the first).
    """
    if not path.exists() or path.stat().st_size == 0:
        path.write_text(json.dumps({CONFIG_KEY: config}) + "\n", encoding="utf-8")
        return []
    if not resume:
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old, records = read_jsonl(path)
    truncated = bool(caught)
    for w in caught:
        warnings.warn(str(w.message), stacklevel=2)
    if old is None:
        raise AnLLMError(
            f"--resume: {path} has no configuration line (written before --resume existed): give another --out"
        )
    for k in sorted(set(old) | set(config)):
        if old.get(k) != config.get(k):
            raise AnLLMError(
                f"--resume: {path} was written with {k}={old.get(k, '(unset)')!r}, this run has "
                f"{k}={config.get(k, '(unset)')!r}: run with the same settings, or give another --out"
            )
    kept = complete(records)
    if truncated or len(kept) != len(records):
        if len(kept) != len(records):
            warnings.warn(f"{path}: {len(records) - len(kept)} record(s) of unfinished items dropped", stacklevel=2)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in [{CONFIG_KEY: old}, *kept]), encoding="utf-8")
        os.replace(tmp, path)
    return kept


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
    """The records of a (possibly partial) run's JSONL file (its configuration line skipped, a truncated last line
    dropped with a warning)."""
    return read_jsonl(path)[1]


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


RECORD_KEYS = ("filler", "id", "row", "em", "distance", "answer")  # what a comparison reads from each record


def read_baseline(path: str | Path, flag: str = "--baseline") -> list[dict]:
    """The records of another acceptance run to compare with (:func:`paired_differences`), checked.

    Raises:
        AnLLMError: the file is not UTF-8, holds no records, or a record lacks the fields a comparison reads (the
            run's settings line is optional: runs made before it existed have none).
    """
    try:
        records = read_jsonl(path)[1]
    except UnicodeDecodeError:
        raise AnLLMError(
            f"{flag} {path} is not UTF-8 text: give an OUT.jsonl written by anllm eval acceptance"
        ) from None
    for i, r in enumerate(records):
        if not isinstance(r, dict) or any(k not in r for k in RECORD_KEYS):
            raise AnLLMError(f"{flag} {path}: record {i + 1} lacks the fields {', '.join(RECORD_KEYS)}")
    if not records:
        raise AnLLMError(f"{flag} {path} holds no finished item yet: compare once it has some")
    return records


def paired_differences(baseline: list[dict], records: list[dict], *, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """This run's exact match minus a baseline run's, on the items both runs finished for the same row: per
    (filler, distance, row), and with filler ``"all"`` both fillers pooled; 95 % paired bootstrap intervals over items
    (a checkpoint against the shipped adapter, on the same items). Each: ``filler``, ``distance``, ``row``, ``n``,
    ``baseline_em``, ``em``, ``diff``, ``lo``, ``hi``.

    Raises:
        AnLLMError: the runs share no item, or an item id names different items (runs of other seeds or templates).
    """
    old = {(r["filler"], r["id"], r["row"]): r for r in baseline}
    new = {(r["filler"], r["id"], r["row"]): r for r in records}
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for k in sorted(old.keys() & new.keys()):
        a, b = old[k], new[k]
        if (a["answer"], a["distance"]) != (b["answer"], b["distance"]):
            raise AnLLMError(
                f"item {k[1]} ({k[0]}) differs between the runs ({a['answer']!r} at {a['distance']} tokens against "
                f"{b['answer']!r} at {b['distance']}): compare runs made with the same --seed, --n and --families"
            )
        for filler in (k[0], POOLED):
            groups.setdefault((filler, int(b["distance"]), k[2]), []).append((float(a["em"]), float(b["em"])))
    if not groups:
        raise AnLLMError("the two runs share no item with the same row: compare runs of the same items and policies")
    out = []
    for (filler, distance, row), pairs in sorted(groups.items(), key=lambda kv: (kv[0][0] != POOLED, *kv[0])):
        ci = bootstrap_interval([b - a for a, b in pairs], n_boot=n_boot, seed=seed)
        base = sum(a for a, _ in pairs) / len(pairs)
        out.append(dict(filler=filler, distance=distance, row=row, n=ci.n, baseline_em=base, em=base + ci.mean,
                        diff=ci.mean, lo=ci.lo, hi=ci.hi))  # fmt: skip
    return out
