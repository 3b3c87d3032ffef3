"""Attention maps of a real model with and without the AnSAN mask, and their summaries (the heatmaps are
:func:`anllm.plots.attention_figure`).

Attention probabilities come from the eager attention path (``output_attentions=True``); the model is switched to
``"eager"`` for the call and back to its previous implementation afterwards, so a model loaded with SDPA can be
used as is. With the mask the pass is the one-pass AnSAN forward of :func:`anllm.verify.masked_forward` (additive
4D mask, true positions), which equals anchor-cache decoding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from anllm.config import AnLLMError
from anllm.masks import ansan_mask, to_additive, token_positions


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """Run ``model`` with ``attn_implementation="eager"`` inside the block, restoring the previous one after."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous == "eager" or previous is None:
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def attention_maps(model, input_ids: Tensor, anchor: Tensor | None = None, **rule) -> Tensor:
    """Attention probabilities of every layer and head for one sequence.

    Args:
        model: a transformers causal LM.
        input_ids: long ``(1, T)``.
        anchor: bool ``(1, T)`` anchor flags for the AnSAN mask, or None for plain causal attention.
        **rule: ``anchors_see_anchors``, ``n_sink``, ``window`` (see :func:`anllm.masks.ansan_mask`).
    Returns:
        float32 ``(L, H, T, T)`` on the CPU: row = query token, column = key token; each row sums to 1.
    Raises:
        AnLLMError: a batch of more than one sequence, or a model that returns no attentions.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise AnLLMError(f"attention_maps takes one sequence of shape (1, T), got {tuple(input_ids.shape)}")
    kwargs: dict[str, Any] = {}
    if anchor is not None:
        if anchor.shape != input_ids.shape:
            raise AnLLMError(f"anchor flags {tuple(anchor.shape)} do not match input_ids {tuple(input_ids.shape)}")
        dtype = next(model.parameters()).dtype
        kwargs["attention_mask"] = to_additive(ansan_mask(anchor.bool(), **rule), dtype)  # (1, 1, T, T)
        kwargs["position_ids"] = token_positions(torch.ones_like(anchor, dtype=torch.bool))  # (1, T)
    with torch.inference_mode(), eager_attention(model):
        out = model(input_ids=input_ids, output_attentions=True, use_cache=False, **kwargs)
    if not out.attentions or out.attentions[0] is None:
        raise AnLLMError(f"{type(model).__name__} returned no attention maps (needs the eager attention path)")
    return torch.stack([a[0].float().cpu() for a in out.attentions])  # (L, H, T, T)


def attention_mass(maps: Tensor, keys: Tensor, queries: Tensor | None = None) -> Tensor:
    """Mean attention mass that queries put on a set of keys, per layer.

    Args:
        maps: ``(L, H, T, T)`` attention probabilities.
        keys: bool ``(T, T)`` (per query) or ``(T,)`` (the same keys for every query): the keys to sum over.
        queries: bool ``(T,)``: which query rows to average over (None = all).
    Returns:
        float ``(L,)``: for each layer, the mean over heads and selected queries of the summed probability on
        ``keys``; 0 when no query is selected.
    """
    L, H, T, _ = maps.shape
    keys = keys.bool()
    if keys.dim() == 1:
        keys = keys[None, :].expand(T, T)
    if keys.shape != (T, T):
        raise AnLLMError(f"keys must be (T,) or (T, T) with T={T}, got {tuple(keys.shape)}")
    rows = torch.ones(T, dtype=torch.bool) if queries is None else queries.bool()
    if int(rows.sum()) == 0:
        return torch.zeros(L)
    mass = (maps * keys.to(maps.dtype)).sum(-1)  # (L, H, T)
    return mass[:, :, rows].mean(dim=(1, 2))  # (L,)


def blocked_by_ansan(anchor: Tensor, **rule) -> Tensor:
    """Bool ``(T, T)``: causal pairs (query, key) that the AnSAN mask forbids, for anchor flags ``(1, T)``."""
    allowed = ansan_mask(anchor.bool(), **rule)[0, 0]  # (T, T)
    T = allowed.shape[0]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=allowed.device))
    return (causal & ~allowed).cpu()
