"""AnSAN anchor policy: after an anchor, the other tokens of its sentence leave the cache (arXiv 2402.07616 §3.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from anllm.config import AnchorConfig, AnLLMError
from anllm.masks import ansan_visible
from anllm.policies.base import EvictionPolicy, TokenMeta


@dataclass
class AnchorPolicy(EvictionPolicy):
    """Keep all anchors plus the tokens of the open sentence (plus sinks / window when those options are on).

    Exact: an entry is dropped only when no later query can see it under the AnSAN rule.
    """

    anchors_see_anchors: bool = False
    n_sink: int = 0
    window: int = 0
    name: ClassVar[str] = "anchor"

    def __post_init__(self) -> None:
        if self.n_sink < 0 or self.window < 0:
            raise AnLLMError(f"AnchorPolicy: n_sink and window must be >= 0, got {self.n_sink}, {self.window}")

    @classmethod
    def from_config(cls, cfg: AnchorConfig) -> AnchorPolicy:
        return cls(anchors_see_anchors=cfg.anchors_see_anchors, n_sink=cfg.n_sink, window=cfg.window)

    def visible(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        return ansan_visible(
            q.pos[:, :, None],
            q.seg[:, :, None],
            q.anchor[:, :, None],
            k.pos[:, None, :],
            k.seg[:, None, :],
            k.anchor[:, None, :],
            anchors_see_anchors=self.anchors_see_anchors,
            n_sink=self.n_sink,
            window=self.window,
        )  # (B, Q, K)

    def keep(self, meta: TokenMeta, n_seen: Tensor, n_seg: Tensor) -> Tensor:
        keep = meta.anchor | (meta.seg == n_seg[:, None])  # anchors + the open sentence
        if self.n_sink > 0:
            keep = keep | (meta.pos < self.n_sink)
        if self.window > 0:
            keep = keep | (meta.pos > n_seen[:, None] - self.window)  # still inside a future query's window
        return keep & meta.valid
