"""The only module that knows about transformers version drift and which architectures are supported.

transformers 5.17 takes ``past_key_values=``; 5.24 takes ``cache=`` (``past_key_values`` is deprecated).
The anchor cache needs a model that (a) honours a custom 4D ``attention_mask`` and (b) takes explicit
``position_ids`` and a ``Cache`` object: the Llama family in transformers does.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

from anllm.config import AnLLMError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MASK_IGNORING_BACKENDS = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn", "paged_attention")


@lru_cache(maxsize=32)
def _cache_kwarg(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model) -> str:
    """The keyword this model's forward takes its KV cache under (``cache`` or ``past_key_values``)."""
    return _cache_kwarg(type(model))


def attn_implementation(model) -> str:
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


def check_supported(model) -> None:
    """Raise :class:`AnLLMError` if the model cannot run the anchor mask and cache faithfully."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise AnLLMError(
            f"model type {model_type!r} is not supported by anllm's anchor cache (supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}); it may ignore custom 4D masks or explicit positions"
        )
    impl = attn_implementation(model)
    if any(b in impl for b in MASK_IGNORING_BACKENDS) and "flex" not in impl:
        raise AnLLMError(
            f"attention backend {impl!r} ignores custom 4D attention masks, so the AnSAN rule cannot be applied; "
            "load the model with attn_implementation='sdpa' (default) or 'eager'"
        )
