"""Scoring a localization answer, separable from any model (torch-free).

Frame: boxes are ``[x1, y1, x2, y2]`` normalised to the image AS THE MODEL SEES IT, i.e.
after the checkpoint's resize and center crop (``feather.overlay.View``). The ground
truth (COCO ``[x, y, w, h]`` in original pixels) is mapped into that frame and clipped to
it; a target the crop removes entirely cannot be scored and is reported as ``outside``.

Parsing follows the paper's harness: the answer must hold a list of four numbers in
[0, 1] with x1 < x2 and y1 < y2; anything else is unparsed, and counts as wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from feather.overlay import View, tokens_in_box

Box = tuple[float, float, float, float]

_BRACKETED = re.compile(r"\[([^\[\]]*)\]")


def parse_box(text: str) -> Box | None:
    """``[x1, y1, x2, y2]`` from the first bracketed list in ``text`` (or the whole text when
    it has no brackets); ``None`` unless it is four numbers in [0, 1] with x1 < x2, y1 < y2."""
    found = _BRACKETED.search(text)
    body = found.group(1) if found else text.strip()
    parts = body.split(",")
    if len(parts) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(p) for p in parts)
    except ValueError:
        return None
    values = (x1, y1, x2, y2)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values) or not (x1 < x2 and y1 < y2):
        return None
    return values


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (0.0 when both are empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def gt_in_view(box_xyxy: Box, view: View) -> Box | None:
    """The ground-truth box (original pixels) in the model's normalised frame, clipped to
    it; ``None`` when nothing of it is left inside the view."""
    x1, y1, x2, y2 = view.clip(view.to_view(box_xyxy))
    if x2 <= x1 or y2 <= y1:
        return None
    w, h = view.view_width, view.view_height
    return (x1 / w, y1 / h, x2 / w, y2 / h)


@dataclass(frozen=True)
class Score:
    """One answer scored: the parsed box (None: unparsed, wrong) and its IoU with the truth."""

    box: Box | None
    iou: float

    @property
    def parsed(self) -> bool:
        return self.box is not None


def score_answer(text: str, truth: Box) -> Score:
    """Parse ``text`` and compare with ``truth`` (both in the normalised view frame)."""
    box = parse_box(text)
    return Score(box, 0.0 if box is None else iou(box, truth))


def stage_stats(stages: list[dict], truth: Box, view: View, grid: int) -> tuple[int, list[dict]]:
    """Where each stage's kept tokens sit: per stage, the kept count, the kept tokens per
    image row (top row first), and how many of the ground truth's tokens survive. Returns
    (the ground truth's token count, per-stage dicts). A token belongs to the box when its
    patch overlaps it with positive area."""
    w, h = view.view_width, view.view_height
    gt = tokens_in_box((truth[0] * w, truth[1] * h, truth[2] * w, truth[3] * h), grid, view)
    out = []
    for s in stages:
        kept = np.asarray(s["kept"], dtype=np.int64)
        rows = np.bincount(kept // grid, minlength=grid)[:grid]
        out.append({"layer": int(s["layer"]), "n_kept": int(len(kept)), "rows": rows.tolist(),
                    "gt_kept": int(np.isin(gt, kept).sum())})
    return int(len(gt)), out
