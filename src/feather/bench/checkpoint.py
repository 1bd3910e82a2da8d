"""The benchmark checkpoint: LLaVA-1.5-7B's proportions at a width two CPU cores can run.

What is kept from LLaVA-1.5-7B (Llama-2-7B + CLIP ViT-L/14 at 336 px), because the
speed-up of in-LLM pruning depends on it:

* 576 image tokens on a 24 x 24 grid (336 px / patch 14), ~40 text tokens: the
  image / text balance that decides how much a pruned layer saves;
* 32 decoder layers, so K = 8 / 16 / 3 cut the same fractions of the depth;
* head_dim 128 and kv heads = heads (Llama-2-7B has no GQA), so attention's share of a
  layer and the KV bytes per token and head are the real ones;
* FFN / hidden = 1376 / 512 = 2.6875 (Llama-2-7B: 11008 / 4096 = 2.6875);
* a 24-layer CLIP tower whose width is 1/4 of the text width (CLIP-L 1024 / Llama 4096),
  with CLIP's FFN = 4 x width, so the vision tower's share of time to first token is kept.

What is scaled down: the width, 512 (4 heads of 128) instead of 4096 (32 heads), and the
vocabulary (the tiny checkpoint's 512-token BPE; the LM head runs on one position per
step, a small share at 7B too). Why 512 and not 256: at 256 the per-graph overheads of
ONNX Runtime (session calls, KV copies, the host-side selection) would weigh as much as
the matrix work and hide what pruning saves; at 512 one unpruned prefill is about 140
GFLOPs, ~2 s on two cores, which keeps ``--quick`` under 5 minutes.

The weights are random (seeded, std 0.2 as in the tiny checkpoint: at HF's default 0.02
greedy decoding repeats one token); the EOS row of the LM head is zeroed so that greedy
decoding never stops early and every row decodes the same number of tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

from feather import checkpoints

SEED = checkpoints.SEED
GEOMETRIES = ("bench", "tiny", "interleave-0.5b")

# 40 text tokens once the LLaVA-1.5 template is around it (BOS, "USER:", the newline after
# the image and "ASSISTANT:" included); the benchmark reports the count it measured.
PROMPT = "Describe the red round object on the left of the image and the blue box near the small cup."

SPEC = checkpoints.Spec(
    text=checkpoints.Text(hidden=512, ffn=1376, layers=32, heads=4, kv_heads=4, head_dim=128),
    vision=checkpoints.Vision(hidden=128, ffn=512, layers=24, heads=2),  # 336 px / patch 14, layer -2
    zero_eos_logit=True,
)


INTERLEAVE_SPEC = checkpoints.Spec(
    text=checkpoints.Text(family="qwen2", hidden=1024, ffn=2816, layers=24, heads=16, kv_heads=16,
                          max_positions=32768, tie_embeddings=True, rope_theta=1e6),
    vision=checkpoints.Vision(hidden=1152, ffn=4304, layers=26, heads=16, image_size=384, patch_size=14,
                              feature_layer=-1, tower="siglip"),
    pad_in_config=False, zero_eos_logit=True, vocab_size=151936, save_dtype="float16",
)
"""llava-interleave-qwen-0.5b-hf's full configuration with random seeded weights (0.86B
parameters, saved in fp16 as the hub's are): SigLIP so400m at 384 px / patch 14 (1152 wide,
FFN 4304, 16 heads; the checkpoint keeps 26 encoder layers and reads the last, ``full``
selection: 729 tokens) and Qwen1.5-0.5B (24 layers, 1024 wide, 16 heads, FFN 2816, rope
theta 1e6, a 151,936-row LM head tied to the embedding). Only the tokenizer is the tiny
512-token BPE; the head's rows beyond it are zero, so its cost is the real one."""


def default_cache_dir(geometry: str = "bench") -> Path:
    """``$FEATHER_CACHE/bench-llava`` (or ~/.cache/feather-vlm/bench-llava), beside tiny;
    ``interleave-0.5b`` builds into ``interleave-0.5b`` there."""
    from feather import tiny

    return tiny.default_cache_dir().with_name("bench-llava" if geometry == "bench" else geometry)


def resolve(geometry: str) -> Path:
    """The checkpoint folder for ``--geometry`` (``bench`` or ``tiny``), built on first use."""
    if geometry == "tiny":
        from feather import tiny

        return tiny.build()
    if geometry == "bench":
        return build()
    if geometry == "interleave-0.5b":
        return checkpoints.build(INTERLEAVE_SPEC, default_cache_dir(geometry))
    raise ValueError(f"geometry: got {geometry!r}, expected one of {', '.join(GEOMETRIES)}")


def build_config(vocab_size: int, image_token_id: int, pad_id: int):
    """The ``LlavaConfig`` of the benchmark geometry (see the module docstring)."""
    return checkpoints.build_config(SPEC, vocab_size, image_token_id, pad_id)


def build(path: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Build the benchmark checkpoint into ``path`` (default ``default_cache_dir()``) once;
    later calls return the folder (``feather.checkpoints.build``: written to a partial
    folder that is renamed into place, so an interrupted build leaves nothing half-written)."""
    return checkpoints.build(SPEC, path if path is not None else default_cache_dir(), overwrite=overwrite)


def flops_geometry(path: str | os.PathLike):
    """``feather.flops.Geometry`` read from a checkpoint's config.json (torch-free); like
    ``Geometry.llava_1_5_7b``, ``vision_layers`` counts the CLIP layers that run."""
    import json

    from feather.flops import Geometry

    cfg = json.loads((Path(path) / "config.json").read_text())
    t, v = cfg["text_config"], cfg["vision_config"]
    heads = t["num_attention_heads"]
    feature = cfg.get("vision_feature_layer", -2)  # LLaVA reads layer -2: the last CLIP layer never runs
    run = v["num_hidden_layers"] + feature + 1 if feature < 0 else feature
    cls = 1 if v.get("model_type", "clip_vision_model") == "clip_vision_model" else 0  # SigLIP has no CLS
    return Geometry(
        layers=t["num_hidden_layers"], hidden=t["hidden_size"], ffn=t["intermediate_size"], heads=heads,
        kv_heads=t.get("num_key_value_heads") or heads, head_dim=t.get("head_dim") or t["hidden_size"] // heads,
        vocab=t["vocab_size"], vision_layers=run, vision_hidden=v["hidden_size"],
        vision_ffn=v["intermediate_size"], n_patches=(v["image_size"] // v["patch_size"]) ** 2 + cls,
        projector_in=v["hidden_size"], projector_out=t["hidden_size"],
    )


def image_tokens(path: Path) -> int:
    """Image tokens the LLM sees per image: the patch grid (CLIP's CLS is dropped by LLaVA's
    ``default`` selection; SigLIP has none)."""
    import json

    v = json.loads((Path(path) / "config.json").read_text())["vision_config"]
    return (v["image_size"] // v["patch_size"]) ** 2
