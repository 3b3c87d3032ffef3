"""The one extension point for KV-cache policies.

A policy answers two questions about cached tokens, both as vectorised bool tensors:

* ``visible(q, k)``: may query ``q`` attend to key ``k``? (causality and padding are added by the cache);
* ``keep(meta, n_seen, n_seg)``: which stored entries must stay after a forward pass?

A policy is *exact* when it never drops an entry that a later query could see under ``visible``: then decoding
through the cache equals one forward pass with the same rule as a mask. New baselines are one small file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor


@dataclass
class TokenMeta:
    """Per-token metadata of cached (or incoming) tokens; every field is ``(B, N)``."""

    token: Tensor  # long: token id
    pos: Tensor  # long: true position (index among real tokens of the row)
    seg: Tensor  # long: segment id = anchors strictly before the token
    anchor: Tensor  # bool: the token is an anchor
    valid: Tensor  # bool: False on padding and on empty slots of a compacted row

    @property
    def n(self) -> int:
        return self.token.shape[1]

    @classmethod
    def empty(cls, batch_size: int, device: torch.device) -> TokenMeta:
        z = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        return cls(z, z, z, z.bool(), z.bool())

    def cat(self, other: TokenMeta) -> TokenMeta:
        return TokenMeta(
            **{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)], 1) for f in fields(self)}
        )

    def gather(self, index: Tensor, ok: Tensor) -> TokenMeta:
        """Select entries ``index`` ``(B, M)`` per row; slots where ``ok`` ``(B, M)`` is False become invalid."""
        out = {f.name: getattr(self, f.name).gather(1, index) for f in fields(self)}
        out["valid"] = out["valid"] & ok
        return TokenMeta(**out)


@dataclass
class EvictionPolicy:
    """Base class: keeps everything and lets every token see every earlier token (a full cache)."""

    name: ClassVar[str] = "full"
    exact: ClassVar[bool] = True  # decoding equals one masked forward with `visible` as the mask
    uses_model_causal_mask: ClassVar[bool] = False  # True: a 2D padding mask suffices (the model builds causality)

    def visible(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        """Bool ``(B, Q, K)``: the policy's attention rule (causality and padding are added by the caller)."""
        return torch.ones(q.token.shape[0], q.n, k.n, dtype=torch.bool, device=q.token.device)

    def keep(self, meta: TokenMeta, n_seen: Tensor, n_seg: Tensor) -> Tensor | None:
        """Bool ``(B, K)`` of stored entries to keep after a forward pass, or None to keep all.

        Args:
            meta: the stored entries, the ones just computed included.
            n_seen: long ``(B,)``, real tokens seen so far = the true position of the next token.
            n_seg: long ``(B,)``, anchors seen so far = the segment id of the next token.
        """
        return None
