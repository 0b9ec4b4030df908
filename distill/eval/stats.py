"""Confidence intervals for suite scores: Wilson for 0/1 rows, a percentile bootstrap otherwise."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

_BOOTSTRAP_RESAMPLES = 2000


_Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the ends, not 1e-19 off
    high = 1.0 if successes == n else min(1.0, center + half)
    return (low, high)


def bootstrap_interval(scores: np.ndarray, seed: int, resamples: int = _BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(scores), size=(resamples, len(scores)))
    means = scores[idx].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def score_with_ci(scores: Sequence[float], seed: int = 0) -> tuple[float, tuple[float, float], str]:
    """(mean, 95% CI, method): Wilson when all scores are 0/1, else bootstrap."""
    arr = np.asarray(scores, dtype=np.float64)
    if len(arr) == 0:
        return 0.0, (0.0, 1.0), "none"
    mean = float(arr.mean())
    if np.all((arr == 0) | (arr == 1)):
        return mean, wilson_interval(float(arr.sum()), len(arr)), "wilson"
    return mean, bootstrap_interval(arr, seed), "bootstrap"


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
