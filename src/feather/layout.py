"""Where the image tokens sit in the image block and which of them a stage may prune. Torch-free.

Two layouts:

- ``square(G)``: LLaVA-1.5 / SigLIP, the G x G patches row-major; every token may be pruned.
- ``tiled(G, rows, cols, stride)``: LLaVA-NeXT for one frame size. The block is the base image's
  G x G patches, then the unpadded tile features, ``rows`` lines of ``cols`` features each
  followed by one learned newline token (G^2 + rows * (cols + 1) tokens, transformers' order).
  Newline tokens are never pruned (they are kept like text); the others form two grids.

The stage rules (``feather.rules``) take original indices on ONE square grid. A tiled layout
gives each prunable token an index on a square *virtual* grid of side ``vgrid``: base row r,
col c at ``r * vgrid + c``; tile row r, col c at ``(top + r) * vgrid + c`` with ``top`` =
ceil(G / s) * s, a multiple of the stride. So the rules' uniform grid (rows and columns 0, s,
2s, ...) is exactly the union of the stride-s grid over the base and the stride-s grid over
the unpadded tile features, and no rule needs to know about tiles.

    layout.apply_stage(rule, live, pos, offset, params, score, feats, layer) -> (keep_index, live)
    layout.static_counts(rules, params)                 -> prunable tokens each stage keeps (static)

``apply_stage`` is the one stage step the runtime (``runtime/pipeline.py``) and the PyTorch
reference (``reference/generate.py``) both run: the score's columns of the live tokens, the rule's
selection on the virtual grid, the positions to gather. A new image layout (a family variant) is a
new factory here plus its tiling in ``feather.hf``; the exporter, the manifest checks, the runtime
and the reference take the layout and ask it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """``n`` image tokens; ``prunable`` their block positions a stage may prune (ascending);
    ``virtual`` the same tokens' indices on a square grid of side ``vgrid``."""

    n: int
    prunable: np.ndarray
    virtual: np.ndarray
    vgrid: int

    @property
    def tiled(self) -> bool:
        return len(self.prunable) != self.n or self.vgrid * self.vgrid != self.n

    def columns(self, pos: np.ndarray, offset: int, live: np.ndarray) -> np.ndarray:
        """Where the ``live`` prunable tokens sit in the current sequence, whose original
        positions are ``pos`` (ascending) and whose image block started at ``offset``."""
        return np.searchsorted(pos, offset + self.prunable[live]).astype(np.int64)

    def select(self, rule, live: np.ndarray, params, logits, feats, layer: int | None = None) -> np.ndarray:
        """``rule.select`` over the ``live`` prunable tokens, on the virtual grid -> local positions."""
        virtual = self.virtual[live]
        if rule.needs_features and feats is not None and self.tiled:
            grid_feats = np.zeros((self.vgrid * self.vgrid, feats.shape[-1]), dtype=feats.dtype)
            grid_feats[self.virtual] = feats[self.prunable]
            feats = grid_feats
        return rule.select(virtual, self.vgrid, params, logits, feats if rule.needs_features else None, layer)

    def keep_index(self, pos: np.ndarray, offset: int, kept: np.ndarray) -> np.ndarray:
        """Positions to gather from the current sequence (original positions ``pos``): every
        token that is not prunable (text, newlines) and the ``kept`` prunable ones, in order."""
        prunable = np.isin(pos, offset + self.prunable)
        keep = np.isin(pos, offset + self.prunable[kept])
        return np.flatnonzero(~prunable | keep).astype(np.int64)

    def apply_stage(self, rule, live: np.ndarray, pos: np.ndarray, offset: int, params, score, feats,
                    layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One pruning stage on the current sequence (original positions ``pos``, image block at
        ``offset``) whose prunable tokens ``live`` are alive: ``score`` the score logits [H, S] over
        the whole current sequence (None for a rule that ranks by none), ``feats`` the vision
        features [N, C] of the whole block. Returns (positions to gather, the live tokens after)."""
        logits = None if score is None else np.asarray(score)[:, self.columns(pos, offset, live)]  # [H, n]
        keep_local = self.select(rule, live, params, logits, feats, layer)
        kept = live[keep_local]
        return self.keep_index(pos, offset, kept), kept

    def static_counts(self, rule_objects, params) -> list[int]:
        """Prunable tokens each stage keeps in static mode (whatever ``params.mode``: paper mode's
        counts depend on the scores), found by running the rules on the layout with neutral
        scores: the counts are those of the rules themselves (a rule that ranks by the features
        keeps ``rule.keep`` of the live tokens wherever they sit)."""
        params = dataclasses.replace(params, mode="static")
        live, counts = np.arange(len(self.prunable)), []
        for rule in rule_objects:
            if rule.needs_features:  # a count of live tokens alone (DPC-KNN on neutral features: O(n^2) for nothing)
                live = live[: rule.keep(len(live), self.vgrid, params)]
                counts.append(len(live))
                continue
            logits = np.zeros((1, len(live)), dtype=np.float32) if rule.needs_score else None
            feats = np.zeros((self.n, 1), dtype=np.float32)
            live = live[self.select(rule, live, params, logits, feats)]
            counts.append(len(live))
        return counts

    @property
    def newlines(self) -> int:
        return self.n - len(self.prunable)


def square(grid: int) -> Layout:
    """The G x G patches, all prunable, the virtual grid being the grid itself."""
    index = np.arange(grid * grid, dtype=np.int64)
    return Layout(grid * grid, index, index, grid)


def tiled(grid: int, rows: int, cols: int, stride: int) -> Layout:
    """LLaVA-NeXT's block: G x G base patches, then ``rows`` lines of ``cols`` tile features
    each followed by a newline token (see the module docstring for the virtual grid)."""
    top = math.ceil(grid / stride) * stride
    side = max(grid, top + rows, cols)
    r, c = np.divmod(np.arange(grid * grid, dtype=np.int64), grid)
    tr, tc = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
    prunable = np.concatenate([r * grid + c, grid * grid + tr * (cols + 1) + tc])
    virtual = np.concatenate([r * side + c, (top + tr) * side + tc])
    return Layout(grid * grid + rows * (cols + 1), prunable, virtual, side)


def for_tiles(grid: int, tiles, stride: int) -> Layout:
    """The layout of a G x G grid, tiled by a LLaVA-NeXT ``TileSpec`` (``tiles.features`` = unpadded
    [rows, cols]) or square when ``tiles`` is None: the one place the choice is made."""
    if tiles is None:
        return square(grid)
    return tiled(grid, tiles.features[0], tiles.features[1], stride)


def for_manifest(manifest) -> Layout:
    """The layout a manifest's export was made for."""
    return for_tiles(manifest.dims.grid, getattr(manifest, "tiles", None), manifest.pruning.stride)
