"""Calibration sets: the (image, prompt) pairs the floating-point chain is run on.

A calibration file is JSONL, one ``{"image": path, "prompt": text}`` object per line; image
paths are relative paths inside the file's folder (``feather.jsonread.path_inside``, the rule
feather-eval's data follows too: absolute paths and ``..`` out of the folder are refused). Every line
is checked, and every image opened, before anything is run or written, so a bad line is one
error naming the file and the line. With no file, ``default_set()`` is the sample picture
with a few prompts, so ``feather-quantize EXPORT_DIR`` works with no flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from feather import jsonread
from feather.cli import SAMPLE_IMAGE, shown
from feather.errors import InputError

DEFAULT_PROMPTS = (
    "What is in this image?",
    "Describe the picture in detail.",
    "What colors do you see, and where?",
    "Is there any text or a sign in the image?",
)
MAX_LINES = 10_000
MAX_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class Sample:
    """One calibration input: an image file and a prompt about it."""

    image: Path
    prompt: str


def default_set() -> list[Sample]:
    """The built-in set: the bundled sample picture with ``DEFAULT_PROMPTS``."""
    return [Sample(SAMPLE_IMAGE, p) for p in DEFAULT_PROMPTS]


def load_set(path: str | os.PathLike) -> list[Sample]:
    """Read a calibration JSONL; raises ``InputError`` naming the file (and line) for an
    unreadable file, invalid JSON, a line that is not ``{"image": str, "prompt": str}``, an
    image that is missing or cannot be decoded, and an empty file."""
    path = Path(path)
    text = _read(path)
    samples = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            samples.append(_sample(path, n, line))
        if len(samples) > MAX_LINES:
            raise InputError(f"{shown(path)}: more than {MAX_LINES} calibration lines")
    if not samples:
        raise InputError(f"{shown(path)}: no calibration lines; expected one JSON object per line")
    return samples


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{shown(path)}: larger than {MAX_FILE_BYTES >> 20} MiB; expected a JSONL file")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{shown(path)}: no such calibration file") from None
    except IsADirectoryError:
        raise InputError(f"{shown(path)}: is a folder; expected a JSONL file") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{shown(path)}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputError(f"{shown(path)}: cannot read it ({err.strerror})") from None


def _sample(path: Path, n: int, line: str) -> Sample:
    where = f"{shown(path)}:{n}"
    obj = jsonread.loads(line, where)
    if not isinstance(obj, dict) or set(obj) != {"image", "prompt"}:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f'{where}: expected {{"image": path, "prompt": text}}, got {got}')
    for key in ("image", "prompt"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise InputError(f"{where}: {key}: expected a non-empty string")
    image = jsonread.path_inside(where, obj["image"], path.parent)
    _check_image(where, image)
    return Sample(image, obj["prompt"])


def _check_image(where: str, image: Path) -> None:
    from feather.image import load_image

    if not image.is_file():
        raise InputError(f"{where}: image {shown(image)}: no such file")
    try:
        load_image(image)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
