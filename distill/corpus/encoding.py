"""Compact top-k encoding: log-probs quantized on a grid, delta-coded per position (see
``schema.py`` for the layout).

The grid (schema v2): a log-prob ``lp`` is stored as the integer code ``round(F(-lp))``, where F
maps nats to codes with a density of ``scale * exp(-alpha * u)`` codes per nat (u = -lp), and at
least ``1 / max_step`` codes per nat. So the step is ``1/scale`` nat at the top of the
distribution and grows as the probability falls: an entry's weight in the KL (its probability)
shrinks faster than its error grows. ``alpha = 0`` is the uniform grid ``round(u * scale)`` of
schema v1, which reads through the same code.

Pure numpy, no I/O, so the size benchmark and the tests exercise exactly what the writer stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distill.corpus.schema import MAX_NATS


@dataclass(frozen=True)
class Grid:
    """The quantization grid: ``scale`` codes per nat at u = 0, curvature ``alpha`` (0 = uniform),
    coarsest step ``max_step`` nats (reached at ``knee`` nats)."""

    scale: int
    alpha: float = 0.0
    max_step: float = 0.125

    def __post_init__(self) -> None:
        if self.scale < 1 or self.alpha < 0 or self.max_step <= 0:
            raise ValueError(f"bad log-prob grid {self}")

    @property
    def knee(self) -> float:
        if self.alpha == 0 or self.scale * self.max_step <= 1:
            return 0.0 if self.alpha else math.inf
        return math.log(self.scale * self.max_step) / self.alpha

    def _at_knee(self) -> float:
        return self.scale * -math.expm1(-self.alpha * self.knee) / self.alpha

    def forward(self, u: np.ndarray) -> np.ndarray:
        """Nats (>= 0) -> real-valued code position."""
        if self.alpha == 0:
            return u * self.scale
        knee = self.knee
        curved = self.scale * -np.expm1(-self.alpha * np.minimum(u, knee)) / self.alpha
        return np.where(u <= knee, curved, self._at_knee() + (u - knee) / self.max_step)

    def inverse(self, codes: np.ndarray) -> np.ndarray:
        """Codes -> nats."""
        c = np.asarray(codes, dtype=np.float64)
        if self.alpha == 0:
            return c / self.scale
        top = self._at_knee()
        curved = -np.log1p(-self.alpha * np.minimum(c, top) / self.scale) / self.alpha
        return np.where(c <= top, curved, self.knee + (c - top) * self.max_step)

    def step(self, u: np.ndarray) -> np.ndarray:
        """The grid's step (nats between neighbouring codes) at u nats."""
        u = np.asarray(u, dtype=np.float64)
        if self.alpha == 0:
            return np.full(u.shape, 1.0 / self.scale)
        return np.minimum(np.exp(self.alpha * u) / self.scale, self.max_step)

    def error_bound(self, logprobs: np.ndarray) -> np.ndarray:
        """An upper bound on |stored - true| for each log-prob (half a step, taken one coarsest
        step further down so rounding across a step boundary is covered)."""
        u = np.clip(-np.asarray(logprobs, dtype=np.float64), 0.0, MAX_NATS)
        return 0.5 * self.step(u + self.max_step) + 1e-6

    def manifest(self) -> dict[str, float]:
        return {"logprob_scale": self.scale, "logprob_alpha": self.alpha, "logprob_max_step": self.max_step}


def quantize(logprobs: np.ndarray, grid: Grid) -> np.ndarray:
    """Absolute codes ``round(F(-logprob))`` as int64 (>= 0); -inf and < -MAX_NATS clamp.

    NaN and +inf are refused: they come from a broken teacher (NaN weights, fp16/bf16 overflow),
    and no code may stand for them."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("log-probs hold NaN or +inf: the teacher's output is broken (not stored)")
    u = -np.clip(np.nan_to_num(lp, neginf=-MAX_NATS), -MAX_NATS, 0.0)
    return np.rint(grid.forward(u)).astype(np.int64)


def floor_code(grid: Grid) -> int:
    """The code of the storage floor (-MAX_NATS): what -inf and broken values are stored as."""
    return int(quantize(np.array([-MAX_NATS]), grid)[0])


def dequantize(codes: np.ndarray, grid: Grid) -> np.ndarray:
    """Codes -> log-probs (float32); the floor code reads as exactly -MAX_NATS."""
    return (-np.minimum(grid.inverse(codes), MAX_NATS)).astype(np.float32)


def encode_topk_logprobs(topk_logprobs: np.ndarray, grid: Grid) -> np.ndarray:
    """[T, k] sorted-descending log-probs -> int32 [T*k]: first code of each position, then
    the non-negative differences of consecutive codes."""
    codes = quantize(topk_logprobs, grid)
    if codes.ndim != 2:
        raise ValueError(f"topk_logprobs must be 2-D [T, k], got shape {codes.shape}")
    deltas = codes.copy()
    deltas[:, 1:] = np.diff(codes, axis=1)
    if deltas.size and deltas.min() < 0:
        raise ValueError("topk_logprobs must be sorted in descending order at every position")
    return deltas.astype(np.int32).ravel()


def decode_topk_logprobs(codes: np.ndarray, k: int, grid: Grid) -> np.ndarray:
    """Inverse of ``encode_topk_logprobs``: int32 [T*k] -> float32 [T, k]."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1, k)
    return dequantize(np.cumsum(codes, axis=1), grid)


def encode_logprobs(logprobs: np.ndarray, grid: Grid) -> np.ndarray:
    """[T] log-probs -> int32 [T] absolute codes (used for the sampled token's log-prob)."""
    return quantize(logprobs, grid).astype(np.int32)


def decode_logprobs(codes: np.ndarray, grid: Grid) -> np.ndarray:
    return dequantize(codes, grid)
