"""Which image tokens survive each pruning stage, drawn over the picture. Pillow and numpy only.

Token ``i`` of a G x G grid covers row ``i // G``, column ``i % G`` of the model's view: the
image after the checkpoint's resize and center crop (``ImageSpec``). ``View`` maps between
that view and the original picture, so the same token can be drawn on either.

    from feather.overlay import save_overlay
    result = pipe.generate(image, prompt)
    save_overlay(image, result.stages, pipe.manifest.image, pipe.manifest.dims.grid,
                 pipe.manifest.pruning.criterion, "kept.png")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from feather.errors import InputError, OutputError
from feather.image import RESAMPLE, center_crop, load_image, resize_size

if TYPE_CHECKING:
    from feather.manifest import ImageSpec

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (edges, not centres)

PANEL = 336  # panel side in the overlay, pixels
TITLE_H = 30
DIM = 0.28  # brightness of pruned tokens
OUTSIDE = (70, 70, 70)  # original-image pixels the model never sees (cropped away)


@dataclass(frozen=True)
class View:
    """Where the model's view sits on an original ``width`` x ``height`` picture.

    A point ``(x, y)`` of the original lands at ``(x * scale_x + offset_x, y * scale_y +
    offset_y)`` in the view of ``view_width`` x ``view_height`` pixels. The resize maps the
    picture's full extent onto the resized one (Pillow's convention), and the center crop
    shifts by ``-((resized - crop) // 2)``, which is also the padding offset when the resized
    side is shorter than the crop (``preprocess.center_crop``)."""

    width: int
    height: int
    view_width: int
    view_height: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    @classmethod
    def of(cls, width: int, height: int, spec: ImageSpec) -> View:
        """The view an image of ``width`` x ``height`` gets under ``spec``."""
        rh, rw = resize_size(height, width, spec)
        if spec.center_crop:
            ch, cw = int(spec.size[0]), int(spec.size[1])
            ox, oy = -((rw - cw) // 2), -((rh - ch) // 2)
        else:
            ch, cw, ox, oy = rh, rw, 0, 0
        return cls(width, height, cw, ch, rw / width, rh / height, float(ox), float(oy))

    def to_view(self, box: Box) -> Box:
        """An original-pixel box in view pixels (not clipped)."""
        x1, y1, x2, y2 = box
        sx, sy, ox, oy = self.scale_x, self.scale_y, self.offset_x, self.offset_y
        return (x1 * sx + ox, y1 * sy + oy, x2 * sx + ox, y2 * sy + oy)

    def to_original(self, box: Box) -> Box:
        """A view-pixel box in original pixels, clipped to the picture."""
        x1, y1, x2, y2 = box
        sx, sy, ox, oy = self.scale_x, self.scale_y, self.offset_x, self.offset_y
        return (_clip((x1 - ox) / sx, self.width), _clip((y1 - oy) / sy, self.height),
                _clip((x2 - ox) / sx, self.width), _clip((y2 - oy) / sy, self.height))

    def clip(self, box: Box) -> Box:
        """A view-pixel box clipped to the view."""
        x1, y1, x2, y2 = box
        w, h = self.view_width, self.view_height
        return (_clip(x1, w), _clip(y1, h), _clip(x2, w), _clip(y2, h))


def _clip(v: float, hi: float) -> float:
    return min(max(float(v), 0.0), float(hi))


def token_box(index: int, grid: int, view: View) -> Box:
    """The view-pixel box of image token ``index`` (row ``index // grid``, column ``index % grid``)."""
    if not 0 <= index < grid * grid:
        raise InputError(f"token index {index}: expected 0 <= index < {grid * grid} (grid {grid})")
    row, col = divmod(int(index), grid)
    pw, ph = view.view_width / grid, view.view_height / grid
    return (col * pw, row * ph, (col + 1) * pw, (row + 1) * ph)


def token_box_original(index: int, grid: int, view: View) -> Box:
    """The original-pixel box of image token ``index``, clipped to the picture (a token over
    crop padding maps to a box of zero width or height)."""
    return view.to_original(token_box(index, grid, view))


def tokens_in_box(box: Box, grid: int, view: View) -> np.ndarray:
    """Sorted indices of the tokens whose patch overlaps view-pixel ``box`` with positive area
    (overlaps under a millionth of a patch, float noise from mapping boxes, do not count)."""
    x1, y1, x2, y2 = view.clip(box)
    pw, ph = view.view_width / grid, view.view_height / grid
    ex, ey = 1e-6 * pw, 1e-6 * ph
    cols = np.arange(grid)
    in_x = cols[(cols * pw < x2 - ex) & ((cols + 1) * pw > x1 + ex)]
    in_y = cols[(cols * ph < y2 - ey) & ((cols + 1) * ph > y1 + ey)]
    return (in_y[:, None] * grid + in_x[None, :]).reshape(-1)


def model_view(image, spec: ImageSpec) -> Image.Image:
    """The picture as the vision tower sees it, before normalisation: resized, then cropped."""
    img = load_image(image)
    h, w = resize_size(img.height, img.width, spec)
    arr = np.asarray(img.resize((w, h), resample=RESAMPLE.get(spec.resample, Image.Resampling.BICUBIC)))
    if spec.center_crop:
        arr = center_crop(arr, int(spec.size[0]), int(spec.size[1]))
    return Image.fromarray(np.ascontiguousarray(arr))


def _token_map_view(view: View, grid: int, size: tuple[int, int]) -> np.ndarray:
    """Token index of each pixel of a ``size`` (w, h) rendering of the view. [h, w] int"""
    w, h = size
    col = np.minimum(((np.arange(w) + 0.5) * grid / w).astype(int), grid - 1)
    row = np.minimum(((np.arange(h) + 0.5) * grid / h).astype(int), grid - 1)
    return row[:, None] * grid + col[None, :]


def _token_map_original(view: View, grid: int, size: tuple[int, int]) -> np.ndarray:
    """Token index of each pixel of a ``size`` (w, h) rendering of the original; -1 where the
    pixel falls outside the model's view (cropped away). [h, w] int"""
    w, h = size
    x = (np.arange(w) + 0.5) * view.width / w * view.scale_x + view.offset_x  # view pixels
    y = (np.arange(h) + 0.5) * view.height / h * view.scale_y + view.offset_y
    col = np.floor(x * grid / view.view_width).astype(int)
    row = np.floor(y * grid / view.view_height).astype(int)
    ok = ((col >= 0) & (col < grid))[None, :] & ((row >= 0) & (row < grid))[:, None]
    return np.where(ok, row[:, None] * grid + col[None, :], -1)


def _shade(img: Image.Image, tokens: np.ndarray, kept: np.ndarray | None) -> Image.Image:
    """Dim the pruned tokens of ``img`` (``kept`` None: keep all); grey out pixels outside the view."""
    arr = np.asarray(img.convert("RGB")).astype(np.float32)
    keep = np.ones(tokens.max(initial=0) + 1, dtype=bool) if kept is None else np.isin(
        np.arange(tokens.max(initial=0) + 1), kept)
    lit = np.where(tokens >= 0, keep[np.maximum(tokens, 0)], False)
    arr = np.where(lit[..., None], arr, arr * DIM)
    arr[tokens < 0] = OUTSIDE
    return Image.fromarray(arr.round().astype(np.uint8))


def _fit(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    s = PANEL / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def render_overlay(image, stages: list[dict], image_spec: ImageSpec, grid: int, criterion: str) -> Image.Image:
    """One image: a column for the input and one per stage; the top row on the model's view,
    the bottom row on the original picture. Pruned tokens are dimmed; each title gives the
    stage's layer, kept count and ``criterion``. ``stages``: ``Result.stages``
    (``[{"layer": K, "kept": [original indices]}, ...]``)."""
    img = load_image(image)
    view = View.of(img.width, img.height, image_spec)
    top, bottom = model_view(img, image_spec), img
    top_size, bottom_size = _fit(top.size), _fit(bottom.size)
    top, bottom = top.resize(top_size, Image.Resampling.BILINEAR), bottom.resize(bottom_size, Image.Resampling.BILINEAR)
    maps = (_token_map_view(view, grid, top_size), _token_map_original(view, grid, bottom_size))
    n = grid * grid
    columns = [(f"input: {n} tokens ({criterion})", None)]
    for s in stages:
        kept = np.asarray(s["kept"], dtype=int)
        columns.append((f"layer {s['layer']}: {len(kept)}/{n} kept ({criterion})", kept))
    canvas = Image.new("RGB", (PANEL * len(columns), 2 * (PANEL + TITLE_H)), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for c, (title, kept) in enumerate(columns):
        for r, (pic, tokens) in enumerate(zip((top, bottom), maps)):
            x, y = c * PANEL, r * (PANEL + TITLE_H)
            label = title if r == 0 else f"original {img.width}x{img.height}"
            draw.text((x + 4, y + 8), label, fill=(0, 0, 0), font=font)
            canvas.paste(_shade(pic, tokens, kept), (x, y + TITLE_H))
    return canvas


def save_overlay(image, stages: list[dict], image_spec: ImageSpec, grid: int, criterion: str,
                 out_path: str | os.PathLike) -> Path:
    """Write ``render_overlay(...)`` to ``out_path`` (format from its suffix, e.g. .png).
    Raises ``OutputError`` naming the path when it cannot be written."""
    out = Path(out_path)
    picture = render_overlay(image, stages, image_spec, grid, criterion)
    try:
        picture.save(out)
    except (OSError, ValueError) as err:  # missing folder, unknown suffix, read-only
        raise OutputError(f"{out}: cannot write the overlay ({' '.join(str(err).split())})") from None
    return out
