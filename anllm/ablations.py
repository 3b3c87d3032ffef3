"""Ablation runs: perplexity by real cache decoding for a list of anchor-rule / cache-policy variants, and figures.

A :class:`Variant` names a cache mode (``"full"``, ``"anchor"``, ``"streaming:budget=64"``, ...) and the changes
to the model's :class:`~anllm.config.AnchorConfig` it runs under (EP vs AC, ``anchors_see_anchors``, ``n_sink``,
``window``, ``position_policy``). :func:`run_variants` scores the same text under each one with
:func:`anllm.evaluation.perplexity`, so every number is what decoding through that cache gives.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go

from anllm.anchors import resolve_anchor_ids
from anllm.config import AC_TOKEN, AnLLMError
from anllm.evaluation.ppl import encode_text, perplexity
from anllm.models import LoadedModel
from anllm.progress import progress_bar

_RESOLVE_KEYS = ("mode", "anchor_chars", "anchor_ids")
_PALETTE = ("#ea580c", "#2563eb", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#64748b")


@dataclass(frozen=True)
class Variant:
    """One ablation setting.

    Attributes:
        name: label in tables and figures.
        mode: cache mode or policy spec, e.g. ``"anchor"``, ``"full"``, ``"sepllm:budget=64"``.
        anchor: changes to the model's ``AnchorConfig`` (e.g. ``{"mode": "ac"}``, ``{"n_sink": 4}``).
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

    The copy shares the model and tokenizer, except when it switches to ``mode="ac"`` on a model without ``<AC>``:
    then model and tokenizer are deep-copied before ``<AC>`` is added (embedding and LM-head rows copied from
    ``"."``). Adding it in place would change every later EP score, because the new LM-head row competes with
    ``"."`` in the softmax. When the anchor identity changes (``mode``, ``anchor_chars``, ``anchor_ids``) the
    anchor ids are resolved again.
    """
    if not changes:
        return lm
    resolve = any(k in changes for k in _RESOLVE_KEYS)
    base = lm.anchor.replace(anchor_ids=None) if resolve and "anchor_ids" not in changes else lm.anchor
    cfg = base.replace(**changes)
    model, tokenizer = lm.model, lm.tokenizer
    if resolve and cfg.mode == "ac" and cfg.anchor_ids is None and not _has_ac(lm):
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
        changes = dict(v.anchor)
        base = lm
        if changes.get("mode") == "ac" and lm.anchor.mode != "ac" and "anchor_ids" not in changes:
            ac_base = ac_base or with_anchor(lm, mode="ac")
            base = ac_base
            changes.pop("mode")
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


def ablation_figure(
    rows: Sequence[AblationRow], *, title: str = "Perplexity per variant (real cache decoding)", height: int = 380
) -> go.Figure:
    """Bars of perplexity per variant (log scale) with the mean KV kept printed on each bar."""
    if not rows:
        raise AnLLMError("ablation_figure needs at least one row")
    groups = list(dict.fromkeys(r.group for r in rows))
    fig = go.Figure()
    for i, g in enumerate(groups):
        sel = [r for r in rows if r.group == g]
        fig.add_trace(
            go.Bar(
                x=[r.name for r in sel],
                y=[round(r.ppl, 3) for r in sel],
                name=g or "variant",
                marker_color=_PALETTE[i % len(_PALETTE)],
                text=[f"{r.ppl:.1f}<br>KV {100 * r.kv_kept_mean_frac:.0f}%" for r in sel],
                textposition="outside",
                hovertemplate="%{x}: perplexity %{y:.2f}<extra></extra>",
            )
        )
    top = max(r.ppl for r in rows)
    fig.update_layout(
        title={"text": title, "x": 0.01},
        height=height,
        template="plotly_white",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    fig.update_xaxes(title_text="variant")
    low = min(r.ppl for r in rows)
    fig.update_yaxes(
        title_text="perplexity (log scale, lower is better)",
        type="log",
        range=[math.log10(max(low, 1.0)) - 0.1, math.log10(top) + 0.35],
    )
    return fig


def budget_figure(
    rows: Sequence[AblationRow],
    *,
    title: str = "KV budget vs perplexity",
    height: int = 420,
    reference: AblationRow | None = None,
) -> go.Figure:
    """Perplexity against the mean fraction of KV entries kept, one curve per group.

    Args:
        rows: variants with a ``group`` each (e.g. ``"anchor"``, ``"streaming"``, ``"sepllm"``).
        reference: drawn as a horizontal dashed line (typically the full cache).
    """
    if not rows:
        raise AnLLMError("budget_figure needs at least one row")
    fig = go.Figure()
    for i, g in enumerate(dict.fromkeys(r.group for r in rows)):
        sel = sorted((r for r in rows if r.group == g), key=lambda r: r.kv_kept_mean_frac)
        fig.add_trace(
            go.Scatter(
                x=[round(100 * r.kv_kept_mean_frac, 2) for r in sel],
                y=[round(r.ppl, 3) for r in sel],
                mode="lines+markers",
                name=g or "variant",
                line={"color": _PALETTE[i % len(_PALETTE)], "width": 2.5},
                customdata=[r.name for r in sel],
                hovertemplate="%{customdata}<br>KV kept %{x:.1f}%<br>perplexity %{y:.2f}<extra></extra>",
            )
        )
    if reference is not None:
        fig.add_hline(
            y=reference.ppl,
            line_dash="dash",
            line_color="#64748b",
            annotation_text=f"{reference.name}: {reference.ppl:.1f}",
            annotation_position="top left",
        )
    fig.update_layout(
        title={"text": title, "x": 0.01},
        height=height,
        template="plotly_white",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    fig.update_xaxes(title_text="KV entries kept (% of tokens seen, mean over chunks)", rangemode="tozero")
    fig.update_yaxes(title_text="perplexity (log scale, lower is better)", type="log")
    return fig
