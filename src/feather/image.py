"""Opening a user's image: one bounded loader for every path that reads one.

The runtime, the PyTorch reference, the overlay, feather-eval, calibration and the server all
open images through ``load_image``: paths and encoded bytes are checked from their header
before decoding, arrays and PIL images by their shape, and every Pillow mode either becomes
RGB by a fixed rule or is refused in one line. numpy and Pillow only.
"""

from __future__ import annotations

import io
import math
import os
import stat
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from feather.errors import InputError
from feather.text import shown

if TYPE_CHECKING:
    from feather.manifest import ImageSpec

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
"""``ImageSpec.resample`` names -> Pillow filters (transformers resizes with Pillow too)."""

_ARRAY_SHAPE_ERROR = "image array: expected uint8 H x W x 3, got {} {}"

MAX_IMAGE_PIXELS = 8192 * 8192
"""The largest image accepted, in pixels (64 MP; a 256 MB RGBA decode). Files are checked
from their header, before decoding; arrays and PIL images by their shape."""

EXACT_RESIZE_PIXELS = 1 << 22
"""Up to this many resized pixels (4 MP) the image is resized whole, then center-cropped,
bit-identical to transformers. Beyond it (extreme aspect ratios: a 5000 x 1 strip would
resize to 1,680,000 x 336) only the crop window is resampled, which keeps memory at the
crop size and differs from the whole resize by float rounding only (docs/hardening.md)."""


class ImageTooLargeError(InputError):
    """An image over the pixel limit it was loaded under (a server answers it with its own code)."""


_PLAIN_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
"""Modes Pillow's ``convert("RGB")`` maps correctly (LAB through its CIE L*a*b* transform)."""
_ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "PA": "PA", "RGBa": "RGBA", "La": "LA"}
"""Modes with an alpha band -> the straight-alpha mode they are composited from (``RGBa`` and
``La`` are premultiplied). Decided by mode, never by band name: LAB's ``A`` band is a*."""
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
"""16-bit, 32-bit integer and float modes: scaled to 8 bits by ``_to_uint8``."""
_SUPPORTED = "8-bit L/P/RGB/RGBA/LA/PA/CMYK/YCbCr/LAB/HSV, 16-bit I;16, I (0..65535) or F (0..1)"


def load_image(image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``image`` as an RGB ``PIL.Image`` of at most ``max_pixels`` pixels.

    ``image`` is a path (str or ``os.PathLike``), encoded image bytes (``bytes``, ``bytearray``,
    ``memoryview``: what a server receives), a binary file object, a ``PIL.Image.Image`` (a
    lazily opened one must still have its file open), or a numpy array H x W x 3 (also H x W,
    H x W x 1 grey and H x W x 4 RGBA). Files and bytes are EXIF-transposed (as transformers'
    ``load_image`` does for paths; a PIL image or array is taken as it is). Then, by mode:

    - 8-bit RGB, L, P, 1, RGBX, CMYK, YCbCr, HSV: Pillow's ``convert("RGB")`` (transformers'
      own step, so these stay bit-identical to it); LAB through Pillow's CIE L*a*b* -> sRGB.
    - RGBA, LA, PA, RGBa, La and any ``transparency``: composited onto white (premultiplied
      modes un-premultiplied first).
    - I;16 (any byte order) and I: 16-bit values, ``round(v * 255 / 65535)`` (so ``257 * x``
      gives ``x``); I values outside 0..65535 are refused. F: values in 0.0..1.0 become
      ``round(v * 255)``; NaN or values outside are refused.
    - Arrays: uint8 as is; bool as 0/255; uint16 like I;16; float16/32/64 like F; any other
      dtype is refused.
    - Any other mode is refused.

    Raises ``InputError`` with one line naming the input and what was expected.
    """
    return to_rgb(open_image(image, max_pixels))


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as RGB by the rules of ``load_image``, any transparency composited onto white
    (``img`` itself when it is RGB already, else a new image).

    Mirrors transformers' ``image_transforms.convert_to_rgb`` for 8-bit PIL images (its numpy
    branch rounds ``a * c + (1 - a) * 255``, which equals Pillow's ``alpha_composite`` on white
    for every (value, alpha) pair, so arrays and images agree)."""
    if img.mode in _WIDE_MODES:
        img = _wide_to_l(img)
    elif img.mode not in _PLAIN_MODES and img.mode not in _ALPHA_MODES:
        raise InputError(f"image: mode {img.mode} is not supported; expected {_SUPPORTED}")
    if img.mode in _ALPHA_MODES or img.info.get("transparency") is not None:
        straight = img.convert(_ALPHA_MODES.get(img.mode, img.mode)) if img.mode in ("RGBa", "La") else img
        rgba = straight.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # no 192 MB copy of a 64 MP RGB image


