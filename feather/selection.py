"""Which image tokens each stage keeps: the selection math, in numpy.

Torch-free on purpose: the PyTorch reference and the runtime (ONNX Runtime, TensorRT)
both call these functions, so kept indices can differ between them only through the
scores they feed in. Indices are either *original* (0..N-1 over the full image grid,
ascending) or *local* (positions into the current, already-pruned token list).

Ranking rule, everywhere: higher score first, ties broken toward the lower index, so a
top-k is deterministic. Selected sets are returned sorted ascending (kept tokens keep
their original order).
"""

from __future__ import annotations

import numpy as np

from feather.config import PruneConfig, Stage, floor_count
from feather.errors import ConfigError, InputError

KNN_NEIGHBOURS = 5


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


def select_stage(
    stage: Stage,
    config: PruneConfig,
    current: np.ndarray,
    grid: int,
    logits: np.ndarray | None = None,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Local positions (ascending) that ``stage`` keeps out of the ``current`` image tokens.

    ``current``: original indices of the image tokens alive before this stage, ``[n]``.
    ``logits``: score logits ``[H, n]`` over those tokens, for attention rules.
    ``features``: vision features ``[N, C]`` of ALL original image tokens, for ``knn``.
    """
    n, rho = len(current), config.rho
    rule = stage.rule
    if stage.needs_score:
        if logits is None or np.shape(logits)[-1] != n:
            got = None if logits is None else np.shape(logits)
            raise InputError(f"stage at layer {stage.layer}: expected score logits [H, {n}], got {got}")
        scores = attention_scores(logits)
    if rule == "topk_rope" or rule == "topk_norope":
        return topk(scores, floor_count(n, rho))
    if rule == "topk_norope2":
        return topk(scores, floor_count(n, rho * rho))
    if rule == "uniform":
        return grid_positions(current, grid, config.stride)
    if rule == "knn":
        if features is None:
            raise InputError(f"stage at layer {stage.layer}: criterion knn needs the vision features")
        return topk(knn_scores(np.asarray(features)[current]), floor_count(n, rho))
    if rule == "ensemble":
        return _ensemble(scores, current, grid, config)
    if rule == "drop_all":
        return np.zeros(0, dtype=np.int64)
    raise ConfigError(f"rule: got {rule!r}, expected a known stage rule")


def _ensemble(scores: np.ndarray, current: np.ndarray, grid: int, config: PruneConfig) -> np.ndarray:
    """phi_R united with the grid. Paper mode: top floor(n rho) over every token, united
    with the grid (variable size). Static mode: the grid plus the top floor(n rho) of the
    non-grid tokens (always grid + floor(n rho); a superset of the paper set)."""
    on_grid = grid_positions(current, grid, config.stride)
    m = floor_count(len(current), config.rho)
    if config.mode == "paper":
        return np.union1d(topk(scores, m), on_grid).astype(np.int64)
    masked = np.asarray(scores, dtype=np.float64).copy()
    masked[on_grid] = -np.inf
    return np.union1d(topk(masked, m), on_grid).astype(np.int64)


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
