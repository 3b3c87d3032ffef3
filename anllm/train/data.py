"""Training data: plain text and JSONL ``{"text": ...}`` for pretraining, Alpaca records for SFT, translation pairs.

Every example becomes ``input_ids`` plus ``labels`` (``-100`` where no loss is taken). Anchors are not marked here:
the training step derives them from the ids (EP: sentence-end punctuation as is; AC: ``<AC>`` inserted below).

Packing choice. The paper does not pack (arXiv 2402.07616 §4.2 and the official scripts): one document per example,
right-truncated to the block size, right-padded. That is the default (``packing: false``) and the only option for SFT.
``packing: true`` (pretraining only) concatenates documents with EOS between them and cuts the stream into full blocks,
so no token is wasted on padding or lost to truncation; the AnSAN mask then treats a block as one text, i.e. the anchors
of earlier documents in the block stay visible, exactly as they would during anchor-cache decoding of a long stream. Use
it for corpora of short documents (quotes, verses), where padding would otherwise dominate the compute.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from anllm.anchors import insert_ac
from anllm.config import AnLLMError
from anllm.textio import read_jsonl, read_text_file
from anllm.train.config import TrainConfig

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
LANGUAGES = {"de": "German", "en": "English", "fr": "French", "zh": "Chinese", "ja": "Japanese", "cs": "Czech"}


@dataclass
class Example:
    """One training row: token ids and labels of the same length (``-100`` = no loss).

    ``weights`` (per token, default 1) scales every loss term of predicting that token; ``targets`` marks tokens
    that also get the ground-truth LM loss ``target_lm_weight`` (e.g. the answer of a memory item).
    """

    input_ids: list[int]
    labels: list[int]
    weights: list[float] | None = None
    targets: list[bool] | None = None


@dataclass
class DataStats:
    """What loading produced; ``n_truncated`` counts examples cut to the block size."""

    n_records: int = 0  # documents or SFT records read
    n_examples: int = 0
    n_truncated: int = 0
    n_dropped: int = 0  # SFT records whose whole response fell beyond the block size (or a too long segment record)
    n_tokens: int = 0
    n_label_tokens: int = 0


# -- reading records -----------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> Iterator[dict]:
    for line_no, record in read_jsonl(path, "data"):
        if not isinstance(record, dict):
            raise AnLLMError(f"{path}:{line_no}: expected a JSON object per line, got {type(record).__name__}")
        yield record


def _read_json(path: Path) -> Iterator[dict]:
    try:
        data = json.loads(read_text_file(path, "data", max_bytes=None))
    except json.JSONDecodeError as e:
        raise AnLLMError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise AnLLMError(f"{path}: expected a JSON list of objects (Alpaca format)")
    yield from data


def _read_hub(spec: str) -> Iterator[dict]:
    """``hub:org/name[:split]`` through the ``datasets`` library (only when installed and online)."""
    name, _, split = spec[len("hub:") :].partition(":")
    try:
        import datasets
    except ImportError as e:
        raise AnLLMError(f"{spec}: hub datasets need the `datasets` package (pip install datasets)") from e
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # noqa: BLE001 - offline, unknown name, gated: all mean "cannot read it"
        raise AnLLMError(f"{spec}: could not load the hub dataset ({type(e).__name__}: {e})".split("\n")[0]) from e
    for row in ds:
        yield dict(row)


def read_records(source: str, cfg: TrainConfig) -> Iterator[dict]:
    """Yield raw records from a file (``.txt``, ``.jsonl``, ``.json``) or a ``hub:`` dataset.

    A plain text file gives ``{"text": ...}`` records: the whole file, or its parts between ``cfg.data.doc_separator``.
    """
    if source.startswith("hub:"):
        yield from _read_hub(source)
        return
    path = Path(source)  # missing, a directory, not UTF-8: textio's readers say so
    fmt = cfg.data.data_format
    if fmt == "text" or (fmt == "auto" and path.suffix not in (".json", ".jsonl")):
        text = read_text_file(path, "data", max_bytes=None)
        parts = text.split(cfg.data.doc_separator) if cfg.data.doc_separator else [text]
        for part in parts:
            if part.strip():
                yield {cfg.data.text_field: part}
    elif path.suffix == ".json":
        yield from _read_json(path)
    else:
        yield from _read_jsonl(path)


# -- records -> text -------------------------------------------------------------------------------------------------
def translation_to_alpaca(record: dict, source_lang: str, target_lang: str) -> dict:
    """A translation pair (``{"translation": {"de": ..., "en": ...}}`` or top-level language fields) as Alpaca."""
    pair = record.get("translation", record)
    if not isinstance(pair, dict) or source_lang not in pair or target_lang not in pair:
        raise AnLLMError(f"translation record needs {source_lang!r} and {target_lang!r} fields, got {sorted(record)}")
    src, tgt = LANGUAGES.get(source_lang, source_lang), LANGUAGES.get(target_lang, target_lang)
    return {
        "instruction": f"Translate the following text from {src} to {tgt}.",
        "input": pair[source_lang],
        "output": pair[target_lang],
    }


def alpaca_prompt(instruction: str, input_text: str = "", *, ac: bool = False) -> str:
    """The Alpaca prompt; in AC mode ``<AC>`` follows every sentence of preamble, instruction and input."""
    mark = insert_ac if ac else (lambda s: s)
    if input_text and input_text.strip():
        return (
            f"{mark(PREAMBLE_INPUT)}\n\n### Instruction:\n{mark(instruction)}\n\n"
            f"### Input:\n{mark(input_text)}\n\n### Response:\n"
        )
    return f"{mark(PREAMBLE)}\n\n### Instruction:\n{mark(instruction)}\n\n### Response:\n"


def sft_pair(record: dict, cfg: TrainConfig, *, where: str = "") -> tuple[str, str]:
    """(prompt, response) text of an Alpaca or translation record, ``<AC>`` inserted in AC mode."""
    if cfg.data.data_format == "translation":
        record = translation_to_alpaca(record, cfg.data.source_lang, cfg.data.target_lang)
    if "instruction" not in record or "output" not in record:
        raise AnLLMError(f"{where}SFT record needs 'instruction' and 'output' fields, got {sorted(record)}")
    ac = cfg.anchor.kind == "ac"
    prompt = alpaca_prompt(str(record["instruction"]), str(record.get("input") or ""), ac=ac)
    output = str(record["output"])
    return prompt, insert_ac(output) if ac else output


def document_text(record: dict, cfg: TrainConfig, *, where: str = "") -> str:
    """Pretraining text of a record, ``<AC>`` inserted in AC mode."""
    text = record.get(cfg.data.text_field)
    if cfg.data.text_field not in record:
        raise AnLLMError(f"{where}pretraining record has no field {cfg.data.text_field!r} (fields: {sorted(record)})")
    if not isinstance(text, str):
        raise AnLLMError(
            f"{where}field {cfg.data.text_field!r} must be a string, got {type(text).__name__} ({text!r:.40})"
        )
    return insert_ac(text) if cfg.anchor.kind == "ac" else text


# -- tokenisation --------------------------------------------------------------------------------------------------
def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _iter_sources(cfg: TrainConfig) -> Iterator[tuple[str, dict]]:
    n = 0
    for source in cfg.data.train_files:
        for record in read_records(source, cfg):
            yield source, record
            n += 1
            if cfg.data.max_examples and n >= cfg.data.max_examples:
                return


def build_examples(cfg: TrainConfig, tokenizer) -> tuple[list[Example], DataStats]:
    """Read ``cfg.data.train_files`` and tokenise them into examples of at most ``cfg.data.block_size`` tokens.

    Raises:
        AnLLMError: no files, a malformed record (file and line named), or no usable example at all.
    """
    if not cfg.data.train_files:
        raise AnLLMError("no training data: set train_files to one or more files (or hub:org/name)")
    stats = DataStats()
    examples: list[Example] = []
    stream: list[int] = []
    for source, record in _iter_sources(cfg):
        stats.n_records += 1
        where = f"{source}: "
        if "segments" in record:
            ex = segments_example(record, cfg, tokenizer, where=where)
            if ex is None:
                stats.n_dropped += 1
            else:
                examples.append(ex)
            continue
        if cfg.data.objective == "sft":
            prompt, response = sft_pair(record, cfg, where=where)
            p_ids = tokenizer(prompt)["input_ids"]
            r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + _eos(tokenizer)
            ids, labels = p_ids + r_ids, [IGNORE_INDEX] * len(p_ids) + r_ids
        else:
            ids = tokenizer(document_text(record, cfg, where=where))["input_ids"] + _eos(tokenizer)
            labels = list(ids)
            if cfg.data.packing:
                stream.extend(ids)
                continue
        if len(ids) > cfg.data.block_size:
            stats.n_truncated += 1
            ids, labels = ids[: cfg.data.block_size], labels[: cfg.data.block_size]
        if sum(lab != IGNORE_INDEX for lab in labels[1:]) == 0:
            stats.n_dropped += 1  # nothing left to predict (e.g. the prompt alone fills the block)
            continue
        examples.append(Example(ids, labels))
    if cfg.data.packing:
        for s in range(0, len(stream), cfg.data.block_size):
            chunk = stream[s : s + cfg.data.block_size]
            if len(chunk) >= 2:
                examples.append(Example(chunk, list(chunk)))
    if not examples:
        raise AnLLMError(
            f"the training data is empty: {stats.n_records} records in {', '.join(cfg.data.train_files)} gave no "
            f"example with a token to predict ({stats.n_dropped} dropped)"
        )
    if stats.n_truncated:
        logger.warning(
            "%d of %d examples were longer than block_size=%d and were truncated",
            stats.n_truncated,
            stats.n_records,
            cfg.data.block_size,
        )
    stats.n_examples = len(examples)
    stats.n_tokens = sum(len(e.input_ids) for e in examples)
    stats.n_label_tokens = sum(sum(lab != IGNORE_INDEX for lab in e.labels[1:]) for e in examples)
    return examples, stats


def segments_example(record: dict, cfg: TrainConfig, tokenizer, *, where: str = "") -> Example | None:
    """An example from ``{"segments": [{"text", "weight", "target"}, ...]}`` (a memory item: context, question,
    answer), never packed; None when it is longer than ``cfg.data.block_size`` (cutting it would cut the answer).

    The first segment is tokenised with the tokenizer's special tokens (BOS), the others without; ``weight``
    (default 1) scales the loss of predicting the segment's tokens, ``target`` (default false) adds the LM loss.
    """
    segs = record["segments"]
    if not isinstance(segs, list) or not segs:
        raise AnLLMError(f"{where}'segments' must be a non-empty list of {{'text', 'weight', 'target'}} objects")
    ids, weights, targets = [], [], []
    for k, seg in enumerate(segs):
        text = seg.get("text") if isinstance(seg, dict) else None
        weight = seg.get("weight", 1.0) if isinstance(seg, dict) else None
        if not isinstance(text, str) or isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise AnLLMError(f"{where}segment {k} needs a string 'text' and a number 'weight' >= 0, got {seg!r:.80}")
        text = insert_ac(text) if cfg.anchor.kind == "ac" and text.strip() else text
        part = tokenizer(text, add_special_tokens=k == 0)["input_ids"]
        ids += part
        weights += [float(weight)] * len(part)
        targets += [bool(seg.get("target", False))] * len(part)
    if len(ids) > cfg.data.block_size:
        return None
    return Example(ids, list(ids), weights, targets)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples.

    Returns:
        ``input_ids`` long ``(B, T)``, ``labels`` long ``(B, T)`` (``-100`` on padding), ``attention_mask`` long
        ``(B, T)`` (1 = real token); when any example has them, ``weights`` float ``(B, T)`` (1 by default, 0 on
        padding) and ``targets`` bool ``(B, T)``.
    """
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(examples), T), dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(e.labels)
        attn[b, :n] = 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": attn}
    if any(e.weights is not None or e.targets is not None for e in examples):
        weights = torch.zeros((len(examples), T))
        targets = torch.zeros((len(examples), T), dtype=torch.bool)
        for b, e in enumerate(examples):
            n = len(e.input_ids)
            weights[b, :n] = torch.tensor(e.weights) if e.weights is not None else 1.0
            if e.targets is not None:
                targets[b, :n] = torch.tensor(e.targets)
        out |= {"weights": weights, "targets": targets}
    return out


def eval_blocks(path: str, cfg: TrainConfig, tokenizer) -> list[list[int]]:
    """Held-out text as blocks of ``cfg.data.eval_block_size`` tokens (at most ``cfg.data.eval_max_tokens`` in all).

    Any supported format works; SFT records contribute prompt + response. Documents are joined with EOS.
    """
    stream: list[int] = []
    limit = cfg.data.eval_max_tokens or None
    for record in read_records(path, cfg):
        if cfg.data.objective == "sft" and cfg.data.text_field not in record:
            text = "".join(sft_pair(record, cfg, where=f"{path}: "))
        else:
            text = document_text(record, cfg, where=f"{path}: ")
        stream.extend(tokenizer(text)["input_ids"] + _eos(tokenizer))
        if limit is not None and len(stream) >= limit:
            break
    stream = stream[:limit]
    blocks = [stream[s : s + cfg.data.eval_block_size] for s in range(0, len(stream), cfg.data.eval_block_size)]
    blocks = [b for b in blocks if len(b) >= 2]
    if not blocks:
        raise AnLLMError(f"the evaluation file {path} has no text")
    return blocks