def _wide_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit L (LA when a transparent value is set)."""
    raw = np.asarray(img)
    out = Image.fromarray(_to_uint8(raw, f"image: mode {img.mode}", wide_ints=True), "L")
    key = img.info.get("transparency")
    if isinstance(key, int) and not isinstance(key, bool):  # a 16-bit PNG's tRNS grey value
        alpha = np.where(raw == key, 0, 255).astype(np.uint8)
        out = Image.merge("LA", (out, Image.fromarray(alpha, "L")))
    return out


def _to_uint8(arr: np.ndarray, name: str, wide_ints: bool = False) -> np.ndarray:
    """``arr`` as uint8 by the rule of its dtype (see ``load_image``); ``InputError`` naming
    ``name`` when the dtype or the value range has no rule. ``wide_ints``: any integer dtype
    holds 16-bit values (Pillow's mode I); otherwise only uint16 does."""
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype == np.uint16 or (wide_ints and kind in "iu"):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"{name}: values span {lo}..{hi}; expected 16-bit values 0..65535")
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if kind == "f":
        with np.errstate(invalid="ignore"):
            if not np.all((arr >= 0) & (arr <= 1)):
                finite = arr[~np.isnan(arr)]
                span = f"{finite.min():g}..{finite.max():g}" if finite.size else "only NaN"
                nan = ", and NaN" if finite.size < arr.size and finite.size else ""
                raise InputError(f"{name}: float values span {span}{nan}; "
                                 "expected 0.0..1.0 (scaled by 255), or convert to uint8")
        return np.floor(arr.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    raise InputError(f"{name}: dtype {arr.dtype}; expected uint8 (or bool, uint16, float in 0..1)")


def open_image(image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """``image`` opened as a PIL image in its own mode (see ``load_image``), size-checked against
    ``max_pixels``. Arrays of another dtype than uint8 are already scaled to uint8 here."""
    if isinstance(image, Image.Image):
        _check_size("image", image.width, image.height, max_pixels)
        return _loaded(image)
    if isinstance(image, np.ndarray):
        return _from_array(image, max_pixels)
    if isinstance(image, (str, os.PathLike)):
        return _read_file(image, max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(image), "image bytes", max_pixels)
    if hasattr(image, "read") and hasattr(image, "seek"):
        return _decode(image, "image file object", max_pixels)
    raise InputError(
        f"image: expected a path, image bytes, a file object, a PIL image or a numpy array, got {type(image).__name__}"
    )


def _loaded(img: Image.Image) -> Image.Image:
    """``img`` with its pixels decoded; a lazily opened image whose file is closed is one line."""
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, AssertionError, AttributeError) as e:
        detail = _reason(e) if str(e) else "its file is closed"
        raise InputError(f"image: cannot read the PIL image's pixels ({detail}); "
                         "pass the path, or the image while its file is open") from None
    return img


def _check_size(name: str, width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    if width == 0 or height == 0:
        raise InputError(f"{name}: zero size ({width} x {height}); expected a non-empty image")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{name}: {width} x {height} pixels; at most {max_pixels:,} pixels "
                         f"({max_pixels / 2**20:g} MP) accepted")


def _from_array(arr: np.ndarray, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if not ok_shape:
        raise InputError(_ARRAY_SHAPE_ERROR.format(arr.dtype, arr.shape))
    _check_size("image array", arr.shape[1], arr.shape[0], max_pixels)
    arr = _to_uint8(arr, "image array")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr))  # L, RGB or RGBA from the shape


