"""A tiny, seeded LLaVA checkpoint built in code: the fixture every test and the README use.

Real geometry where it matters (CLIP at 336 px / patch 14 -> 576 image tokens on a
24 x 24 grid, 24 Llama layers with GQA, a real BPE tokenizer that knows ``<image>``, a
``LlavaProcessor``), tiny widths so that it builds and runs in seconds. It is written
with ``save_pretrained`` and always loaded back with ``from_pretrained``, the path a
user's checkpoint takes. ``--model tiny`` anywhere in the toolkit means this checkpoint.
The builder is ``feather.checkpoints``; this module is its parameters and its cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from feather import checkpoints
from feather.checkpoints import IMAGE_TOKEN, SEED, SPECIAL_TOKENS, VOCAB_SIZE, build_tokenizer

__all__ = [
    "IMAGE_TOKEN", "SEED", "SPECIAL_TOKENS", "SPEC", "VOCAB_SIZE",
    "build", "build_config", "build_tokenizer", "default_cache_dir", "main", "sample_image",
]

SPEC = checkpoints.Spec(
    text=checkpoints.Text(hidden=64, ffn=172, layers=24, heads=4, kv_heads=2, head_dim=16),
    vision=checkpoints.Vision(hidden=64, ffn=128, layers=4, heads=4),  # 336 px / patch 14, layer -2
)


def default_cache_dir() -> Path:
    """Where ``--model tiny`` lives: $FEATHER_CACHE or ~/.cache/feather-vlm, then tiny-llava."""
    root = os.environ.get("FEATHER_CACHE") or Path.home() / ".cache" / "feather-vlm"
    return Path(root) / "tiny-llava"


def build_config(vocab_size: int, image_token_id: int, pad_id: int):
    """The tiny checkpoint's ``LlavaConfig``."""
    return checkpoints.build_config(SPEC, vocab_size, image_token_id, pad_id)


def build(path: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Build the tiny checkpoint into ``path`` (default: ``default_cache_dir()``) and
    return the folder. Skips the work when a complete build is already there."""
    return checkpoints.build(SPEC, path if path is not None else default_cache_dir(), overwrite=overwrite)


def sample_image():
    """A deterministic 400 x 300 RGB test picture (shapes on a gradient), built with Pillow."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:300, 0:400]
    rgb = np.stack([x * 255 // 400, y * 255 // 300, (x + y) * 255 // 700], -1).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 40, 160, 160), fill=(220, 30, 30))
    draw.rectangle((220, 120, 360, 260), fill=(30, 60, 220))
    draw.polygon([(200, 20), (260, 100), (140, 100)], fill=(240, 220, 40))
    return img


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m feather.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="folder (default: %(default)s -> cache dir)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    print(build(args.output, overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
