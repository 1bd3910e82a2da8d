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
from PIL import Image
from tokenizers import Tokenizer

from feather.errors import InputError, ManifestError
from feather.image import (  # noqa: F401 (load_image, to_rgb re-exported: the runtime's API)
    MAX_IMAGE_PIXELS,
    RESAMPLE,
    center_crop,
    load_image,
    open_image,
    resize_size,
    to_rgb,
)
from feather.prompt import check_prompt, render
from feather.runtime.detokenize import Detokenizer

if TYPE_CHECKING:
    from feather.manifest import ImageSpec, PromptSpec

EXACT_RESIZE_PIXELS = 1 << 22
"""Up to this many resized pixels (4 MP) the image is resized whole, then center-cropped,
bit-identical to transformers. Beyond it (extreme aspect ratios: a 5000 x 1 strip would
resize to 1,680,000 x 336) only the crop window is resampled, which keeps memory at the
crop size and differs from the whole resize by float rounding only (docs/hardening.md)."""

DEFAULT_MAX_SEQ = 32768
"""``PromptEncoder``'s token bound when it is not given the export's ``max_seq``."""


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


def _resample(name: str) -> Image.Resampling:
    if name not in RESAMPLE:
        raise ManifestError(f"image.resample: {name!r}; expected one of {', '.join(RESAMPLE)}")
    return RESAMPLE[name]


