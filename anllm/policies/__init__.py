"""KV-cache policies: one class each, all behind :class:`EvictionPolicy`."""

from anllm.policies.anchor import AnchorPolicy
from anllm.policies.base import EvictionPolicy, TokenMeta
from anllm.policies.full import FullCachePolicy
from anllm.policies.sepllm import SepLLMPolicy
from anllm.policies.streaming import StreamingPolicy

POLICIES: dict[str, type[EvictionPolicy]] = {
    "full": FullCachePolicy,
    "anchor": AnchorPolicy,
    "streaming": StreamingPolicy,
    "sepllm": SepLLMPolicy,
}

from anllm.policies.spec import (  # noqa: E402 - needs POLICIES
    BUDGETED,
    budget_spec,
    parse_spec,
    policy_from_spec,
    split_modes,
)

__all__ = [
    "BUDGETED",
    "POLICIES",
    "AnchorPolicy",
    "EvictionPolicy",
    "FullCachePolicy",
    "SepLLMPolicy",
    "StreamingPolicy",
    "TokenMeta",
    "budget_spec",
    "parse_spec",
    "policy_from_spec",
    "split_modes",
]
