"""KV-cache policies: one class each, all behind :class:`EvictionPolicy`."""

from anllm.policies.anchor import AnchorPolicy
from anllm.policies.base import EvictionPolicy, TokenMeta
from anllm.policies.full import FullCachePolicy
from anllm.policies.registry import POLICIES
from anllm.policies.sepllm import SepLLMPolicy
from anllm.policies.spec import BUDGETED, budget_spec, parse_spec, policy_from_spec, split_modes
from anllm.policies.streaming import StreamingPolicy

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
