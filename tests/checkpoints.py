"""Checkpoints other than the tiny one, so that parity tests do not only cover the geometry
the tiny checkpoint chose. Built with ``feather.checkpoints``; every choice that differs
from tiny is a parameter here: another text family, another image grid and feature layer,
another seed, and no ``pad_token_id`` (as many hub checkpoints ship)."""

from __future__ import annotations

from pathlib import Path

from feather import checkpoints

# Qwen2 (q/k/v biases, GQA 6:2, head_dim from hidden / heads); CLIP at 224 px / patch 16
# (14 x 14 grid, 196 image tokens) read at its last layer.
QWEN = checkpoints.Spec(
    text=checkpoints.Text(family="qwen2", hidden=96, ffn=256, layers=20, heads=6, kv_heads=2, max_positions=2048),
    vision=checkpoints.Vision(hidden=48, ffn=96, layers=3, heads=4, image_size=224, patch_size=16, feature_layer=-1),
    seed=1,
    pad_in_config=False,
)


def build_qwen_llava(out: Path) -> Path:
    """Build the ``QWEN`` geometry into ``out`` and return it."""
    return checkpoints.build(QWEN, out)


# llava-interleave's shape: a SigLIP tower at 384 px / patch 14 (27 x 27 = 729 image tokens,
# no CLS, vision_feature_select_strategy "full", read at its last layer), a Qwen2 text model
# whose LM head is its embedding (tie_word_embeddings), enough layers for K = 8 16.
SIGLIP = checkpoints.Spec(
    text=checkpoints.Text(family="qwen2", hidden=64, ffn=160, layers=18, heads=4, kv_heads=2, max_positions=2048,
                          tie_embeddings=True),
    vision=checkpoints.Vision(hidden=32, ffn=64, layers=2, heads=2, image_size=384, patch_size=14, feature_layer=-1,
                              tower="siglip"),
    seed=2,
    pad_in_config=False,
)


# A tied head larger than a decoder layer, as at real size (Qwen1.5-0.5B: 155M head parameters, 12M
# per layer): a 4,096-row vocabulary over the 512-token BPE (rows beyond it zeroed) at width 64, so
# the head (262K parameters) is 5x a layer (~45K). CLIP tower at 224 px keeps it quick.
TIED_BIG_VOCAB = checkpoints.Spec(
    text=checkpoints.Text(family="qwen2", hidden=64, ffn=160, layers=18, heads=4, kv_heads=2, max_positions=2048,
                          tie_embeddings=True),
    vision=checkpoints.Vision(hidden=32, ffn=64, layers=2, heads=2, image_size=224, patch_size=14),
    seed=5,
    pad_in_config=False,
    vocab_size=4096,
)


def build_tied_llava(out: Path) -> Path:
    return checkpoints.build(TIED_BIG_VOCAB, out)


def build_siglip_llava(out: Path) -> Path:
    """Build the ``SIGLIP`` geometry into ``out`` and return it."""
    return checkpoints.build(SIGLIP, out)


# BakLLaVA's shape: a Mistral text model (GQA 4:1, sliding window 4096, longer than any prompt
# here) under a CLIP tower read at layer -2 with "default"; 224 px / patch 14 (16 x 16 = 256
# tokens) keeps it quick, the 336 px grid being the tiny checkpoint's.
MISTRAL = checkpoints.Spec(
    text=checkpoints.Text(family="mistral", hidden=64, ffn=160, layers=10, heads=4, kv_heads=1, head_dim=16,
                          max_positions=4096),
    vision=checkpoints.Vision(hidden=32, ffn=64, layers=2, heads=2, image_size=224, patch_size=14),
    seed=3,
)


def build_mistral_llava(out: Path) -> Path:
    """Build the ``MISTRAL`` geometry into ``out`` and return it."""
    return checkpoints.build(MISTRAL, out)


# llava-v1.6's shape, shrunk: LLaVA-NeXT with a CLIP tower at 112 px / patch 14 (an 8 x 8 grid per
# tile, 64 base tokens, "default", layer -2), tiles picked from 1 x 2, 2 x 1 and 2 x 2 tile
# resolutions, a Llama text model with enough layers for K = 2 4.
NEXT = checkpoints.Spec(
    text=checkpoints.Text(family="llama", hidden=64, ffn=128, layers=6, heads=4, kv_heads=2, max_positions=2048),
    vision=checkpoints.Vision(hidden=32, ffn=64, layers=2, heads=2, image_size=112, patch_size=14,
                              pinpoints=((112, 224), (224, 112), (224, 224))),
    seed=4,
)


def build_next_llava(out: Path) -> Path:
    """Build the ``NEXT`` geometry into ``out`` and return it."""
    return checkpoints.build(NEXT, out)
