"""The paper's measures (arXiv 2402.07616 §4.3; T⇑ against no-cache decoding, App. A.1), as small pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

from anllm.config import AnLLMError


def kv_reduction(kept: float, total: float) -> float:
    """C⇓ = 1 - kept / total KV entries (0 = nothing saved, 1 = nothing kept)."""
    if total <= 0:
        raise AnLLMError(f"C⇓ needs a positive number of KV entries, got total={total}")
    return 1.0 - kept / total


def speedup(baseline_s: float, method_s: float) -> float:
    """T⇑ = baseline time / method time (> 1 means the method is faster)."""
    if method_s <= 0:
        return math.inf
    return baseline_s / method_s


def perplexity_from_nll(nll_sum: float, n: int) -> float:
    """exp(mean negative log-likelihood) over ``n`` predicted tokens."""
    if n <= 0:
        raise AnLLMError("perplexity needs at least 2 tokens (one prediction)")
    return math.exp(nll_sum / n)


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of ``pred[i] == gold[i]``."""
    if len(pred) != len(gold) or not gold:
        raise AnLLMError(f"accuracy needs equal, non-empty lists, got {len(pred)} and {len(gold)}")
    return sum(int(p == g) for p, g in zip(pred, gold)) / len(gold)


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    if not s:
        raise AnLLMError("median of an empty list")
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])