def _read_file(image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a regular file without ever blocking (O_NONBLOCK: a FIFO or device is refused,
    not waited on), check its size from the header, then decode."""
    name = shown(image)
    if os.fspath(image) in ("", b""):
        raise InputError("image: empty path; expected an image file")
    try:
        fd = os.open(image, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise InputError(f"{name}: cannot open ({_reason(e)})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise InputError(f"{name}: is {kind}; expected an image file")
    with open(fd, "rb") as f:
        return _decode(f, name, max_pixels)


def _decode(f, name: str, max_pixels: int) -> Image.Image:
    """Decode the image in binary file ``f``: size checked from the header, EXIF-transposed."""
    try:
        with Image.open(f) as img:
            _check_size(name, img.width, img.height, max_pixels)  # from the header, before decoding
            img.load()  # decode now: truncated files fail here, not later; the pixels outlive the file
            ImageOps.exif_transpose(img, in_place=True)  # in place: no second copy of a large picture
            return img
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: cannot read image ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    if isinstance(e, Image.DecompressionBombError):  # Pillow's own limit, above ours
        return f"it declares over {MAX_IMAGE_PIXELS:,} pixels, the most accepted"
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image format Pillow can read"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return " ".join(f"{type(e).__name__}: {e}".split())


def resize_size(height: int, width: int, spec: ImageSpec) -> tuple[int, int]:
    """Output (height, width) of the resize step.

    Shortest edge: transformers' ``get_resize_output_image_size(default_to_square=False)``
    (the long edge is truncated, not rounded); otherwise straight to ``spec.size``."""
    if spec.resize_shortest_edge is None:
        return int(spec.size[0]), int(spec.size[1])
    size = int(spec.resize_shortest_edge)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def resize_crop(img: Image.Image, spec: ImageSpec, resample, exact_pixels: int = EXACT_RESIZE_PIXELS) -> np.ndarray:
    """``img`` (RGB) resized as ``spec`` says, then center-cropped when it says so: [H, W, 3] uint8.

    Up to ``exact_pixels`` resized pixels the whole image is resized (bit-identical to
    transformers); beyond, with a center crop, only the crop window is resampled
    (``_resize_crop_window``), so memory stays at the crop's size whatever the aspect ratio.
    A resize over ``exact_pixels`` without a crop is refused."""
    height, width = resize_size(img.height, img.width, spec)
    crop = (int(spec.size[0]), int(spec.size[1]))
    if spec.center_crop and height * width > exact_pixels:
        arr = _resize_crop_window(img, height, width, *crop, resample)
    elif height * width > exact_pixels:
        raise InputError(f"image: {img.width} x {img.height} resizes to {width} x {height} pixels; "
                         f"at most {exact_pixels:,} without a center crop")
    else:
        arr = np.asarray(img.resize((width, height), resample=resample))  # [h, w, 3] uint8
    return center_crop(arr, *crop) if spec.center_crop else arr


def _resize_crop_window(img: Image.Image, height: int, width: int, crop_h: int, crop_w: int,
                        resample) -> np.ndarray:
    """What resizing ``img`` to ``height x width`` and then cropping the centre
    ``crop_h x crop_w`` gives, computed on the crop window only, so no height x width array
    is ever made. -> [min(height, crop_h), min(width, crop_w), 3] uint8.

    Pillow resizes in two passes, horizontal then vertical; so does this, each pass with a
    ``box`` (a source rectangle resampled at the same scale, filter taps outside it
    included) and on the source rows the window reads plus a filter margin. Axes smaller
    than the crop stay whole (the crop pads them afterwards). Box corners are float32 in
    Pillow, so pixels may differ from the whole resize by one level."""
    sy, sx = img.height / height, img.width / width  # source pixels per resized pixel
    top, left = max(0, (height - crop_h) // 2), max(0, (width - crop_w) // 2)
    out_h, out_w = min(height, crop_h), min(width, crop_w)
    y0, y1 = top * sy, (top + out_h) * sy
    margin = math.ceil(_MAX_SUPPORT * max(sy, 1.0)) + 2  # rows the vertical filter reaches past the window
    r0, r1 = max(0, math.floor(y0) - margin), min(img.height, math.ceil(y1) + margin)
    strip = img.crop((0, r0, img.width, r1))  # [r1 - r0, w] source rows
    strip = strip.resize((out_w, r1 - r0), resample=resample, box=(left * sx, 0, (left + out_w) * sx, r1 - r0))
    out = strip.resize((out_w, out_h), resample=resample, box=(0, y0 - r0, out_w, y1 - r0))
    return np.asarray(out)


_MAX_SUPPORT = 3.0
"""The widest Pillow filter's support in pixels at scale 1 (Lanczos)."""


def center_crop(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crop [H, W, ...] to [height, width] like transformers' ``center_crop``: floor offsets,
    and zero padding (ceil offsets) on a side that is too small."""
    h, w = arr.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return arr[top : top + height, left : left + width]
    new_h, new_w = max(height, h), max(width, w)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas = np.zeros((new_h, new_w) + arr.shape[2:], dtype=arr.dtype)
    canvas[pad_top : pad_top + h, pad_left : pad_left + w] = arr
    top, left = top + pad_top, left + pad_left
    return canvas[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]
