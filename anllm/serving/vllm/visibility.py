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
import torch.nn.functional as F
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


def kept_mask(anchor: Tensor, n: int, served: ServedAnchor) -> Tensor:
    """Bool ``(n,)``: the entries the anchor cache holds after reading the first ``n`` tokens of a request.

    ``anchor`` is bool ``(L,)`` with ``L >= n`` (:func:`anchor_flags`: it depends only on earlier tokens). The rule of
    :meth:`anllm.policies.AnchorPolicy.keep`: anchors, the open sentence, sinks, the window.
    """
    a = anchor[:n]
    seg = segment_ids(a[None])[0]
    pos = torch.arange(n, device=anchor.device)
    keep = a | (seg == int(a.sum()))
    if served.n_sink > 0:
        keep |= pos < served.n_sink
    if served.window > 0:
        keep |= pos > n - served.window
    return keep


def kept_counts(anchor: Tensor, served: ServedAnchor) -> Tensor:
    """Long ``(L + 1,)``: entry ``b`` is how many entries the anchor cache holds after the first ``b`` tokens.

    The same count as ``kept_mask(anchor, b, served).sum()`` for every ``b`` at once (milestone 2 sizes a request's
    blocks with it): anchors, plus the plain tokens of ``[m, b)`` (the open sentence and the window, ``m`` where the
    earlier of the two starts), plus the plain sinks before ``m``.
    """
    L = anchor.shape[0]
    idx = torch.arange(L, device=anchor.device)
    n_anchors = F.pad(anchor.long().cumsum(0), (1, 0))  # (L + 1,): anchors among the first b tokens
    last = torch.where(anchor, idx, torch.full_like(idx, -1)).cummax(0).values  # (L,): last anchor at or before i
    b = torch.arange(L + 1, device=anchor.device)
    start = F.pad(last + 1, (1, 0))  # (L + 1,): the open sentence of prefix b starts here
    m = torch.minimum(start, (b - served.window + 1).clamp(min=0)) if served.window > 0 else start

    def plain(x: Tensor, y: Tensor) -> Tensor:  # non-anchor tokens in [x, y)
        return (y - x) - (n_anchors[y] - n_anchors[x])

    sinks = torch.minimum(m, torch.full_like(m, served.n_sink))
    return n_anchors + plain(m, b) + plain(torch.zeros_like(m), sinks)


def kept_after(tokens: Tensor, served: ServedAnchor) -> Tensor:
    """Bool ``(L,)``: the entries the anchor cache still holds after reading ``tokens`` (milestone 2's rows)."""
    return kept_mask(anchor_flags(tokens, served), tokens.shape[0], served)
