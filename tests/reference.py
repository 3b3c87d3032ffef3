"""Brute-force references, written from arXiv 2402.07616 §3.2 (Eq. 4) and the README's rule, independently of
anllm.masks (loops, no vectorising)."""

import torch


def forced_anchor_flags(tokens, anchor_ids, max_segment, valid=None):
    """Anchor flag per token, one token at a time: an anchor id, or the max_segment-th token since the last anchor
    (padding is skipped and never an anchor)."""
    flags, since = [], 0
    for i, t in enumerate(tokens):
        if valid is not None and not valid[i]:
            flags.append(False)
            continue
        since += 1
        hit = int(t) in anchor_ids or (max_segment > 0 and since == max_segment)
        flags.append(hit)
        since = 0 if hit else since
    return flags


def official_mask(
    ids, anchor_ids, pad_id=None, valid=None, anchors_see_anchors=False, n_sink=0, window=0, max_segment=0
):
    """The official code's procedure, one row at a time: start causal, then for each anchor a_k in order block
    the non-anchor members of segment k for every later row and (unless anchors_see_anchors) block earlier
    anchors for row a_k; padding columns are blocked, padding rows see only themselves.
    Sinks / window (ablations) are added on top, counted in real (non-pad) positions; max_segment adds forced
    anchors (forced_anchor_flags)."""
    B, T = ids.shape
    out = torch.zeros(B, 1, T, T, dtype=torch.bool)
    for b in range(B):
        is_pad = [
            not bool(valid[b, i]) if valid is not None else (pad_id is not None and int(ids[b, i]) == pad_id)
            for i in range(T)
        ]
        allowed = [[k <= q for k in range(T)] for q in range(T)]
        flags = forced_anchor_flags(ids[b].tolist(), anchor_ids, max_segment, [not p for p in is_pad])
        anchors = [i for i in range(T) if flags[i]]
        prev = -1
        for k_idx, a in enumerate(anchors):
            for q in range(a + 1, T):
                for key in range(prev + 1, a):
                    allowed[q][key] = False
            if not anchors_see_anchors:
                for earlier in anchors[:k_idx]:
                    allowed[a][earlier] = False
            prev = a
        pos, p = [], 0
        for i in range(T):
            pos.append(p)
            p += 0 if is_pad[i] else 1
        for q in range(T):
            for key in range(q + 1):
                if n_sink and pos[key] < n_sink and not is_pad[key]:
                    allowed[q][key] = True
                if window and pos[q] - pos[key] < window:
                    allowed[q][key] = True
        for q in range(T):
            for key in range(T):
                if is_pad[key]:
                    allowed[q][key] = False
            if is_pad[q]:
                allowed[q] = [key == q for key in range(T)]
        out[b, 0] = torch.tensor(allowed)
    return out


def expected_kept(tokens, anchor_ids):
    """Positions an anchor cache must hold after `tokens`: every anchor plus everything after the last anchor."""
    last = max((i for i, t in enumerate(tokens) if t in anchor_ids), default=-1)
    return [i for i, t in enumerate(tokens) if t in anchor_ids or i > last]
