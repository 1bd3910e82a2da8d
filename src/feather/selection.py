"""Which image tokens each stage keeps: the selection math, in numpy.

Torch-free on purpose: the stage rules (``feather.rules``), hence the PyTorch reference and
the runtime (ONNX Runtime, TensorRT), all call these functions, so kept indices can differ between them only through the
scores they feed in. Indices are either *original* (0..N-1 over the full image grid,
ascending) or *local* (positions into the current, already-pruned token list).

Ranking rule, everywhere: higher score first, ties broken toward the lower index, so a
top-k is deterministic. Selected sets are returned sorted ascending (kept tokens keep
their original order).
"""

from __future__ import annotations

import math

import numpy as np

KNN_NEIGHBOURS = 5


def floor_count(n: int, fraction: float) -> int:
    """floor(n * fraction), robust to float error (0.3 * 10 must give 3, not 2)."""
    return int(math.floor(n * fraction + 1e-9))


def grid_count(grid: int, stride: int) -> int:
    """Tokens on the uniform grid: ceil(G / s)^2."""
    return math.ceil(grid / stride) ** 2


def uniform_grid(grid: int, stride: int) -> np.ndarray:
    """Original indices of the grid tokens on rows and columns 0, s, 2s, ... (row-major)."""
    lines = np.arange(0, grid, stride)
    return (lines[:, None] * grid + lines[None, :]).ravel().astype(np.int64)


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Local indices of the ``k`` best scores, ascending. Ties go to the lower index."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(scores.size), -scores))  # last key is primary
    return np.sort(order[:k]).astype(np.int64)


def attention_scores(logits: np.ndarray) -> np.ndarray:
    """Per-token score from score logits ``[H, n]``: softmax over the n image keys
    (float32, per head), then the mean over heads -> ``[n]``."""
    x = np.asarray(logits, dtype=np.float32)
    if x.shape[-1] == 0:  # a stage before kept no image token: nothing to rank
        return np.zeros(0, dtype=np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    return p.mean(axis=0)


def knn_scores(features: np.ndarray, k: int = KNN_NEIGHBOURS) -> np.ndarray:
    """DPC-KNN score ``density * delta`` per token of ``features`` ``[n, C]``.

    distances = cdist(f, f) / sqrt(C); density = exp(-mean squared distance to the k
    nearest neighbours, the token itself included, as in TCFormer's DPC-KNN);
    delta = distance to the nearest token of higher density (the largest distance for
    the densest token). Computed in float64 so that near-ties rank the same everywhere.
    """
    f = np.asarray(features, dtype=np.float64)
    n, c = f.shape
    sq = (f * f).sum(-1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
    dist = np.sqrt(d2) / np.sqrt(c)
    nearest = np.sort(dist, axis=-1)[:, : min(k, n)]
    density = np.exp(-(nearest**2).mean(-1))
    higher = density[None, :] > density[:, None]
    delta = np.where(higher, dist, dist.max()).min(-1)
    return density * delta


def grid_positions(current: np.ndarray, grid: int, stride: int) -> np.ndarray:
    """Local positions, within ``current`` (original indices), of the grid tokens it holds."""
    return np.flatnonzero(np.isin(current, uniform_grid(grid, stride))).astype(np.int64)


def sequence_keep_index(offset: int, n_image: int, keep_local: np.ndarray, seq_len: int) -> np.ndarray:
    """Positions to gather from a sequence of ``seq_len`` whose image span is
    ``[offset, offset + n_image)``: all text before, the kept image tokens, all text after."""
    return np.concatenate(
        [
            np.arange(offset, dtype=np.int64),
            offset + np.asarray(keep_local, dtype=np.int64),
            np.arange(offset + n_image, seq_len, dtype=np.int64),
        ]
    )
