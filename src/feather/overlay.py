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

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from feather.errors import InputError, OutputError
from feather.folder import write_atomic
from feather.image import RESAMPLE, load_image, resize_crop, resize_size
from feather.text import shown

if TYPE_CHECKING:
    from feather.manifest import ImageSpec

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (edges, not centres)

PANEL = 336  # panel side in the overlay, pixels
TITLE_H = 30
DIM = 0.28  # brightness of pruned tokens
OUTSIDE = (128, 128, 128)  # grey that original-image pixels the model never sees (cropped away) are blended with
OUTSIDE_KEEP = 0.4  # share of the original pixel kept in that blend
OUTLINE = (255, 0, 200)  # outline of the tokens kept at the last stage
OUTLINE_W = 2
SWATCH, LEGEND_ROW = 12, 18  # legend swatch side and row height
LEGEND_H = 5 * LEGEND_ROW + 12  # the legend band under the panels: 4 keys and the counts line


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
    """The picture as the vision tower sees it, before normalisation: resized, then cropped
    (only the crop window is resampled for extreme aspect ratios, as ``pixel_values`` does)."""
    arr = resize_crop(load_image(image), spec, RESAMPLE.get(spec.resample, Image.Resampling.BICUBIC))
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
    """Dim the pruned tokens of ``img`` (``kept`` None: keep all); wash out, towards grey, the
    pixels outside the view (cropped away), so what was cut is still recognisable."""
    base = np.asarray(img.convert("RGB"))
    arr = base.astype(np.float32)
    keep = np.ones(tokens.max(initial=0) + 1, dtype=bool) if kept is None else np.isin(
        np.arange(tokens.max(initial=0) + 1), kept)
    lit = np.where(tokens >= 0, keep[np.maximum(tokens, 0)], False)
    arr = np.where(lit[..., None], arr, arr * DIM)
    outside = tokens < 0
    arr[outside] = _washed(base[outside])
    return Image.fromarray(arr.round().astype(np.uint8))


def _washed(pixels: np.ndarray) -> np.ndarray:
    """Cropped-away pixels: ``OUTSIDE_KEEP`` of the original blended with ``OUTSIDE`` grey."""
    return pixels.astype(np.float32) * OUTSIDE_KEEP + np.float32(1 - OUTSIDE_KEEP) * np.asarray(OUTSIDE, np.float32)


def _fit(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    s = PANEL / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _outline(draw: ImageDraw.ImageDraw, boxes: list[Box], origin: tuple[int, int], scale: tuple[float, float]) -> None:
    """Outline each box (in picture pixels; ``scale`` to panel pixels) at panel ``origin``."""
    (ox, oy), (sx, sy) = origin, scale
    for x1, y1, x2, y2 in boxes:
        if x2 <= x1 or y2 <= y1:  # a token over crop padding covers no original pixel
            continue
        left, top = ox + round(x1 * sx), oy + round(y1 * sy)
        right, bottom = max(left, ox + round(x2 * sx) - 1), max(top, oy + round(y2 * sy) - 1)
        draw.rectangle((left, top, right, bottom), outline=OUTLINE, width=OUTLINE_W)


def _legend(draw: ImageDraw.ImageDraw, font, y: int, n: int, stages: list[dict], criterion: str) -> None:
    """The key under the panels: what each shade means, and the stages' kept counts."""
    last = f"kept at the last stage (layer {stages[-1]['layer']}), outlined" if stages else "no pruning stage"
    rows = [((200, 200, 200), None, "token kept"), ((56, 56, 56), None, f"token pruned (dimmed to {DIM:.0%})"),
            ((200, 200, 200), OUTLINE, last),
            (tuple(int(v) for v in _washed(np.full((1, 3), 200))[0].round()), None, "cropped away before the model")]
    for i, (fill, outline, text) in enumerate(rows):
        top = y + 6 + i * LEGEND_ROW
        draw.rectangle((6, top, 6 + SWATCH, top + SWATCH), fill=fill, outline=outline, width=OUTLINE_W)
        draw.text((6 + SWATCH + 8, top + 1), text, fill=(0, 0, 0), font=font)
    counts = ", ".join(f"layer {s['layer']}: {len(s['kept'])}/{n}" for s in stages) or f"all {n} kept"
    draw.text((6, y + 6 + len(rows) * LEGEND_ROW + 1), f"criterion {criterion}; {counts}", fill=(0, 0, 0), font=font)


def render_overlay(image, stages: list[dict], image_spec: ImageSpec, grid: int, criterion: str) -> Image.Image:
    """One image: a column for the input and one per stage; the top row on the model's view,
    the bottom row on the original picture, and a legend band of ``LEGEND_H`` pixels below.
    Pruned tokens are dimmed, the last stage's kept tokens outlined in ``OUTLINE``, and what
    the crop removes washed out towards grey; each title gives the stage's layer, kept count
    and ``criterion``. ``stages``: ``Result.stages`` (``[{"layer": K, "kept": [original
    indices]}, ...]``). Memory stays bounded whatever the aspect ratio (``model_view``)."""
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
    canvas = Image.new("RGB", (PANEL * len(columns), 2 * (PANEL + TITLE_H) + LEGEND_H), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for c, (title, kept) in enumerate(columns):
        for r, (pic, tokens) in enumerate(zip((top, bottom), maps)):
            x, y = c * PANEL, r * (PANEL + TITLE_H)
            label = title if r == 0 else f"original {img.width}x{img.height}"
            draw.text((x + 4, y + 8), label, fill=(0, 0, 0), font=font)
            canvas.paste(_shade(pic, tokens, kept), (x, y + TITLE_H))
    if stages:
        x, last = (len(columns) - 1) * PANEL, columns[-1][1]
        view_scale = (top_size[0] / view.view_width, top_size[1] / view.view_height)
        _outline(draw, [view.clip(token_box(i, grid, view)) for i in last], (x, TITLE_H), view_scale)
        _outline(draw, [token_box_original(i, grid, view) for i in last], (x, 2 * TITLE_H + PANEL),
                 (bottom_size[0] / img.width, bottom_size[1] / img.height))
    _legend(draw, font, 2 * (PANEL + TITLE_H), n, stages, criterion)
    return canvas


def save_overlay(image, stages: list[dict], image_spec: ImageSpec, grid: int, criterion: str,
                 out_path: str | os.PathLike) -> Path:
    """Write ``render_overlay(...)`` to ``out_path`` (format from its suffix, e.g. .png) and
    return it. The file appears whole or not at all (written beside it, then renamed); the
    input image's own file is never the target. Raises ``OutputError`` naming the path when
    it cannot be written."""
    out = Path(out_path)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise OutputError(f"{shown(out)}: unknown image suffix {out.suffix or '(none)'!r}; expected e.g. .png or .jpg")
    if isinstance(image, (str, os.PathLike)) and _same_file(image, out):
        raise OutputError(f"{shown(out)}: is the input image; write the overlay to another file")
    picture = render_overlay(image, stages, image_spec, grid, criterion)
    buf = io.BytesIO()
    try:
        picture.save(buf, format=fmt)
        write_atomic(out, buf.getvalue())
    except (OSError, ValueError) as err:  # missing folder, read-only, a mode the format cannot hold
        raise OutputError(f"{shown(out)}: cannot write the overlay ({' '.join(str(err).split())})") from None
    return out


def _same_file(a, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # either is missing
        return False
