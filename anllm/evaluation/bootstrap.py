"""Percentile bootstrap intervals over items (seeded), for exact-match rates and other per-item means."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from anllm.config import AnLLMError


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` items with its percentile-bootstrap interval at ``level``."""

    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_interval(values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """The mean of ``values`` and its percentile bootstrap interval.

    ``n_boot`` resamples of ``len(values)`` items drawn with replacement (``numpy.random.default_rng(seed)``); the
    interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means (linear
    interpolation). One item gives a zero-width interval.

    Raises:
        AnLLMError: no values, ``n_boot < 1`` or ``level`` outside (0, 1).
    """
    x = np.asarray(values, dtype=np.float64)  # (n,)
    if x.ndim != 1 or x.size == 0:
        raise AnLLMError("bootstrap_interval needs a non-empty list of numbers")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise AnLLMError(f"bootstrap_interval: n_boot must be >= 1 and level in (0, 1), got {n_boot}, {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # (n_boot, n)
    means = x[idx].mean(axis=1)  # (n_boot,)
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(x.mean()), float(lo), float(hi), int(x.size), level)
