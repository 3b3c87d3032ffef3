"""The mask explorer's computation: a text's tokens and anchors, its AnSAN and causal masks, and the KV-drop
schedule of the anchor cache (arXiv 2402.07616 §3), as plain arrays.

The app's "Mask explorer" tab (:mod:`anllm.ui.explorer_tab`) and the notebooks call :func:`explore_masks`; the figures
of a :class:`MaskView` are :func:`anllm.plots.mask_figure` and :func:`anllm.plots.schedule_figure`. No model is run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anllm.anchors import ep_anchor_ids, insert_ac
from anllm.cache import PolicyCache
from anllm.config import AC_TOKEN, AnLLMError
from anllm.masks import ansan_mask
from anllm.models import LoadedModel
from anllm.policies import AnchorPolicy

EXPLORER_MAX_TOKENS = 160


@dataclass
class MaskView:
    """Tokens of a text with their anchors, the AnSAN and causal masks, and the KV-drop schedule."""

    token_ids: list[int]
    labels: list[str]
    anchors: list[bool]
    ansan: np.ndarray  # bool (T, T)
    causal: np.ndarray  # bool (T, T)
    schedule: np.ndarray  # float (T, T): 1 kept, 0 evicted, NaN not seen yet
    truncated: bool = False


def tokenize_for_masks(
    lm: LoadedModel, text: str, kind: str = "ep", max_tokens: int = EXPLORER_MAX_TOKENS
) -> tuple[list[int], list[str], tuple[int, ...], bool]:
    """Token ids, token texts and anchor ids of ``text`` (no chat template) under EP or AC anchors.

    In AC mode ``<AC>`` is inserted after each sentence; when the tokenizer has no ``<AC>`` token yet a
    placeholder id outside the vocabulary stands for it (the explorer never runs the model, and the loaded
    model is left unchanged). Returns ``(ids, labels, anchor_ids, truncated)``.
    """
    if not isinstance(text, str) or not text.strip():
        raise AnLLMError("the text is empty: type a few sentences to see their tokens and masks")
    tok = lm.tokenizer
    kind = (kind or "ep").lower()
    if kind not in ("ep", "ac"):
        raise AnLLMError(f"anchor kind must be EP or AC, got {kind!r}")
    if kind == "ep":
        anchor_ids = lm.anchor_ids if lm.anchor.kind == "ep" else ep_anchor_ids(tok, lm.anchor.anchor_chars)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
    else:
        ac_id = tok.get_vocab().get(AC_TOKEN, max(len(tok), lm.model.config.vocab_size))
        anchor_ids = (ac_id,)
        ids = []
        pieces = insert_ac(text).split(AC_TOKEN)
        for j, piece in enumerate(pieces):
            if piece:
                ids += tok(piece, add_special_tokens=False)["input_ids"]
            if j < len(pieces) - 1:
                ids.append(ac_id)
    truncated = len(ids) > max_tokens
    ids = ids[:max_tokens]
    labels = [AC_TOKEN if (kind == "ac" and i == anchor_ids[0]) else tok.decode([i]) for i in ids]
    return ids, labels, tuple(anchor_ids), truncated


def kv_drop_schedule(
    config: Any, token_ids: Sequence[int], anchor_ids: Sequence[int], policy: AnchorPolicy
) -> np.ndarray:
    """Which tokens a policy cache holds after each token is fed, one token per step (no model is run).

    Uses :class:`anllm.cache.PolicyCache` itself (``prepare`` + ``evict``), so the schedule is the cache's own.

    Args:
        config: the model config (gives the cache its layers; no K/V is stored).
        token_ids: the sequence, fed one token at a time.
        anchor_ids: ids that are anchors.
        policy: e.g. ``AnchorPolicy(n_sink=4)``.
    Returns:
        float ``(T, T)``: row ``t`` after feeding token ``t``; 1 kept, 0 evicted, NaN not seen yet.
    """
    T = len(token_ids)
    out = np.full((T, T), np.nan)
    cache = PolicyCache(config, policy, tuple(anchor_ids))
    for t, token in enumerate(token_ids):
        cache.prepare(torch.tensor([[int(token)]]))
        cache.evict()
        out[t, : t + 1] = 0.0
        kept = cache.meta.pos[0][cache.meta.valid[0]].tolist()
        out[t, kept] = 1.0
    return out


def explore_masks(
    lm: LoadedModel,
    text: str,
    kind: str = "ep",
    *,
    n_sink: int = 0,
    window: int = 0,
    anchors_see_anchors: bool = False,
    max_tokens: int = EXPLORER_MAX_TOKENS,
) -> MaskView:
    """Tokenise ``text`` and compute its AnSAN mask, the causal mask and the anchor cache's KV-drop schedule.

    Raises:
        AnLLMError: an empty text, an anchor kind other than EP / AC, or a rule :class:`AnchorPolicy` rejects.
    """
    policy = AnchorPolicy(anchors_see_anchors=bool(anchors_see_anchors), n_sink=n_sink, window=window)
    ids, labels, anchor_ids, truncated = tokenize_for_masks(lm, text, kind, max_tokens)
    t = torch.tensor([ids])
    is_anc = torch.isin(t, torch.tensor(anchor_ids))
    ansan = ansan_mask(is_anc, anchors_see_anchors=policy.anchors_see_anchors, n_sink=n_sink, window=window)
    T = len(ids)
    return MaskView(
        token_ids=ids,
        labels=labels,
        anchors=is_anc[0].tolist(),
        ansan=ansan[0, 0].numpy(),
        causal=np.tril(np.ones((T, T), dtype=bool)),
        schedule=kv_drop_schedule(lm.model.config, ids, anchor_ids, policy),
        truncated=truncated,
    )


def mask_summary(view: MaskView) -> str:
    """One line: tokens, anchors, visible pairs and what the cache keeps at the end."""
    T = len(view.token_ids)
    kept = int(np.nansum(view.schedule[-1])) if T else 0
    peak = int(np.nanmax(np.nansum(view.schedule, axis=1))) if T else 0
    line = (
        f"{T} tokens, {sum(view.anchors)} anchors · AnSAN allows {int(view.ansan.sum())} of "
        f"{int(view.causal.sum())} causal pairs · the anchor cache holds {kept} of {T} entries at the end "
        f"(peak {peak})"
    )
    if view.truncated:
        line += f" · showing the first {T} tokens only"
    return line
