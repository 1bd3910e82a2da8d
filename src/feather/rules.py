"""Stage rules: one object per rule owns everything about it.

A rule knows how many image tokens it keeps in static mode (``keep``), how it selects them
(``select``), whether it ranks by an attention score (``needs_score``) and whether that score
applies RoPE (``rope``). The config, the exporter (where to cut, which score to emit), the
manifest's load-time checks, the PyTorch reference and the runtime all ask the rule; none of
them re-derives it from a criterion name. Torch-free.

    RULES["ensemble"].keep(576, grid=24, params)   -> 236
    RULES["ensemble"].select(current, grid, params, logits=[H, n])  -> local positions
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feather.errors import ConfigError, InputError
from feather.selection import attention_scores, floor_count, grid_count, grid_positions, knn_scores, topk

MODES = ("static", "paper")


@dataclass(frozen=True)
class Params:
    """The numbers every rule reads: rho = 1 - R (fraction a top-k keeps), grid stride s, mode."""

    rho: float
    stride: int
    mode: str = "static"

    @classmethod
    def from_ratio(cls, ratio: float, stride: int, mode: str = "static") -> Params:
        return cls(rho=1.0 - float(ratio), stride=stride, mode=mode)


class Rule:
    """One stage rule. Subclasses set ``name``, ``needs_score``, ``rope`` and implement
    ``keep`` and ``_select``."""

    name = ""
    needs_score = False  # ranks by layer K-1's attention score (so the stage needs K >= 1)
    rope = False  # that score applies RoPE (FastV) or not (phi_R)
    needs_features = False  # ranks by the vision features (DPC-KNN)
    variable_in_paper_mode = False  # paper mode keeps a data-dependent count (at most ``keep``)

    def keep(self, n: int, grid: int, params: Params) -> int:
        """Image tokens kept from ``n`` in static mode (exact; an upper bound in paper mode)."""
        raise NotImplementedError

    def select(self, current: np.ndarray, grid: int, params: Params, logits: np.ndarray | None = None,
               features: np.ndarray | None = None, layer: int | None = None) -> np.ndarray:
        """Local positions (ascending) kept out of the ``current`` image tokens.

        ``current``: original indices of the live image tokens ``[n]``; ``logits``: score
        logits ``[H, n]`` over them (attention rules); ``features``: vision features
        ``[N, C]`` of ALL original image tokens (knn)."""
        where = f"stage at layer {layer}" if layer is not None else f"rule {self.name}"
        scores = None
        if self.needs_score:
            n = len(current)
            if logits is None or np.ndim(logits) != 2 or np.shape(logits)[-1] != n:
                got = None if logits is None else np.shape(logits)
                raise InputError(f"{where}: expected score logits [H, {n}], got {got}")
            scores = attention_scores(logits)
        if self.needs_features and features is None:
            raise InputError(f"{where}: rule {self.name} needs the vision features")
        return self._select(np.asarray(current), grid, params, scores, features)

    def _select(self, current, grid, params, scores, features) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Rule({self.name})"


class TopK(Rule):
    """Top floor(n * rho^power) by the attention score (FastV with RoPE, phi_R without)."""

    needs_score = True

    def __init__(self, name: str, rope: bool, power: int = 1):
        self.name, self.rope, self.power = name, rope, power

    def keep(self, n, grid, params):
        return floor_count(n, params.rho**self.power)

    def _select(self, current, grid, params, scores, features):
        return topk(scores, self.keep(len(current), grid, params))


class Uniform(Rule):
    """Grid tokens on rows / cols 0, s, 2s, ... (only those still alive)."""

    name = "uniform"

    def keep(self, n, grid, params):
        return min(n, grid_count(grid, params.stride))

    def _select(self, current, grid, params, scores, features):
        return grid_positions(current, grid, params.stride)


class Knn(Rule):
    """Top floor(n * rho) by DPC-KNN density * delta over the vision features."""

    name = "knn"
    needs_features = True

    def keep(self, n, grid, params):
        return floor_count(n, params.rho)

    def _select(self, current, grid, params, scores, features):
        return topk(knn_scores(np.asarray(features)[current]), self.keep(len(current), grid, params))


class Ensemble(Rule):
    """phi_R united with the grid. Paper mode: top floor(n rho) over every token, united with
    the grid (variable size). Static mode: the grid plus the top floor(n rho) of the non-grid
    tokens (always grid + floor(n rho); a superset of the paper set)."""

    name = "ensemble"
    needs_score = True
    variable_in_paper_mode = True

    def keep(self, n, grid, params):
        return min(n, grid_count(grid, params.stride) + floor_count(n, params.rho))

    def _select(self, current, grid, params, scores, features):
        on_grid = grid_positions(current, grid, params.stride)
        m = floor_count(len(current), params.rho)
        if params.mode == "paper":
            return np.union1d(topk(scores, m), on_grid).astype(np.int64)
        masked = np.asarray(scores, dtype=np.float64).copy()
        masked[on_grid] = -np.inf
        return np.union1d(topk(masked, m), on_grid).astype(np.int64)


class DropAll(Rule):
    """Keep no image token (the text-only baseline)."""

    name = "drop_all"

    def keep(self, n, grid, params):
        return 0

    def _select(self, current, grid, params, scores, features):
        return np.zeros(0, dtype=np.int64)


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        TopK("topk_rope", rope=True),  # FastV
        TopK("topk_norope", rope=False),  # phi_R
        Uniform(),
        Knn(),
        Ensemble(),
        TopK("topk_norope2", rope=False, power=2),  # FEATHER's stage 2
        DropAll(),
    )
}


def get(name: str) -> Rule:
    """The rule called ``name``; ``ConfigError`` naming the known ones otherwise."""
    try:
        return RULES[name]
    except KeyError:
        raise ConfigError(f"rule: got {name!r}, expected one of {', '.join(RULES)}") from None


def keep_counts(rules: list[str], n_image: int, grid: int, params: Params) -> list[int]:
    """Static keep count after each stage, each from the previous stage's count."""
    counts, n = [], n_image
    for name in rules:
        n = get(name).keep(n, grid, params)
        counts.append(n)
    return counts
