"""anllm: Anchor-based LLMs (AnSAN masks, anchor KV cache, training) for PyTorch and transformers."""

from anllm.anchors import add_ac_token, ep_anchor_ids, insert_ac, is_anchor, split_sentences
from anllm.cache import AnchorCache, PolicyCache
from anllm.config import PRESETS, AnchorConfig, AnLLMError, GenerationConfig
from anllm.generation import (
    GenerationResponse,
    GenerationResult,
    decode_step,
    forward_chunk,
    generate,
    generate_batch,
    make_cache,
    prefill,
    stream_generate,
)
from anllm.masks import ansan_mask, ansan_mask_mod, segment_ids, to_additive
from anllm.models import LoadedModel, load_model
from anllm.policies import AnchorPolicy, EvictionPolicy, FullCachePolicy
from anllm.stats import RunStats

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AnLLMError",
    "AnchorCache",
    "AnchorConfig",
    "AnchorPolicy",
    "EvictionPolicy",
    "FullCachePolicy",
    "GenerationConfig",
    "GenerationResponse",
    "GenerationResult",
    "LoadedModel",
    "PolicyCache",
    "RunStats",
    "add_ac_token",
    "ansan_mask",
    "ansan_mask_mod",
    "decode_step",
    "ep_anchor_ids",
    "forward_chunk",
    "generate",
    "generate_batch",
    "insert_ac",
    "is_anchor",
    "load_model",
    "make_cache",
    "prefill",
    "segment_ids",
    "split_sentences",
    "stream_generate",
    "to_additive",
]
