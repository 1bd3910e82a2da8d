"""A tiny, seeded LLaVA checkpoint built in code: the fixture every test and the README use.

Real geometry where it matters (CLIP at 336 px / patch 14 -> 576 image tokens on a
24 x 24 grid, 24 Llama layers with GQA, a real BPE tokenizer that knows ``<image>``, a
``LlavaProcessor``), tiny widths so that it builds and runs in seconds. It is written
with ``save_pretrained`` and always loaded back with ``from_pretrained``, the path a
user's checkpoint takes. ``--model tiny`` anywhere in the toolkit means this checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

SEED = 0
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
VOCAB_SIZE = 512

_WORDS = (
    "the a an this that image photo picture shows there is are of in on at with near left right top "
    "bottom middle red green blue yellow white black cat dog person car tree house sky road box bowl "
    "table robot arm gripper cup bottle shelf door window floor wall light dark small large round "
    "square what where which how many color object region describe provide bounding coordinate "
    "sentence answer question user assistant yes no one two three four five it its and or but"
).split()


def default_cache_dir() -> Path:
    """Where ``--model tiny`` lives: $FEATHER_CACHE or ~/.cache/feather-vlm, then tiny-llava."""
    root = os.environ.get("FEATHER_CACHE") or Path.home() / ".cache" / "feather-vlm"
    return Path(root) / "tiny-llava"


def _corpus(n: int = 4000) -> list[str]:
    rng = random.Random(SEED)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ","]))
    return lines


def build_tokenizer():
    """A byte-level BPE trained with ``tokenizers`` on a seeded corpus; BOS added by its
    post-processor, so the plain ``tokenizers`` library encodes exactly like transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def build_config(vocab_size: int, image_token_id: int, pad_id: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        image_size=336, patch_size=14, projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=172, num_hidden_layers=24,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=pad_id,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576,
        pad_token_id=pad_id,
    )


def build(path: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Build the tiny checkpoint into ``path`` (default: ``default_cache_dir()``) and
    return the folder. Skips the work when a complete build is already there."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    out = Path(path) if path is not None else default_cache_dir()
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists() and not overwrite:
        return out
    tok = build_tokenizer()
    image_id, pad_id = tok.token_to_id(IMAGE_TOKEN), tok.token_to_id("<pad>")
    config = build_config(tok.get_vocab_size(), image_id, pad_id)
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # wider vision/projector weights so image content moves the answer
        for p in model.model.multi_modal_projector.parameters():
            p.mul_(4.0)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=hf_tok, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


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
