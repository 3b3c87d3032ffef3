"""AnSAN attention masks as pure, vectorised tensor functions (no Python loop over tokens or anchors).

The rule (the official code's form of arXiv 2402.07616 §3.2, Eq. 4; README "Exactness"): with ``seg`` the number
of anchors strictly before a token,

    allowed(q, k) = pos[k] <= pos[q]  and  valid[k]  and  (seg[k] == seg[q]  or  (anchor[k] and not anchor[q]))

Options for ablations widen it: ``anchors_see_anchors`` (anchor queries also see earlier anchors), ``n_sink``
(the first tokens stay visible), ``window`` (each token also sees its ``window - 1`` predecessors).
Padding rows (``valid[q]`` False) see only themselves, so no row is ever fully masked and no kernel makes NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_positions(valid: Tensor, start: Tensor | int = 0) -> Tensor:
    """True positions: index among valid tokens, offset by ``start`` (per row); padding gets an arbitrary one.

    Args:
        valid: bool ``(B, T)``, False on padding.
        start: long ``(B,)`` or int, position of the first valid token of each row.
    Returns:
        long ``(B, T)``.
    """
    pos = valid.long().cumsum(-1) - 1  # (B, T)
    start = torch.as_tensor(start, device=valid.device).reshape(-1, 1)
    return (pos + start).clamp_min(0)


def segment_ids(is_anchor: Tensor, valid: Tensor | None = None, start: Tensor | int = 0) -> Tensor:
    """Segment (sentence) id per token: ``start`` + number of anchors strictly before it.

    Args:
        is_anchor: bool ``(B, T)``.
        valid: bool ``(B, T)`` or None; padding tokens are never anchors.
        start: long ``(B,)`` or int, anchors seen before this chunk.
    Returns:
        long ``(B, T)``; an anchor carries the id of the segment it closes.
    """
    a = is_anchor if valid is None else is_anchor & valid
    a = a.long()
    start = torch.as_tensor(start, device=is_anchor.device).reshape(-1, 1)
    return a.cumsum(-1) - a + start


def ansan_visible(
    q_pos: Tensor,
    q_seg: Tensor,
    q_anchor: Tensor,
    k_pos: Tensor,
    k_seg: Tensor,
    k_anchor: Tensor,
    *,
    anchors_see_anchors: bool = False,
    n_sink: int = 0,
    window: int = 0,
) -> Tensor:
    """The AnSAN rule without causality or padding, broadcast over any shapes.

    Typically ``q_*`` are ``(B, Q, 1)`` and ``k_*`` are ``(B, 1, K)``, giving bool ``(B, Q, K)``.
    """
    see_anchor = k_anchor if anchors_see_anchors else k_anchor & ~q_anchor
    vis = (k_seg == q_seg) | see_anchor
    if n_sink > 0:
        vis = vis | (k_pos < n_sink)
    if window > 0:
        vis = vis | (q_pos - k_pos < window)
    return vis


def combine(visible: Tensor, q_pos: Tensor, q_valid: Tensor, k_pos: Tensor, k_valid: Tensor, q_offset: int) -> Tensor:
    """Add causality and padding to a ``(B, Q, K)`` visibility tensor; return the bool ``(B, 1, Q, K)`` mask.

    ``q_offset`` is the key index of the first query (the cache length in chunked decoding, 0 for one pass):
    query ``i`` is key ``q_offset + i``, which is what a padding row attends to.
    """
    B, Q = q_pos.shape
    K = k_pos.shape[1]
    mask = visible & (k_pos[:, None, :] <= q_pos[:, :, None]) & k_valid[:, None, :]  # (B, Q, K)
    own = torch.arange(K, device=q_pos.device)[None, :] == (torch.arange(Q, device=q_pos.device)[:, None] + q_offset)
    mask = torch.where(q_valid[:, :, None], mask, own[None])  # padding rows see only themselves
    return mask[:, None]  # (B, 1, Q, K)


def _row_meta(is_anchor: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(valid, pos, seg, anchor)``, each ``(B, T)``, for a batch read in one pass."""
    valid = torch.ones_like(is_anchor) if attention_mask is None else attention_mask.bool()
    return valid, token_positions(valid), segment_ids(is_anchor, valid), is_anchor & valid


def ansan_mask(
    is_anchor: Tensor,
    attention_mask: Tensor | None = None,
    *,
    anchors_see_anchors: bool = False,
    n_sink: int = 0,
    window: int = 0,
) -> Tensor:
    """The one-pass AnSAN mask of a (padded) batch, as used for training and for the exactness reference.

    Args:
        is_anchor: bool ``(B, T)``.
        attention_mask: ``(B, T)`` with 1 on real tokens, 0 on padding (left or right), or None.
    Returns:
        bool ``(B, 1, T, T)``, True = may attend.
    """
    valid, pos, seg, anchor = _row_meta(is_anchor, attention_mask)  # (B, T) each
    q = (pos[:, :, None], seg[:, :, None], anchor[:, :, None])
    k = (pos[:, None, :], seg[:, None, :], anchor[:, None, :])
    rule = dict(anchors_see_anchors=anchors_see_anchors, n_sink=n_sink, window=window)
    vis = ansan_visible(*q, *k, **rule)  # (B, T, T)
    return combine(vis, pos, valid, pos, valid, q_offset=0)


def to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask (True = attend) -> additive float mask (0 attend, dtype-min blocked)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def ansan_mask_mod(is_anchor: Tensor, attention_mask: Tensor | None = None, **rule):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` for the same rule as :func:`ansan_mask`.

    ``rule`` takes the same options (``anchors_see_anchors``, ``n_sink``, ``window``). Only ``(B, T)`` metadata is
    captured, so no ``T x T`` tensor is built; pair it with :func:`ansan_block_mask` for long sequences on GPU.
    """
    valid, pos, seg, anchor = _row_meta(is_anchor, attention_mask)

    def mask_mod(b, h, q_idx, kv_idx):
        qp, kp = pos[b, q_idx], pos[b, kv_idx]
        vis = ansan_visible(qp, seg[b, q_idx], anchor[b, q_idx], kp, seg[b, kv_idx], anchor[b, kv_idx], **rule)
        return torch.where(valid[b, q_idx], vis & (kp <= qp) & valid[b, kv_idx], q_idx == kv_idx)

    return mask_mod


def ansan_block_mask(is_anchor: Tensor, attention_mask: Tensor | None = None, *, block_size: int = 128, **rule):
    """A FlexAttention ``BlockMask`` for :func:`ansan_mask_mod` (``(B, 1, T, T)`` logical shape)."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = is_anchor.shape
    mod = ansan_mask_mod(is_anchor, attention_mask, **rule)
    return create_block_mask(mod, B, None, T, T, device=is_anchor.device, BLOCK_SIZE=block_size)
