"""Opening a user's image: one bounded loader for every path that reads one.

The runtime, the PyTorch reference, the overlay, feather-eval, calibration and the server all
open images through ``load_image``: paths are opened without blocking and checked from their
header before decoding, arrays and PIL images by their shape. numpy and Pillow only.
"""

from __future__ import annotations

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

def load_image(image) -> Image.Image:
    """Open ``image`` as an RGB ``PIL.Image``.

    ``image`` is a path (str or ``os.PathLike``), a ``PIL.Image.Image``, or a uint8 numpy
    array H x W x 3 (what a camera gives; also H x W, H x W x 1 grey and H x W x 4 RGBA).
    Files are EXIF-transposed (as transformers' ``load_image`` does for paths); every other
    mode goes through ``to_rgb``. Raises ``InputError`` with one line naming the input.
    """
    return to_rgb(open_image(image))


def to_rgb(img: Image.Image) -> Image.Image:
    """An RGB copy of ``img``, any transparency composited onto white.

    Mirrors transformers' ``image_transforms.convert_to_rgb`` for PIL images (its numpy branch
    rounds ``a * c + (1 - a) * 255``, which equals Pillow's ``alpha_composite`` on white for
    every (value, alpha) pair, so arrays and images agree)."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(image) -> Image.Image:
    """``image`` opened as a PIL image in its own mode (see ``load_image``), size-checked."""
    if isinstance(image, Image.Image):
        img, name = image, "image"
        _check_size(name, img.width, img.height)
    elif isinstance(image, np.ndarray):
        img, name = _from_array(image), "image array"
    elif isinstance(image, (str, os.PathLike)):
        img, name = _read_file(image), shown(image)
    else:
        raise InputError(
            f"image: expected a path, a PIL image or a uint8 numpy array, got {type(image).__name__}"
        )
    return img


def _check_size(name: str, width: int, height: int) -> None:
    if width == 0 or height == 0:
        raise InputError(f"{name}: zero size ({width} x {height}); expected a non-empty image")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{name}: {width} x {height} pixels; at most {MAX_IMAGE_PIXELS:,} pixels (64 MP) accepted")


def _from_array(arr: np.ndarray) -> Image.Image:
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if arr.dtype != np.uint8 or not ok_shape:
        raise InputError(_ARRAY_SHAPE_ERROR.format(arr.dtype, arr.shape))
    _check_size("image array", arr.shape[1], arr.shape[0])
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr))  # L, RGB or RGBA from the shape


def _read_file(image) -> Image.Image:
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
        try:
            with Image.open(f) as img:
                _check_size(name, img.width, img.height)  # from the header, before decoding
                img.load()  # decode now: truncated files fail here, not later
                return ImageOps.exif_transpose(img)  # a copy, detached from the file
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
