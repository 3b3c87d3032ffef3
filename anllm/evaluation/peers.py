"""Side by side with other KV-compression toolkits (kvpress): identical inputs out, their results merged back in.

kvpress needs a transformers release older than anllm supports, so it runs in its own venv
(``bench/peers/``, docs/benchmarks.md "kvpress side by side"). anllm writes the exact token ids it scores to a JSONL
file — every recall item split into the *context* a press compresses and the *question* asked afterwards, the anchor
cache's entries after the prompt (the budget the press is sized to), and the prose text with the anchor cache's
entries before each chunk — and reads back the peer's JSON: outputs and answer log-probabilities per item and press,
perplexity per press. Exact match is scored here, with :func:`anllm.evaluation.recall.exact_match`, so both sides are
judged by one rule.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from anllm.anchors import insert_ac
from anllm.config import AnLLMError
from anllm.evaluation.recall import exact_match
from anllm.generation import forward_chunk, make_cache
from anllm.memory import MemoryItem
from anllm.models import LoadedModel

INPUTS_SCHEMA = "anllm-peers-inputs/1"
ANLLM_SCHEMA = "anllm-peers-anllm/1"
RESULTS_SCHEMA = "anllm-peers-results/1"
RECALL_KEYS = {"id": str, "press": str, "kv_entries": int, "logprob": float, "output": str}
PPL_KEYS = {"press": str, "ppl": float, "nll": float, "tokens": int, "kv_mean": float}


def question_start(lm: LoadedModel, item: MemoryItem, prompt: list[int]) -> int:
    """Index of the first token of ``item``'s question in its rendered ``prompt`` (what precedes it is the context).

    The question is the last place its text starts: the largest ``k`` whose decoded suffix ``prompt[k:]`` still
    contains the whole question (a token that merges the question's first character with what precedes it belongs
    to the question). Raises :class:`AnLLMError` when the prompt does not contain the question at all.
    """
    question = insert_ac(item.question) if lm.anchor.mode == "ac" else item.question
    question = question.strip()
    decode = lm.tokenizer.decode
    for k in range(len(prompt) - 1, -1, -1):
        if question in decode(prompt[k:], skip_special_tokens=False):
            if k == 0:
                raise AnLLMError(f"item {item.id}: the question is the whole prompt; there is no context to compress")
            return k
    raise AnLLMError(f"item {item.id}: its question {item.question!r} does not appear in the rendered prompt")


@torch.inference_mode()
def anchor_chunk_budgets(lm: LoadedModel, ids: list[int], chunk_size: int, mode: str = "anchor") -> list[int]:
    """Entries a ``mode`` cache stores before each ``chunk_size``-token chunk of ``ids`` (0 before the first)."""
    device = next(lm.model.parameters()).device
    cache = make_cache(lm, mode)
    out = []
    for s in range(0, len(ids), chunk_size):
        out.append(0 if s == 0 else int(cache.n_kept()[0]))
        forward_chunk(lm.model, cache, torch.tensor([ids[s : s + chunk_size]], device=device))  # (1, Q)
    return out


def recall_inputs(
    lm: LoadedModel, items: list[MemoryItem], rendered: list[tuple[list[int], list[int]]], records: list[dict]
) -> list[dict]:
    """One input line per item: token ids split at the question, answer ids, and the anchor cache's entries.

    Args:
        rendered: ``(prompt ids, answer ids)`` per item, as :func:`anllm.evaluation.recall.render` gives them.
        records: :class:`~anllm.evaluation.recall.RecallResult` ``items`` with an ``anchor`` record per item.
    """
    budgets = {r["id"]: r["kv_entries"] for r in records if r["mode"] == "anchor"}
    out = []
    for it, (prompt, answer) in zip(items, rendered):
        if it.id not in budgets:
            raise AnLLMError(f"item {it.id} has no anchor record: run the recall benchmark with the anchor mode")
        k = question_start(lm, it, prompt)
        out.append(
            {
                "kind": "recall",
                "id": it.id,
                "family": it.family,
                "distance": it.distance if it.distance >= 0 else len(prompt),
                "context_ids": prompt[:k],
                "question_ids": prompt[k:],
                "answer_ids": answer,
                "answer": it.answer,
                "anchor_kv": int(budgets[it.id]),
            }
        )
    return out


def write_inputs(path: str | Path, meta: dict, recall: list[dict], ppl: list[dict]) -> str:
    """Write the inputs JSONL (a ``meta`` line, then recall and ppl lines); returns its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"kind": "meta", "schema": INPUTS_SCHEMA, **meta}, *recall, *ppl]
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- reading the peer's results -----------------------------------------------------------------------------------
def _load_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AnLLMError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise AnLLMError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise AnLLMError(f"{what} {path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_fields(row: object, keys: dict[str, type], where: str) -> None:
    if not isinstance(row, dict):
        raise AnLLMError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, typ in keys.items():
        value = row.get(key)
        ok = isinstance(value, typ) or (typ is float and isinstance(value, int))
        if not ok or isinstance(value, bool) or (typ is float and not math.isfinite(value)):
            got = "missing" if key not in row else repr(value)[:40]
            raise AnLLMError(f"{where}: '{key}' must be a finite {typ.__name__} (got {got})")


def read_peer_results(path: str | Path) -> dict:
    """A peer's results JSON, checked against :data:`RESULTS_SCHEMA` (errors name the row and the field).

    Shape: ``{"schema", "tool", "versions": {}, "inputs_sha256", "recall": [{id, press, kv_entries, logprob,
    output, ...}], "ppl": [{press, ppl, nll, tokens, kv_mean, ...}], "errors": [{press, where, error}]}``.
    """
    obj = _load_json(path, "peer results")
    if obj.get("schema") != RESULTS_SCHEMA:
        raise AnLLMError(f"peer results {path}: schema {obj.get('schema')!r}, expected {RESULTS_SCHEMA!r}")
    for key in ("tool", "inputs_sha256"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise AnLLMError(f"peer results {path}: '{key}' must be a non-empty string")
    for key in ("recall", "ppl", "errors"):
        if not isinstance(obj.get(key, []), list):
            raise AnLLMError(f"peer results {path}: '{key}' must be a list")
    for i, row in enumerate(obj.get("recall", [])):
        _check_fields(row, RECALL_KEYS, f"peer results {path}: recall[{i}]")
    for i, row in enumerate(obj.get("ppl", [])):
        _check_fields(row, PPL_KEYS, f"peer results {path}: ppl[{i}]")
    for i, row in enumerate(obj.get("errors", [])):
        _check_fields(row, {"press": str, "where": str, "error": str}, f"peer results {path}: errors[{i}]")
    return obj


def combine_peer_results(parts: list[dict]) -> dict:
    """One result from runs of the same peer on the same inputs split by press (e.g. two processes)."""
    if not parts:
        raise AnLLMError("no peer results given")
    first = parts[0]
    for p in parts[1:]:
        if (p["tool"], p["inputs_sha256"]) != (first["tool"], first["inputs_sha256"]):
            raise AnLLMError("peer results to combine must come from one tool on one inputs file")
    out = {**first, "recall": [], "ppl": [], "errors": []}
    for p in parts:
        for key in ("recall", "ppl", "errors"):
            out[key] += p.get(key, [])
    return out


def read_anllm_results(path: str | Path) -> dict:
    """anllm's side of the comparison (written by ``bench/peers/export_inputs.py``)."""
    obj = _load_json(path, "anllm results")
    if obj.get("schema") != ANLLM_SCHEMA:
        raise AnLLMError(f"anllm results {path}: schema {obj.get('schema')!r}, expected {ANLLM_SCHEMA!r}")
    for i, row in enumerate(obj.get("recall", [])):
        _check_fields(row, {"id": str, "mode": str, "logprob": float, "output": str}, f"anllm results {path}: {i}")
    return obj


# -- merging --------------------------------------------------------------------------------------------------------
@dataclass
class MergedRow:
    """One method: recall per distance (exact match, mean answer log-prob, mean KV entries) and prose perplexity."""

    tool: str  # "anllm" or the peer's name
    method: str
    model: str
    recall: dict[int, dict[str, float]]  # distance -> {"em", "logprob", "kv", "n"}
    ppl: float | None = None
    ppl_kv: float | None = None  # mean entries held before a chunk is scored
    error: str = ""


def _recall_cells(rows: Iterable[dict], answers: dict[str, str], distances: dict[str, int]) -> dict:
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(distances[r["id"]], []).append(r)
    out = {}
    for d, rs in sorted(groups.items()):
        n = len(rs)
        ems = [exact_match(answers[r["id"]], r["output"]) for r in rs]
        out[d] = {
            "em": sum(ems) / n,
            "logprob": sum(r["logprob"] for r in rs) / n,
            "kv": sum(r["kv_entries"] for r in rs) / n,
            "n": n,
        }
    return out


def merge(anllm: dict, peer: dict) -> list[MergedRow]:
    """anllm's rows then the peer's, each scored with anllm's exact match over the same items.

    Raises:
        AnLLMError: the two files come from different inputs, or the peer scored items anllm did not.
    """
    if peer["inputs_sha256"] != anllm.get("inputs_sha256"):
        raise AnLLMError(
            "the peer results were computed on other inputs (inputs_sha256 differs): rerun the peer on the "
            "inputs file that export_inputs.py wrote with these anllm results"
        )
    answers = {r["id"]: r["answer"] for r in anllm["recall"]}
    distances = {r["id"]: r["distance"] for r in anllm["recall"]}
    unknown = sorted({r["id"] for r in peer.get("recall", [])} - set(answers))
    if unknown:
        raise AnLLMError(f"the peer results hold items anllm did not score: {', '.join(unknown[:5])}")
    rows = []
    labels = anllm.get("labels", {})
    for mode in dict.fromkeys([*labels, *(r["mode"] for r in anllm["recall"])]):
        rs = [r for r in anllm["recall"] if r["mode"] == mode]
        ppl = anllm.get("ppl", {}).get(mode)
        if not rs and not ppl:
            continue
        label = labels.get(mode, {})
        rows.append(
            MergedRow(
                "anllm",
                label.get("method", mode),
                label.get("model", anllm.get("model", "")),
                _recall_cells(rs, answers, distances),
                ppl["ppl"] if ppl else None,
                ppl.get("kv_before_mean", ppl["kv_kept_mean"]) if ppl else None,
            )
        )
    tool, model = peer["tool"], peer.get("model_label", "base")
    ppl_by = {p["press"]: p for p in peer.get("ppl", [])}
    errors = {}
    for e in peer.get("errors", []):
        errors.setdefault(e["press"], f"{e['where']}: {e['error']}")
    for press in dict.fromkeys([r["press"] for r in peer.get("recall", [])] + list(ppl_by) + list(errors)):
        rs = [r for r in peer.get("recall", []) if r["press"] == press]
        p = ppl_by.get(press)
        rows.append(
            MergedRow(
                tool,
                press,
                model,
                _recall_cells(rs, answers, distances),
                p["ppl"] if p else None,
                p["kv_mean"] if p else None,
                errors.get(press, ""),
            )
        )
    return rows


def markdown_table(rows: list[MergedRow]) -> str:
    """The merged table: per distance exact match, mean answer log-prob and KV entries; then prose perplexity."""
    distances = sorted({d for r in rows for d in r.recall})
    head = ["tool", "method", "model"]
    for d in distances:
        head += [f"EM @{d}", f"logp @{d}", f"KV @{d}"]
    head += ["prose ppl", "ppl KV"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.tool, r.method, r.model]
        for d in distances:
            c = r.recall.get(d)
            cells += [f"{c['em']:.0%} ({c['n']})", f"{c['logprob']:.2f}", f"{c['kv']:.1f}"] if c else ["–"] * 3
        cells += [f"{r.ppl:.2f}" if r.ppl is not None else "–", f"{r.ppl_kv:.1f}" if r.ppl_kv is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [f"- {r.tool} {r.method}: {r.error}" for r in rows if r.error]
    return "\n".join(lines + (["", "Failed:", *failed] if failed else []))
