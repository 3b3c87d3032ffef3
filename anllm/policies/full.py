"""Full cache: nothing is evicted; the model's own causal mask is used (the stock transformers path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from anllm.policies.base import EvictionPolicy


@dataclass
class FullCachePolicy(EvictionPolicy):
    """Keep every entry; equals ``model.generate`` with a ``DynamicCache``."""

    name: ClassVar[str] = "full"
    uses_model_causal_mask: ClassVar[bool] = True
