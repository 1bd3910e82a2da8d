"""Referring-expression data: one JSON object a line, ``{"image", "expression", "bbox"}``.

``bbox`` is ``[x, y, w, h]`` in the original image's pixels (COCO convention); ``image`` is
a relative path resolving inside the JSONL file's folder (``feather.jsonread.path_inside``:
absolute paths and ``..`` out of it are refused); ``split`` is optional. Lines are parsed by
``feather.jsonread.loads`` (at most 1 MiB and 64 levels of nesting each). Every malformed
line fails with ``InputError`` naming the file and line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from feather import jsonread
from feather.errors import InputError
from feather.prompt import LOCALIZATION_PROMPT as PROMPT

MAX_LINE_BYTES = 1 << 20  # a referring expression line is ~200 bytes


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
        # a line is read up to the bound, so one huge line costs 1 MiB, not the file's size
        for number, text in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), ""), start=1):
            if len(text) > MAX_LINE_BYTES:
                raise InputError(f"{path}:{number}: line longer than {MAX_LINE_BYTES} characters")
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
    row = jsonread.loads(text.rstrip("\r\n"), where, max_bytes=MAX_LINE_BYTES)
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
    image = jsonread.path_inside(where, row["image"], root)
    return Sample(number, image, row["expression"], _bbox(where, row["bbox"]), split)


def _bbox(where: str, value) -> tuple[float, float, float, float]:
    ok = isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise InputError(f"{where}: bbox: expected [x, y, w, h] as four finite numbers, got {value!r}")
    if value[2] <= 0 or value[3] <= 0:
        raise InputError(f"{where}: bbox: width and height must be > 0, got {value!r}")
    return tuple(float(v) for v in value)
