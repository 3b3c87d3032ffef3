"""SepLLM-style policy (Chen et al., ICML 2025): sinks + every separator token + a window of recent tokens.

Written from the paper's description (arXiv 2412.12094): separators are punctuation (``. , ? ! ; :``) and
whitespace tokens (space, tab, newline); they are resolved from the tokenizer, so the policy works with any
vocabulary. No cap on the number of separators: the cache grows by one entry per separator (SepLLM's streaming
``SepCache`` adds a cap; this training-free baseline keeps them all, which is the paper's basic setting).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from anllm.anchors import matching_token_ids
from anllm.config import AnLLMError
from anllm.policies.base import EvictionPolicy, TokenMeta

SEPARATOR_CHARS = ".,?!;:"


def separator_ids(tokenizer, chars: str = SEPARATOR_CHARS) -> tuple[int, ...]:
    """Ids of tokens that are separators: punctuation containing one of ``chars``, or whitespace only.

    ``"."``, ``" ,"``, ``".\\n"``, ``"?!"``, ``"\\n"``, ``" "`` and ``"\\t"`` match; words and ``"Mr."`` do not.
    """
    punct = re.compile(rf"[^\w\s]*[{re.escape(chars)}][^\w\s]*")
    ids = matching_token_ids(
        tokenizer,
        ("separator", chars),
        lambda t: bool(t) and (t.strip() == "" or punct.fullmatch(t.strip()) is not None),
    )
    if not ids:
        raise AnLLMError(f"no token of this tokenizer is a separator ({chars!r} or whitespace)")
    return ids


@dataclass
class SepLLMPolicy(EvictionPolicy):
    """Keep ``n_sink`` first tokens, every separator and the ``window - 1`` most recent tokens.

    Rule: a token sees the sinks, all earlier separators and the ``window`` most recent tokens, itself included
    (the same ``window`` as every policy). Exact like :class:`StreamingPolicy`. Entries held = ``n_sink + window - 1``
    + separators older than the window.
    """

    n_sink: int = 4  # initial tokens kept forever
    window: int = 65  # a token sees the `window` most recent tokens, itself included (64 entries held)
    separator_ids: tuple[int, ...] = ()  # resolved from the tokenizer by `from_model`
    name: ClassVar[str] = "sepllm"

    def __post_init__(self) -> None:
        if self.n_sink < 0:
            raise AnLLMError(f"SepLLMPolicy.n_sink must be >= 0, got {self.n_sink}")
        if self.window < 1:
            raise AnLLMError(f"SepLLMPolicy.window must be >= 1 (a KV budget of zero keeps nothing), got {self.window}")
        self.separator_ids = tuple(int(i) for i in self.separator_ids)
        if not self.separator_ids:
            raise AnLLMError("SepLLMPolicy.separator_ids is empty: build it with SepLLMPolicy.from_model(lm, ...)")

    @classmethod
    def from_model(cls, lm, **params) -> SepLLMPolicy:
        """The policy with separators resolved from ``lm.tokenizer``."""
        return cls(separator_ids=separator_ids(lm.tokenizer), **params)

    def is_separator(self, token: Tensor) -> Tensor:
        """Bool of ``token``'s shape: True on separator ids."""
        return torch.isin(token, torch.as_tensor(self.separator_ids, dtype=token.dtype, device=token.device))

    def visible(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        fixed = (k.pos < self.n_sink) | self.is_separator(k.token)  # (B, K)
        recent = q.pos[:, :, None] - k.pos[:, None, :] < self.window  # (B, Q, K)
        return fixed[:, None, :] | recent  # (B, Q, K)

    def keep(self, meta: TokenMeta, n_seen: Tensor, n_seg: Tensor) -> Tensor:
        fixed = (meta.pos < self.n_sink) | self.is_separator(meta.token)  # (B, K)
        return (fixed | (meta.pos > n_seen[:, None] - self.window)) & meta.valid  # (B, K)
