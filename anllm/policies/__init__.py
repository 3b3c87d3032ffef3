"""KV-cache policies: one class each, all behind :class:`EvictionPolicy`."""

from anllm.policies.anchor import AnchorPolicy
from anllm.policies.base import EvictionPolicy, TokenMeta
from anllm.policies.full import FullCachePolicy

POLICIES: dict[str, type[EvictionPolicy]] = {"full": FullCachePolicy, "anchor": AnchorPolicy}

__all__ = ["POLICIES", "AnchorPolicy", "EvictionPolicy", "FullCachePolicy", "TokenMeta"]
