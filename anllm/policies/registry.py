"""The registry of cache policies: name -> class. A policy registered here is served by every policy string
(``anllm generate --policy NAME``, ``eval ppl --policies``), saved and loaded by :mod:`anllm.cache_io`, and proved exact
by the table-driven test over every registered policy (``tests/test_policies.py``)."""

from anllm.policies.anchor import AnchorPolicy
from anllm.policies.base import EvictionPolicy
from anllm.policies.full import FullCachePolicy
from anllm.policies.sepllm import SepLLMPolicy
from anllm.policies.streaming import StreamingPolicy

POLICIES: dict[str, type[EvictionPolicy]] = {
    "full": FullCachePolicy,
    "anchor": AnchorPolicy,
    "streaming": StreamingPolicy,
    "sepllm": SepLLMPolicy,
}
