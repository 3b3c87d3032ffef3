"""StreamingLLM (Xiao et al., ICLR 2024): attention sinks plus a sliding window of recent tokens.

Written from the paper's description (arXiv 2309.17453 §3.2): the first ``n_sink`` tokens stay forever, the rest of the
cache is the ``window`` most recent tokens. Positions follow the cache's position policy (true positions by
default: no key re-rotation, which matters only beyond the model's trained length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from anllm.config import AnLLMError
from anllm.policies.base import EvictionPolicy, TokenMeta


@dataclass
class StreamingPolicy(EvictionPolicy):
    """Keep the first ``n_sink`` tokens and the ``window - 1`` most recent ones: ``n_sink + window - 1`` entries.

    Rule: a token sees the sinks and the ``window`` most recent tokens, itself included (``window`` means the same
    for every policy: the span of the local window, as in transformers' sliding-window attention). Exact: an entry
    leaves the cache only when no later token can see it, so chunked decoding equals one pass with :meth:`visible`
    as the mask.
    """

    n_sink: int = 4  # attention-sink tokens kept forever (StreamingLLM uses 4)
    window: int = 253  # a token sees the `window` most recent tokens, itself included; budget = n_sink + window - 1
    name: ClassVar[str] = "streaming"

    def __post_init__(self) -> None:
        if self.n_sink < 0:
            raise AnLLMError(f"StreamingPolicy.n_sink must be >= 0, got {self.n_sink}")
        if self.window < 1:
            raise AnLLMError(
                f"StreamingPolicy.window must be >= 1 (a KV budget of zero keeps nothing), got {self.window}"
            )

    @property
    def budget(self) -> int:
        """Entries held between forward passes once the text is longer than the budget."""
        return self.n_sink + self.window - 1

    def visible(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        sink = k.pos[:, None, :] < self.n_sink  # (B, 1, K)
        recent = q.pos[:, :, None] - k.pos[:, None, :] < self.window  # (B, Q, K)
        return sink | recent  # (B, Q, K)

    def keep(self, meta: TokenMeta, n_seen: Tensor, n_seg: Tensor) -> Tensor:
        # the next token (position n_seen) sees positions > n_seen - window
        return ((meta.pos < self.n_sink) | (meta.pos > n_seen[:, None] - self.window)) & meta.valid  # (B, K)
