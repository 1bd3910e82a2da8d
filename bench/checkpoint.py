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

SEED = 0
GEOMETRIES = ("bench", "tiny")

# 40 text tokens once the LLaVA-1.5 template is around it (BOS, "USER:", the newline after
# the image and "ASSISTANT:" included); the benchmark reports the count it measured.
PROMPT = "Describe the red round object on the left of the image and the blue box near the small cup."

TEXT = {"hidden": 512, "heads": 4, "head_dim": 128, "ffn": 1376, "layers": 32}
VISION = {"hidden": 128, "heads": 2, "ffn": 512, "layers": 24}


def default_cache_dir() -> Path:
    """``$FEATHER_CACHE/bench-llava`` (or ~/.cache/feather-vlm/bench-llava), beside tiny."""
    from feather import tiny

    return tiny.default_cache_dir().with_name("bench-llava")


def resolve(geometry: str) -> Path:
    """The checkpoint folder for ``--geometry`` (``bench`` or ``tiny``), built on first use."""
    if geometry == "tiny":
        from feather import tiny

        return tiny.build()
    if geometry == "bench":
        return build()
    raise ValueError(f"geometry: got {geometry!r}, expected one of {', '.join(GEOMETRIES)}")


def build_config(vocab_size: int, image_token_id: int, pad_id: int):
    """The ``LlavaConfig`` of the benchmark geometry (see the module docstring)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=VISION["hidden"], intermediate_size=VISION["ffn"], num_hidden_layers=VISION["layers"],
        num_attention_heads=VISION["heads"], image_size=336, patch_size=14, projection_dim=VISION["hidden"],
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=TEXT["hidden"], intermediate_size=TEXT["ffn"],
        num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"], num_key_value_heads=TEXT["heads"],
        head_dim=TEXT["head_dim"], max_position_embeddings=4096, rms_norm_eps=1e-5, initializer_range=0.2,
        bos_token_id=1, eos_token_id=2, pad_token_id=pad_id,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576,
        pad_token_id=pad_id,
    )


def _processor(tok):
    """A ``LlavaProcessor`` set up exactly like the tiny checkpoint's (CLIP at 336 px)."""
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    from feather import tiny

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": tiny.IMAGE_TOKEN},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=hf_tok, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


def _model(config, eos_id: int):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():  # let the image move the answer
            p.mul_(4.0)
        model.lm_head.weight[eos_id] = 0.0  # logit 0 never wins over 511 random ones: no early stop
    return model


def build(path: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Build the benchmark checkpoint into ``path`` (default ``default_cache_dir()``) once;
    later calls return the folder. Written with ``save_pretrained`` to a partial folder
    that is renamed into place, so an interrupted build leaves nothing half-written."""
    import shutil

    from feather import tiny

    out = Path(path) if path is not None else default_cache_dir()
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists() and not overwrite:
        return out
    tok = tiny.build_tokenizer()
    image_id, pad_id, eos_id = (tok.token_to_id(t) for t in (tiny.IMAGE_TOKEN, "<pad>", "</s>"))
    model = _model(build_config(tok.get_vocab_size(), image_id, pad_id), eos_id)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    _processor(tok).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


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
    return Geometry(
        layers=t["num_hidden_layers"], hidden=t["hidden_size"], ffn=t["intermediate_size"], heads=heads,
        kv_heads=t.get("num_key_value_heads") or heads, head_dim=t.get("head_dim") or t["hidden_size"] // heads,
        vocab=t["vocab_size"], vision_layers=run, vision_hidden=v["hidden_size"],
        vision_ffn=v["intermediate_size"], n_patches=(v["image_size"] // v["patch_size"]) ** 2 + 1,
        projector_in=v["hidden_size"], projector_out=t["hidden_size"],
    )
