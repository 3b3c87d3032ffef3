"""What each query of a vLLM step may see under the anchor cache's rule, per request (pure torch, no vLLM import).

The rule is anllm's (arXiv 2402.07616 §3.2 and docs/exactness.md, as :class:`anllm.policies.AnchorPolicy` applies
it): anchors are the served anchor ids plus a forced anchor after ``max_segment`` tokens without one
(:func:`anllm.anchors.mark_anchors`), a token's segment is the number of anchors strictly before it, and query ``q``
sees key ``k`` when ``pos[k] <= pos[q]`` and (same segment, or ``k`` an anchor and ``q`` not - or any anchor with
``anchors_see_anchors``, or ``k`` a sink, or ``k`` inside ``q``'s window). Positions are "true" positions (every
token counts), which are vLLM's own positions.

Anchor flags depend only on the token sequence (forced anchors count from the start of the request), so they are
recomputed from the request's token ids each step: the same for any chunking of the prefill.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anllm.anchors import mark_anchors
from anllm.masks import ansan_visible, segment_ids
from anllm.serving.export import ServedAnchor


def anchor_flags(tokens: Tensor, served: ServedAnchor) -> Tensor:
    """Bool ``(L,)``: which of a request's tokens ``(L,)`` are anchors (forced anchors included)."""
    anchor, _ = mark_anchors(tokens[None], served.anchor_ids, max_segment=served.max_segment)
    return anchor[0]


def request_visibility(tokens: Tensor, n_computed: int, served: ServedAnchor) -> Tensor:
    """Bool ``(Q, L)``: may the step's query ``i`` (token ``n_computed + i``) see token ``j`` of the request.

    Args:
        tokens: long ``(L,)``, the request's token ids up to and including this step's last query
            (``L = n_computed + Q``).
        n_computed: tokens whose K/V are already in the cache before this step.
    """
    L = tokens.shape[0]
    anchor = anchor_flags(tokens, served)
    seg = segment_ids(anchor[None])[0]
    pos = torch.arange(L, device=tokens.device)
    q = slice(n_computed, L)
    vis = ansan_visible(
        pos[q, None], seg[q, None], anchor[q, None], pos[None, :], seg[None, :], anchor[None, :],
        anchors_see_anchors=served.anchors_see_anchors, n_sink=served.n_sink, window=served.window,
    )  # fmt: skip
    return vis & (pos[None, :] <= pos[q, None])


def kept_after(tokens: Tensor, served: ServedAnchor) -> Tensor:
    """Bool ``(L,)``: the entries the anchor cache still holds after reading ``tokens`` (milestone 2's rows).

    The same rule as :meth:`anllm.policies.AnchorPolicy.keep`: anchors, the open sentence, sinks, the window.
    """
    L = tokens.shape[0]
    anchor = anchor_flags(tokens, served)
    seg = segment_ids(anchor[None])[0]
    n_seg = int(anchor.sum())
    pos = torch.arange(L, device=tokens.device)
    keep = anchor | (seg == n_seg)
    if served.n_sink > 0:
        keep |= pos < served.n_sink
    if served.window > 0:
        keep |= pos > L - served.window
    return keep
