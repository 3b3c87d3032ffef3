"""How long the app asks Hugging Face ZeroGPU to hold a GPU for one generation request.

On ZeroGPU a GPU is attached only while a function decorated with ``@spaces.GPU(duration=...)`` runs, and a
shorter ``duration`` puts the visitor earlier in the queue; ``duration`` may be a callable that receives the
handler's own arguments and returns seconds (huggingface.co/docs/hub/spaces-zerogpu). :func:`gpu_duration` builds
that callable for :meth:`anllm.ui.generate_tab.GenerateTab.generate`: the estimate grows with the prompt, the requested
``max new tokens`` and the number of cache modes, and never exceeds the request's own time limit (plus the attach
overhead). Pure arithmetic: nothing here imports ``spaces`` or touches a device (see ``app/app.py`` for that).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anllm.config import AnLLMError

NO_PEER = "none"  # the peer picker's "no third column" (the Generate tab imports it from here)


@dataclass(frozen=True)
class GpuBudget:
    """Rates behind the estimate; deliberately slow so that a slot is rarely too short.

    The decode rate is at the low end of what SmolLM2-135M decodes on this project's 2-core CPU (about 9-15
    tokens/s, docs/benchmarks.md and docs/app.md); the app's per-token loop is bound by Python and kernel launches,
    so a GPU slice should not be slower. Not measured on ZeroGPU itself.
    """

    overhead_s: float = 10.0  # attaching the GPU and the first CUDA calls of a request
    decode_tokens_per_s: float = 10.0  # per cache mode
    prefill_tokens_per_s: float = 1000.0  # per cache mode; anchor prefill runs in chunks
    chars_per_token: float = 3.0  # a low estimate (English BPE averages about 4), so prompts count high
    load_s: float = 30.0  # loading a model that is not resident (inside the GPU slot it is loaded afresh)
    max_s: float = 300.0  # the most any request asks for when the app sets no time limit

    def __post_init__(self) -> None:
        for name in ("decode_tokens_per_s", "prefill_tokens_per_s", "chars_per_token", "max_s"):
            if not getattr(self, name) > 0:
                raise AnLLMError(f"GpuBudget.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("overhead_s", "load_s"):
            if not getattr(self, name) >= 0:
                raise AnLLMError(f"GpuBudget.{name} must be >= 0, got {getattr(self, name)!r}")


def request_seconds(
    prompt_chars: int,
    max_new_tokens: int,
    n_modes: int,
    *,
    time_limit_s: float | None = None,
    load: bool = False,
    budget: GpuBudget = GpuBudget(),
) -> int:
    """Whole seconds of GPU time for ``n_modes`` cache modes, each prefilling the prompt and decoding
    ``max_new_tokens``; capped at ``time_limit_s`` (the app stops a request there) plus the overhead, else at
    ``budget.max_s``."""
    prompt_tokens = max(prompt_chars, 0) / budget.chars_per_token
    per_mode = prompt_tokens / budget.prefill_tokens_per_s + max(max_new_tokens, 0) / budget.decode_tokens_per_s
    seconds = budget.overhead_s + (budget.load_s if load else 0.0) + max(n_modes, 1) * per_mode
    cap = budget.max_s if time_limit_s is None else min(budget.max_s, time_limit_s + budget.overhead_s)
    if load:
        cap += budget.load_s
    return max(1, math.ceil(min(seconds, cap)))


def gpu_duration(handlers: Any, budget: GpuBudget = GpuBudget()) -> Callable[..., int]:
    """The ``duration`` callable for ``spaces.GPU`` around ``handlers.generate`` (same arguments as it).

    Reads ``handlers.max_request_s`` and ``handlers.registry`` at call time. Never raises: a value it cannot read
    (the handler reports bad input itself) counts as the largest request the app accepts.
    """

    def duration(
        prompt: Any, model_name: Any = None, peer: Any = None, chat: Any = True, max_new_tokens: Any = None, *_: Any
    ) -> int:
        try:
            n_new = min(max(int(float(max_new_tokens)), 0), handlers.max_new_tokens_cap)
        except (TypeError, ValueError, OverflowError):
            n_new = handlers.max_new_tokens_cap
        n_modes = 3 if peer and peer != NO_PEER else 2
        name = (model_name or "").strip() if isinstance(model_name, str) else ""
        load = (name or handlers.registry.default) not in handlers.registry.loaded()
        chars = len(prompt) if isinstance(prompt, str) else 0
        return request_seconds(chars, n_new, n_modes, time_limit_s=handlers.max_request_s, load=load, budget=budget)

    return duration
