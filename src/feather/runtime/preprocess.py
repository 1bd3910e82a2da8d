"""Image and prompt preprocessing for the runtime: numpy, Pillow and tokenizers only.

Reproduces what the checkpoint's HF ``LlavaProcessor`` does (a CLIP / SigLIP image
processor on transformers' PIL backend, and the tokenizer), driven by the ``ImageSpec`` and
``PromptSpec`` that ``feather-export`` writes to feather.json. Each step names the
transformers function it mirrors; on the tiny checkpoint the pixel values are bit-identical
and the input ids identical (tests/runtime/test_preprocess.py).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from feather.errors import InputError, ManifestError
from feather.image import (  # noqa: F401 (load_image, to_rgb, the bounds re-exported: the runtime's API)
    EXACT_RESIZE_PIXELS,
    MAX_IMAGE_PIXELS,
    RESAMPLE,
    center_crop,
    load_image,
    open_image,
    resize_crop,
    resize_size,
    to_rgb,
)
from feather.prompt import check_prompt, encode_turn, text_tokenizer
from feather.runtime.detokenize import Detokenizer

if TYPE_CHECKING:
    from feather.manifest import ImageSpec, PromptSpec

DEFAULT_MAX_SEQ = 32768
"""``PromptEncoder``'s token bound when it is not given the export's ``max_seq``."""


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
    # the module's EXACT_RESIZE_PIXELS, read per call (tests lower it to force the window path)
    arr = resize_crop(img, spec, _resample(spec.resample), EXACT_RESIZE_PIXELS)  # [H, W, 3] uint8
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

    @functools.cached_property
    def text_tokenizer(self):
        """Copies of the tokenizer that read special-token strings as text (the user's part of a
        prompt that holds them); made on the first such prompt, not at load."""
        return text_tokenizer(self.tokenizer)

    def encode(self, prompt: str) -> tuple[np.ndarray, int]:
        """Input ids int64 [S] for ``prompt`` in the template, and the offset of the first of
        the ``n_image_tokens`` image tokens. ``InputError`` for a prompt that is not a str,
        is empty, is not valid UTF-8, contains the image token, or is longer than
        ``max_chars`` (it could not fit in ``max_seq`` tokens; refused before tokenizing).

        The processor expands the image token in the text before tokenizing; the image token
        is a special added token, so encoding the expanded text gives its ids exactly. The
        user's text is tokenized as text (``feather.prompt.encode_turn``): ``</s>`` typed in a
        prompt is the ids that spell it, not the end-of-sequence id."""
        spec = self.spec
        check_prompt(prompt)
        if len(prompt) > self.max_chars:
            raise InputError(f"prompt: {len(prompt):,} characters; it cannot fit the export's token limit "
                             f"(at most {self.max_chars:,} characters)")
        ids = encode_turn(self.tokenizer, lambda: self.text_tokenizer, spec.template, prompt, spec.image_token,
                          spec.n_image_tokens, spec.add_special_tokens)
        ids = np.asarray(ids, dtype=np.int64)  # [S]
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
