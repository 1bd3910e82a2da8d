"""Image and prompt preprocessing for the runtime: numpy, Pillow and tokenizers only.

Reproduces what the checkpoint's HF ``LlavaProcessor`` does (a CLIP / SigLIP image
processor on transformers' PIL backend, and the tokenizer), driven by the ``ImageSpec`` and
``PromptSpec`` that ``feather-export`` writes to feather.json. Each step names the
transformers function it mirrors; on the tiny checkpoint the pixel values are bit-identical
and the input ids identical (tests/runtime/test_preprocess.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps
from tokenizers import Tokenizer

from feather.errors import InputError, ManifestError
from feather.prompt import render

if TYPE_CHECKING:
    from feather.manifest import ImageSpec, PromptSpec

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


def load_image(image) -> Image.Image:
    """Open ``image`` as an RGB ``PIL.Image``.

    ``image`` is a path (str or ``os.PathLike``), a ``PIL.Image.Image``, or a uint8 numpy
    array H x W x 3 (what a camera gives; also H x W, H x W x 1 grey and H x W x 4 RGBA).
    Files are EXIF-transposed (as transformers' ``load_image`` does for paths); every other
    mode goes through ``to_rgb``. Raises ``InputError`` with one line naming the input.
    """
    return to_rgb(_open(image))


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


def _open(image) -> Image.Image:
    if isinstance(image, Image.Image):
        img, name = image, "image"
    elif isinstance(image, np.ndarray):
        img, name = _from_array(image), "image array"
    elif isinstance(image, (str, os.PathLike)):
        img, name = _read_file(Path(image)), str(image)
    else:
        raise InputError(
            f"image: expected a path, a PIL image or a uint8 numpy array, got {type(image).__name__}"
        )
    _check_not_empty(name, img.width, img.height)
    return img


def _check_not_empty(name: str, width: int, height: int) -> None:
    if width == 0 or height == 0:
        raise InputError(f"{name}: zero size ({width} x {height}); expected a non-empty image")


def _from_array(arr: np.ndarray) -> Image.Image:
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if arr.dtype != np.uint8 or not ok_shape:
        raise InputError(_ARRAY_SHAPE_ERROR.format(arr.dtype, arr.shape))
    _check_not_empty("image array", arr.shape[1], arr.shape[0])
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr))  # L, RGB or RGBA from the shape


def _read_file(path: Path) -> Image.Image:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, not later
            return ImageOps.exif_transpose(img)  # a copy, detached from the file
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise InputError(f"{path}: cannot read image ({reason})") from e


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


def _resample(name: str) -> Image.Resampling:
    if name not in RESAMPLE:
        raise ManifestError(f"image.resample: {name!r}; expected one of {', '.join(RESAMPLE)}")
    return RESAMPLE[name]


def pixel_values(image, spec: ImageSpec) -> np.ndarray:
    """The vision graph's input for ``image`` (see ``load_image``): float32 [1, 3, H, W].

    Steps, as transformers' PIL backend runs them: convert to RGB, Pillow resize, center
    crop, rescale in float64 then cast to float32, normalize in float32."""
    img = _open(image)
    if spec.convert_rgb:
        img = to_rgb(img)
    elif img.mode != "RGB":
        raise InputError(f"image: mode {img.mode}; this model's preprocessing takes RGB images only")
    height, width = resize_size(img.height, img.width, spec)
    arr = np.asarray(img.resize((width, height), resample=_resample(spec.resample)))  # [h, w, 3] uint8
    if spec.center_crop:
        arr = center_crop(arr, int(spec.size[0]), int(spec.size[1]))  # [H, W, 3]
    x = (arr.transpose(2, 0, 1).astype(np.float64) * spec.rescale_factor).astype(np.float32)  # [3, H, W]
    if spec.normalize:
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
        x = (x - mean) / std
    return np.ascontiguousarray(x[None])  # [1, 3, H, W]


class PromptEncoder:
    """Turns a user's question into the chain's input ids, image placeholder expanded.

    ``tokenizer_path`` is the manifest folder's tokenizer.json; ``spec`` its ``PromptSpec``.
    """

    def __init__(self, tokenizer_path: str | os.PathLike, spec: PromptSpec):
        """Load the tokenizer and check that it knows ``spec.image_token`` as ``image_token_id``."""
        self.spec = spec
        self.tokenizer = _load_tokenizer(Path(tokenizer_path))
        found = self.tokenizer.token_to_id(spec.image_token)
        if found != spec.image_token_id:
            raise ManifestError(
                f"prompt.image_token_id: expected {spec.image_token!r} to be id {spec.image_token_id}, "
                f"{tokenizer_path} has {found}"
            )

    def encode(self, prompt: str) -> tuple[np.ndarray, int]:
        """Input ids int64 [S] for ``prompt`` in the template, and the offset of the first of
        the ``n_image_tokens`` image tokens. ``InputError`` for an empty prompt or one that
        contains the image token.

        The processor expands the image token in the text before tokenizing; the image token
        is a special added token, so encoding the expanded text gives its ids exactly."""
        spec = self.spec
        text = render(spec.template, prompt, spec.image_token)
        text = text.replace(spec.image_token, spec.image_token * spec.n_image_tokens)
        enc = self.tokenizer.encode(text, add_special_tokens=spec.add_special_tokens)
        ids = np.asarray(enc.ids, dtype=np.int64)  # [S]
        where = np.flatnonzero(ids == spec.image_token_id)
        if len(where) != spec.n_image_tokens or where[-1] - where[0] != len(where) - 1:
            raise ManifestError(
                f"prompt.template: encodes to {len(where)} image tokens, "
                f"expected {spec.n_image_tokens} in one block"
            )
        return ids, int(where[0])

    def decode(self, ids) -> str:
        """Text of ``ids`` (any int sequence or array), special tokens skipped."""
        return self.tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)


def _load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise ManifestError(f"{path}: no such file; expected the exported tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for every parse failure
        raise ManifestError(f"{path}: cannot read tokenizer ({' '.join(str(e).split())})") from e
    tok.no_truncation()  # transformers ignores a saved truncation/padding unless asked;
    tok.no_padding()  # left on, 576 image tokens could be cut short
    return tok