def pixel_values(image, spec: ImageSpec) -> np.ndarray:
    """The vision graph's input for ``image`` (see ``load_image``): float32 [1, 3, H, W].

    Steps, as transformers' PIL backend runs them: convert to RGB, Pillow resize, center
    crop, rescale in float64 then cast to float32, normalize in float32."""
    img = open_image(image)
    if spec.convert_rgb:
        img = to_rgb(img)
    elif img.mode != "RGB":
        raise InputError(f"image: mode {img.mode}; this model's preprocessing takes RGB images only")
    height, width = resize_size(img.height, img.width, spec)
    resample = _resample(spec.resample)
    if spec.center_crop and height * width > EXACT_RESIZE_PIXELS:
        arr = _resize_crop_window(img, height, width, int(spec.size[0]), int(spec.size[1]), resample)
    elif height * width > EXACT_RESIZE_PIXELS:
        raise InputError(f"image: {img.width} x {img.height} resizes to {width} x {height} pixels; "
                         f"at most {EXACT_RESIZE_PIXELS:,} without a center crop")
    else:
        arr = np.asarray(img.resize((width, height), resample=resample))  # [h, w, 3] uint8
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

    ``tokenizer_path`` is the manifest folder's tokenizer.json; ``spec`` its ``PromptSpec``;
    ``max_seq`` the export's longest sequence (``DEFAULT_MAX_SEQ`` when not given), which
    bounds the prompt's length in characters before anything is tokenized.
    """

    def __init__(self, tokenizer_path: str | os.PathLike, spec: PromptSpec, max_seq: int | None = None):
        """Load the tokenizer and check that it knows ``spec.image_token`` as ``image_token_id``."""
        self.spec = spec
        self.tokenizer = _load_tokenizer(Path(tokenizer_path))
        added = self.tokenizer.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)  # the ids ``decode`` skips
        self.max_chars = max_prompt_chars(self.tokenizer, max_seq or DEFAULT_MAX_SEQ)
        found = self.tokenizer.token_to_id(spec.image_token)
        if found != spec.image_token_id:
            raise ManifestError(
                f"prompt.image_token_id: expected {spec.image_token!r} to be id {spec.image_token_id}, "
                f"{tokenizer_path} has {found}"
            )

    def encode(self, prompt: str) -> tuple[np.ndarray, int]:
        """Input ids int64 [S] for ``prompt`` in the template, and the offset of the first of
        the ``n_image_tokens`` image tokens. ``InputError`` for a prompt that is not a str,
        is empty, is not valid UTF-8, contains the image token, or is longer than
        ``max_chars`` (it could not fit in ``max_seq`` tokens; refused before tokenizing).

        The processor expands the image token in the text before tokenizing; the image token
        is a special added token, so encoding the expanded text gives its ids exactly."""
        spec = self.spec
        check_prompt(prompt)
        if len(prompt) > self.max_chars:
            raise InputError(f"prompt: {len(prompt):,} characters; it cannot fit the export's token limit "
                             f"(at most {self.max_chars:,} characters)")
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

    def stream(self) -> Detokenizer:
        """A ``Detokenizer`` for one answer: its text as the ids come, O(1) work per id; the
        pieces join to ``decode`` of all the ids."""
        return Detokenizer(self, self.special_ids)


def max_prompt_chars(tokenizer: Tokenizer, max_seq: int) -> int:
    """The longest prompt, in characters, that could still fit in ``max_seq`` tokens.

    Each token covers at most ``longest`` characters, ``longest`` being the longest entry
    of the vocabulary, added tokens included (byte-level BPE spells a token with one
    character per byte, so the count bounds its characters; Metaspace spells a space as one
    ``\u2581``). A normalizer that composes (NFC, NFKC) can fold up to 4 characters into
    one (U+1F82 is alpha plus 3 marks), so the bound is then 4 times larger. A prompt over
    ``max_seq * longest * fold`` characters therefore needs over ``max_seq`` tokens."""
    longest = max((len(t) for t in tokenizer.get_vocab(with_added_tokens=True)), default=1)
    normalizer = "" if tokenizer.normalizer is None else str(tokenizer.normalizer.__getstate__())
    fold = 4 if '"NFC"' in normalizer or '"NFKC"' in normalizer else 1
    return max_seq * max(longest, 1) * fold


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


def tiled_pixel_values(image, spec: ImageSpec, tiles) -> np.ndarray:
    """LLaVA-NeXT's vision input for one frame: float32 [1 + rows * cols, 3, S, S].

    As ``LlavaNextImageProcessor`` (PIL backend) does it: the base is the frame resized straight to
    S x S; the tiles come from the frame resized to ``tiles.resized`` (aspect ratio kept), zero-padded
    centred to ``tiles.resolution`` and cut row-major into S x S. Then rescale and normalize as
    ``pixel_values``. A frame of another size than ``tiles.frame`` is refused: the export's tile
    layout, hence its token counts, hold for that size only."""
    img = open_image(image)
    if spec.convert_rgb:
        img = to_rgb(img)
    elif img.mode != "RGB":
        raise InputError(f"image: mode {img.mode}; this model's preprocessing takes RGB images only")
    height, width = tiles.frame
    if (img.height, img.width) != (height, width):
        raise InputError(f"image: {img.width} x {img.height}; this LLaVA-NeXT export takes {width} x {height} frames "
                         "only (feather-export --image-size fixed its tiles); resize the frame or re-export")
    side, resample = int(spec.size[0]), _resample(spec.resample)
    base = np.asarray(img.resize((side, side), resample=resample))  # [S, S, 3]
    (rh, rw), (ph, pw) = tiles.resized, tiles.resolution
    canvas = np.zeros((ph, pw, 3), dtype=np.uint8)
    top, left = (ph - rh) // 2, (pw - rw) // 2
    canvas[top : top + rh, left : left + rw] = np.asarray(img.resize((rw, rh), resample=resample))
    rows, cols = tiles.grid
    cuts = [canvas[r * side : (r + 1) * side, c * side : (c + 1) * side] for r in range(rows) for c in range(cols)]
    x = (np.stack([base, *cuts]).transpose(0, 3, 1, 2).astype(np.float64) * spec.rescale_factor).astype(np.float32)
    if spec.normalize:
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
        x = (x - mean) / std
    return np.ascontiguousarray(x)  # [T, 3, S, S]


def model_pixel_values(image, manifest) -> np.ndarray:
    """The vision graph's input for ``image`` under ``manifest``: tiled for LLaVA-NeXT, else ``pixel_values``."""
    if getattr(manifest, "tiles", None) is not None:
        return tiled_pixel_values(image, manifest.image, manifest.tiles)
    return pixel_values(image, manifest.image)
