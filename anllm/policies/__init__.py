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

from anllm.policies.spec import parse_spec, policy_from_spec, split_modes  # noqa: E402 - needs POLICIES

__all__ = [
    "POLICIES",
    "AnchorPolicy",
    "EvictionPolicy",
    "FullCachePolicy",
    "SepLLMPolicy",
    "StreamingPolicy",
    "TokenMeta",
    "parse_spec",
    "policy_from_spec",
    "split_modes",
]
