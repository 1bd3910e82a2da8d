"""Which graphs a pruning plan needs: segment boundaries, score outputs, image-token counts."""

from __future__ import annotations

from dataclasses import dataclass

from feather.config import PruneConfig, Stage


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


def plan_segments(config: PruneConfig, num_layers: int, n_image: int, grid: int,
                  max_graph_layers: int | None = None) -> list[SegmentPlan]:
    """Cut the decoder at every K > 0. A stage at K = 0 runs before segment 0.

    FEATHER K = 8 16 on 24 layers: [0, 8) -> score (no RoPE) -> [8, 16) -> score -> [16, 24) + LM head.
    ``max_graph_layers`` also cuts any longer run into graphs of at most that many layers
    (no pruning between them): export memory grows with the largest graph.
    """
    stage_at = {s.layer: s for s in config.stages}
    bounds = _bounds([0] + [k for k in config.K if k > 0] + [num_layers], max_graph_layers)
    counts = dict(zip([s.layer for s in config.stages], config.keep_counts(n_image, grid)))
    plans, n = [], n_image
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        stage = stage_at.get(start)
        if stage is not None:
            n = counts[start]
        nxt = stage_at.get(end)
        score = nxt.rope if nxt is not None and nxt.needs_score else None
        static = config.mode == "static" or stage is None or stage.rule not in ("ensemble", "topk_norope2")
        plans.append(SegmentPlan(i, start, end, stage, score, end == num_layers,
                                 n if static and (i == 0 or plans[-1].n_image_in is not None) else None))
    return plans


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
