"""Each running request's anchor flags, extended as its tokens arrive instead of recomputed over the whole sequence.

Anchor flags are a function of the token ids alone (:func:`anllm.serving.vllm.visibility.anchor_flags`), and a
token's flag depends only on earlier tokens, so the flags of a prefix never change: a new token needs only the ids
since the last one seen and the run of plain tokens before them (:func:`anllm.anchors.mark_anchors` carries it).
Every use checks the stored prefix against the request's current tokens and recomputes from the start when they
differ (a preempted request recomputed, a request id reused), so the store is a pure cache: dropping any entry
changes nothing but time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from anllm.anchors import mark_anchors
from anllm.serving.export import ServedAnchor


class AnchorFlags:
    """Per request id: ``(token ids seen, their anchor flags, the forced-anchor run after them)``."""

    def __init__(self, served: ServedAnchor) -> None:
        self.served = served
        self._seen: dict[str, tuple[np.ndarray, Tensor, Tensor]] = {}

    def flags(self, req_id: str, tokens: np.ndarray) -> Tensor:
        """Bool ``(L,)``: the anchor flags of ``tokens`` (int ``(L,)``, the request's ids from its first token)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        L = tokens.shape[0]
        seen = self._seen.get(req_id)
        k = 0 if seen is None else min(seen[0].shape[0], L)
        if seen is None or not np.array_equal(seen[0][:k], tokens[:k]):
            seen, k = (tokens[:0].copy(), torch.zeros(0, dtype=torch.bool), torch.zeros(1, dtype=torch.long)), 0
        if k == L:  # a prefix of what was seen (a step that recomputes earlier tokens): its flags are unchanged
            self._seen[req_id] = seen
            return seen[1][:L]
        new = torch.from_numpy(tokens[k:].copy())[None]  # (1, L - k)
        anchor, run = mark_anchors(new, self.served.anchor_ids, max_segment=self.served.max_segment, run=seen[2])
        self._seen[req_id] = (tokens.copy(), torch.cat([seen[1], anchor[0]]), run)
        return self._seen[req_id][1]

    def retain(self, req_ids) -> None:
        """Forget requests not in ``req_ids`` (finished, aborted, or not in this step: recomputed if they return)."""
        for r in set(self._seen) - set(req_ids):
            del self._seen[r]
