"""The export plan: which graphs a pruning plan needs (segment boundaries, score outputs,
image-token counts) and every choice an export makes, in one object. Torch-free.

``plan_segments`` is the only producer of keep counts: it asks the image layout
(``feather.layout``, square or NeXT-tiled) and the rules (``feather.rules``), never a rule's
name. ``ExportPlan`` is what the graph writer (``api._write_graphs``) and the manifest builder
(``manifest_build.write``) read; the manifest checks recount the same numbers from a manifest
through the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from feather.config import PruneConfig, Stage
from feather.layout import Layout
from feather.manifest import Dims
from feather.manifest.schema import TileSpec


@dataclass(frozen=True)
class SegmentPlan:
    index: int
    start: int
    end: int
    stage: Stage | None  # the stage applied (host selection + in-graph gather) before `start`
    score_rope: bool | None  # None: no score output; else whether the next stage's score uses RoPE
    final: bool
    n_image_in: int | None  # image tokens the graph sees after its gather (static mode), None in paper mode

    @property
    def file(self) -> str:
        return f"segment{self.index}.onnx"


@dataclass(frozen=True)
class ExportPlan:
    """Everything an export writes, decided before the first graph: the checkpoint's geometry,
    the image layout (``tiles`` for LLaVA-NeXT, else None), the segments with their image-token
    counts, the prunable tokens each stage keeps, and the options."""

    model: str
    config: PruneConfig
    geom: Dims
    layout: Layout
    tiles: TileSpec | None
    segments: tuple[SegmentPlan, ...]
    keep: tuple[int, ...]  # prunable image tokens kept after each stage (static mode), newlines not counted
    points: tuple | None = None  # (ratio range, stride range): the operating points a call may choose
    keep_ranges: tuple[tuple[int, int], ...] = ()  # per stage, fewest and most kept over ``points``
    precision: str = "fp32"
    opset: int = 17
    max_seq: int = 2048
    target: str = "portable"


def plan_segments(config: PruneConfig, layout: Layout, num_layers: int,
                  max_graph_layers: int | None = None) -> tuple[list[SegmentPlan], list[int]]:
    """Cut the decoder at every K > 0 (a stage at K = 0 runs before segment 0); return the
    segments and the prunable tokens each stage keeps in static mode (``layout.static_counts``).

    FEATHER K = 8 16 on 24 layers: [0, 8) -> score (no RoPE) -> [8, 16) -> score -> [16, 24) + LM head.
    ``max_graph_layers`` also cuts any longer run into graphs of at most that many layers
    (no pruning between them): export memory grows with the largest graph. A segment's
    ``n_image_in`` (kept tokens + the layout's never-pruned newlines) is None once a rule whose
    count varies in paper mode (``Rule.variable_in_paper_mode``) has run in paper mode.
    """
    stage_at = {s.layer: s for s in config.stages}
    bounds = _bounds([0] + [k for k in config.K if k > 0] + [num_layers], max_graph_layers)
    keep = layout.static_counts([s.impl for s in config.stages], config.params)
    counts = dict(zip([s.layer for s in config.stages], keep))
    plans, n = [], layout.n
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        stage = stage_at.get(start)
        if stage is not None:
            n = counts[start] + layout.newlines
        nxt = stage_at.get(end)
        score = nxt.rope if nxt is not None and nxt.needs_score else None
        static = config.mode == "static" or stage is None or not stage.impl.variable_in_paper_mode
        plans.append(SegmentPlan(i, start, end, stage, score, end == num_layers,
                                 n if static and (i == 0 or plans[-1].n_image_in is not None) else None))
    return plans, keep


def _bounds(cuts: list[int], max_layers: int | None) -> list[int]:
    """Insert extra cuts so that no graph spans more than ``max_layers`` layers."""
    if not max_layers:
        return cuts
    out = [cuts[0]]
    for end in cuts[1:]:
        while end - out[-1] > max_layers:
            out.append(out[-1] + max_layers)
        out.append(end)
    return out
