"""Compact top-k encoding: quantized, delta-coded log-probs (see ``schema.py`` for the layout).

Pure numpy, no I/O, so the size benchmark and the tests exercise exactly what the writer stores.
"""

from __future__ import annotations

import numpy as np

from distill.corpus.schema import MAX_NATS


def quantize(logprobs: np.ndarray, scale: int) -> np.ndarray:
    """Absolute codes ``round(-logprob * scale)`` as int64 (>= 0); -inf and < -MAX_NATS clamp.

    NaN and +inf are refused: they come from a broken teacher (NaN weights, fp16/bf16 overflow),
    and no code may stand for them."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("log-probs hold NaN or +inf: the teacher's output is broken (not stored)")
    lp = np.clip(np.nan_to_num(lp, neginf=-MAX_NATS), -MAX_NATS, 0.0)
    return np.rint(-lp * scale).astype(np.int64)


def encode_topk_logprobs(topk_logprobs: np.ndarray, scale: int) -> np.ndarray:
    """[T, k] sorted-descending log-probs -> int32 [T*k]: first code of each position, then
    the non-negative differences of consecutive codes."""
    codes = quantize(topk_logprobs, scale)
    if codes.ndim != 2:
        raise ValueError(f"topk_logprobs must be 2-D [T, k], got shape {codes.shape}")
    deltas = codes.copy()
    deltas[:, 1:] = np.diff(codes, axis=1)
    if deltas.size and deltas.min() < 0:
        raise ValueError("topk_logprobs must be sorted in descending order at every position")
    return deltas.astype(np.int32).ravel()


def decode_topk_logprobs(codes: np.ndarray, k: int, scale: int) -> np.ndarray:
    """Inverse of ``encode_topk_logprobs``: int32 [T*k] -> float32 [T, k]."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1, k)
    return (-np.cumsum(codes, axis=1) / scale).astype(np.float32)


def encode_logprobs(logprobs: np.ndarray, scale: int) -> np.ndarray:
    """[T] log-probs -> int32 [T] absolute codes (used for the sampled token's log-prob)."""
    return quantize(logprobs, scale).astype(np.int32)


def decode_logprobs(codes: np.ndarray, scale: int) -> np.ndarray:
    return (-np.asarray(codes, dtype=np.float64) / scale).astype(np.float32)
