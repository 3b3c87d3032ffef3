"""Per-run numbers: one frozen :class:`RunStats` that the CLI, the app, eval and bench read their KV and speed
numbers from, so every ratio (kept fraction, C⇓, tokens/s) has one definition."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from anllm.config import AnLLMError


def decode_rate(new_tokens: int, elapsed_s: float, prefill_s: float) -> float:
    """Decode speed: generated tokens / seconds since the first one (``elapsed_s - prefill_s``, at least 1 ns)."""
    return new_tokens / max(elapsed_s - prefill_s, 1e-9)


@dataclass(frozen=True)
class RunStats:
    """What one generation run (or a cache at one moment) holds and cost, measured once where it happens.

    The derived numbers are properties, so no caller recomputes them: :attr:`kv_kept_frac`, :attr:`kv_reduction`
    (C⇓, arXiv 2402.07616 §4.3) and :attr:`tokens_per_s`.
    """

    kv_entries: int  # entries stored per layer
    kv_full_entries: int  # entries a full cache would hold (tokens seen)
    kv_bytes: int = 0  # bytes of K/V held, all layers
    n_evicted: int = 0  # entries dropped so far
    prompt_tokens: int = 0
    new_tokens: int = 0  # tokens generated
    prefill_s: float = 0.0  # from the call to the first generated token
    elapsed_s: float = 0.0  # since the call started, prefill included

    def __post_init__(self) -> None:
        counts = ("kv_entries", "kv_full_entries", "kv_bytes", "n_evicted", "prompt_tokens", "new_tokens")
        bad = [f"{k}={getattr(self, k)}" for k in counts if getattr(self, k) < 0]
        if bad:
            raise AnLLMError(f"RunStats counts must be >= 0, got {', '.join(bad)}")

    @property
    def kv_kept_frac(self) -> float:
        """Stored / seen entries (0 when nothing was seen)."""
        return self.kv_entries / max(self.kv_full_entries, 1)

    @property
    def kv_reduction(self) -> float:
        """C⇓ = 1 - stored / seen entries."""
        return 1.0 - self.kv_kept_frac

    @property
    def tokens_per_s(self) -> float:
        """Decode speed (:func:`decode_rate`)."""
        return decode_rate(self.new_tokens, self.elapsed_s, self.prefill_s)

    def to_dict(self) -> dict:
        return {**asdict(self), "kv_kept_frac": self.kv_kept_frac, "kv_reduction": self.kv_reduction}

    @classmethod
    def of_cache(cls, cache, row: int = 0) -> RunStats:
        """The KV numbers of row ``row`` of a :class:`~anllm.cache.PolicyCache` (zeros before it has seen a token)."""
        if cache.meta is None:
            return cls(0, 0)
        return cls(
            kv_entries=int(cache.n_kept()[row]),
            kv_full_entries=int(cache.n_seen[row]),
            kv_bytes=int(cache.kv_bytes()[row]),
            n_evicted=int(cache.n_evicted[row]),
        )
