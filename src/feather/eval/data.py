"""Referring-expression data: one JSON object a line, ``{"image", "expression", "bbox"}``.

``bbox`` is ``[x, y, w, h]`` in the original image's pixels (COCO convention); ``image`` is
a path, relative paths resolving from the JSONL file's folder and required to stay inside
it; ``split`` is optional. Every malformed line fails with ``InputError`` naming the file
and line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from feather.errors import InputError
from feather.prompt import LOCALIZATION_PROMPT as PROMPT


@dataclass(frozen=True)
class Sample:
    """One referring expression: ``line`` is its 1-based line number in the file (its id)."""

    line: int
    image: Path
    expression: str
    bbox: tuple[float, float, float, float]  # x, y, w, h in original pixels
    split: str | None = None

    @property
    def prompt(self) -> str:
        return PROMPT.format(expression=self.expression)

    @property
    def box_xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)


def load_samples(path: str | os.PathLike, limit: int | None = None, split: str | None = None) -> list[Sample]:
    """Read ``path``; keep lines of ``split`` when given; stop after ``limit`` samples."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected a JSONL file of referring expressions")
    if limit is not None and limit < 1:
        raise InputError(f"--limit: got {limit}, expected an integer >= 1")
    root = path.resolve().parent
    samples: list[Sample] = []
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            sample = _parse_line(f"{path}:{number}", number, text, root)
            if split is None or sample.split == split:
                samples.append(sample)
            if limit is not None and len(samples) >= limit:
                break
    if not samples:
        raise InputError(f"{path}: no samples" + (f" of split {split!r}" if split else ""))
    return samples


def _parse_line(where: str, number: int, text: str, root: Path) -> Sample:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("image", "expression", "bbox"):
        if key not in row:
            raise InputError(f"{where}: missing key {key!r}")
    if not isinstance(row["expression"], str) or not row["expression"].strip():
        raise InputError(f"{where}: expression: expected a non-empty string")
    split = row.get("split")
    if split is not None and not isinstance(split, str):
        raise InputError(f"{where}: split: expected a string, got {type(split).__name__}")
    return Sample(number, _image_path(where, row["image"], root), row["expression"], _bbox(where, row["bbox"]), split)


def _image_path(where: str, value, root: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: image: expected a path string")
    path = Path(value)
    if path.is_absolute():
        return path
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise InputError(f"{where}: image {value!r} leaves the JSONL's folder {root}; use a path inside it")
    return resolved


def _bbox(where: str, value) -> tuple[float, float, float, float]:
    ok = isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise InputError(f"{where}: bbox: expected [x, y, w, h] as four finite numbers, got {value!r}")
    if value[2] <= 0 or value[3] <= 0:
        raise InputError(f"{where}: bbox: width and height must be > 0, got {value!r}")
    return tuple(float(v) for v in value)
