"""Ablation runs: perplexity by real cache decoding for a list of anchor-rule / cache-policy variants.

A :class:`Variant` names a cache mode (``"full"``, ``"anchor"``, ``"streaming:budget=64"``, ...) and the changes
to the model's :class:`~anllm.config.AnchorConfig` it runs under (EP vs AC, ``anchors_see_anchors``, ``n_sink``,
``window``, ``position_policy``). :func:`run_variants` scores the same text under each one with
:func:`anllm.evaluation.perplexity`, so every number is what decoding through that cache gives. Their figures are
:func:`anllm.plots.ablation_figure` and :func:`anllm.plots.budget_figure`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anllm.anchors import resolve_anchor_ids
from anllm.config import AC_TOKEN, AnLLMError, canonical_anchor_fields
from anllm.evaluation.ppl import encode_text, perplexity
from anllm.models import LoadedModel
from anllm.progress import progress_bar

_RESOLVE_KEYS = ("kind", "anchor_chars", "anchor_ids")


@dataclass(frozen=True)
class Variant:
    """One ablation setting.

    Attributes:
        name: label in tables and figures.
        mode: cache mode or policy spec, e.g. ``"anchor"``, ``"full"``, ``"sepllm:budget=64"``.
        anchor: changes to the model's ``AnchorConfig`` (e.g. ``{"kind": "ac"}``, ``{"n_sink": 4}``).
        group: which family the variant belongs to (figure colour / curve).
    """

    name: str
    mode: str = "anchor"
    anchor: Mapping[str, Any] = field(default_factory=dict)
    group: str = ""


@dataclass
class AblationRow:
    """The result of one :class:`Variant` on one text."""

    name: str
    group: str
    mode: str
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # tokens scored (AC variants include the inserted <AC> tokens)
    kv_kept_mean_frac: float  # mean over chunks of entries stored / tokens seen
    kv_kept_end: int  # entries stored after the text
    kv_kept_end_frac: float  # kv_kept_end / tokens
    seconds: float
    anchor: dict[str, Any] = field(default_factory=dict)  # the variant's changes to the model's AnchorConfig

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _has_ac(lm: LoadedModel) -> bool:
    ac_id = lm.tokenizer.get_vocab().get(AC_TOKEN)
    return ac_id is not None and ac_id < lm.model.get_input_embeddings().weight.shape[0]


def with_anchor(lm: LoadedModel, **changes: Any) -> LoadedModel:
    """A copy of ``lm`` whose anchor config has ``changes`` applied; ``lm`` itself is never modified.

    The copy shares the model and tokenizer, except when it switches to ``kind="ac"`` on a model without ``<AC>``:
    then model and tokenizer are deep-copied before ``<AC>`` is added (embedding and LM-head rows copied from
    ``"."``). Adding it in place would change every later EP score, because the new LM-head row competes with
    ``"."`` in the softmax. When the anchor identity changes (``kind``, ``anchor_chars``, ``anchor_ids``) the
    anchor ids are resolved again.
    """
    changes = canonical_anchor_fields(changes)
    if not changes:
        return lm
    resolve = any(k in changes for k in _RESOLVE_KEYS)
    base = lm.anchor.replace(anchor_ids=None) if resolve and "anchor_ids" not in changes else lm.anchor
    cfg = base.replace(**changes)
    model, tokenizer = lm.model, lm.tokenizer
    if resolve and cfg.kind == "ac" and cfg.anchor_ids is None and not _has_ac(lm):
        model, tokenizer = copy.deepcopy(model), copy.deepcopy(tokenizer)
    ids = resolve_anchor_ids(cfg, tokenizer, model) if resolve else lm.anchor_ids
    return dataclasses.replace(
        lm, model=model, tokenizer=tokenizer, anchor=cfg, anchor_ids=tuple(ids), notes=list(lm.notes)
    )


def run_variants(
    lm: LoadedModel,
    text: str,
    variants: Sequence[Variant],
    *,
    max_tokens: int | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> list[AblationRow]:
    """Perplexity of ``text`` under every variant, by decoding through that variant's cache.

    Args:
        lm: the model; each variant runs on :func:`with_anchor` of it.
        text: the text to score (``<AC>`` is inserted for AC variants).
        max_tokens: score only the first ``max_tokens`` tokens of each variant's encoding.
        chunk_size: tokens per forward pass (eviction happens between passes; default: the model's chunk size).
        progress: a bar on stderr, one step per variant.
    Returns:
        one :class:`AblationRow` per variant, in order.
    Raises:
        AnLLMError: no variants, duplicate names, or a bad mode / anchor setting (named).
    """
    if not variants:
        raise AnLLMError("run_variants needs at least one variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise AnLLMError(f"variant names must be unique, got {names}")
    rows = []
    ac_base: LoadedModel | None = None  # one <AC> copy of the model, shared by every AC variant
    for v in progress_bar(variants, desc="ablations", unit="variant", enabled=progress):
        changes = canonical_anchor_fields(v.anchor)
        base = lm
        if changes.get("kind") == "ac" and lm.anchor.kind != "ac" and "anchor_ids" not in changes:
            ac_base = ac_base or with_anchor(lm, kind="ac")
            base = ac_base
            changes.pop("kind")
        lmv = with_anchor(base, **changes)
        ids = encode_text(lmv, text, max_tokens)
        r = perplexity(lmv, ids, lmv.policy(v.mode), chunk_size=chunk_size)
        rows.append(
            AblationRow(
                name=v.name,
                group=v.group,
                mode=v.mode,
                ppl=r.ppl,
                nll=r.nll,
                tokens=r.tokens,
                kv_kept_mean_frac=r.kv_kept_mean_frac,
                kv_kept_end=r.kv_kept_end,
                kv_kept_end_frac=r.kv_kept_frac,
                seconds=r.seconds,
                anchor=dict(v.anchor),
            )
        )
    return rows


def by_name(rows: Sequence[AblationRow]) -> dict[str, AblationRow]:
    """Rows keyed by variant name."""
    return {r.name: r for r in rows}
