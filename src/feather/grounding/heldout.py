"""A held-out set for the shapes task as feather-eval JSONL: PNGs and ``heldout.jsonl`` in one folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from feather.grounding import shapes

HELDOUT_SEED = 12345  # never used for training (training streams use seeds 0, 1, ...)


def write(folder, n: int = 200, seed: int = HELDOUT_SEED) -> Path:
    """Write ``n`` scenes and their questions; returns the JSONL path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        sc = shapes.scene(rng)
        colour, shape, cell = sc.objects[sc.target]
        sc.image.save(folder / f"{i:04d}.png")
        lines.append({"image": f"{i:04d}.png", "expression": f"the {colour} {shape}", "bbox": shapes.bbox_pixels(cell),
                      "split": "heldout"})
    path = folder / "heldout.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    return path
