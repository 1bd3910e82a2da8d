"""Loading a HF LLaVA checkpoint and reading the geometry FEATHER needs from it."""

from __future__ import annotations

import math
import os

from feather import layout
from feather.errors import ConfigError, ModelError
from feather.hf.validate import check_config, from_pretrained
from feather.layout import Layout
from feather.manifest import PRECISION_DTYPE, Dims
from feather.text import first_line

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
TEXT_BACKBONES = ("llama", "mistral", "qwen2")
"""Text models whose decoder layers share Llama's shape (RMSNorm, q/k/v/o, rotate-half RoPE,
gated MLP); Qwen2 adds q/k/v biases, which its own projections carry."""
VISION_TOWERS = {"clip_vision_model": 1, "siglip_vision_model": 0}
"""Vision towers -> how many tokens they put before the G x G patches (CLIP's CLS; SigLIP has none)."""
SELECT_DROPS = {"default": 1, "full": 0}
MODEL_CLASSES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}
"""``model_type`` -> the transformers class that loads it."""
"""``vision_feature_select_strategy`` -> how many leading tokens LLaVA drops (``default`` drops one)."""


def resolve(model: str) -> str:
    """``tiny`` -> the tiny checkpoint's folder (built on first use); anything else as given."""
    if model == "tiny":
        from feather import tiny

        return str(tiny.build())
    return model


def load_config(model: str):
    """The checkpoint's ``LlavaConfig``, or a one-line ``ModelError`` saying why not."""
    path = resolve(model)
    looks_local = model.startswith((".", "/", "~")) or os.path.exists(model)  # HF ids are "org/name"
    if looks_local and not os.path.isdir(path):
        raise ModelError(f"{model}: no such checkpoint folder")
    try:
        config = from_pretrained(model, path)  # feather.hf.validate: transformers' own checks in one line
    except (OSError, ValueError) as err:
        raise ModelError(
            f"{model}: cannot load the checkpoint ({first_line(err)}); offline, use --model tiny or a local folder"
        ) from None
    _check_supported(model, config)
    check_config(model, config)  # absurd numbers refused before any weight is allocated
    return config


def _check_supported(model: str, config) -> None:
    if config.model_type not in MODEL_CLASSES:
        raise ModelError(
            f"{model}: model_type {config.model_type!r} is not LLaVA; "
            "expected a LlavaForConditionalGeneration or LlavaNextForConditionalGeneration checkpoint"
        )
    if config.model_type == "llava_next" and config.vision_feature_select_strategy != "default":
        strategy = config.vision_feature_select_strategy
        raise ModelError(f"{model}: LLaVA-NeXT with vision_feature_select_strategy {strategy!r}; "
                         "only 'default' (CLIP, its CLS dropped) is supported")
    text_type = config.text_config.model_type
    if text_type not in TEXT_BACKBONES:
        raise ModelError(f"{model}: text model {text_type!r} is not supported; expected one of {TEXT_BACKBONES}")
    if not isinstance(config.vision_feature_layer, int):
        raise ModelError(f"{model}: vision_feature_layer {config.vision_feature_layer!r}; expected one layer index")
    _check_grid(model, config)


def _check_grid(model: str, config) -> None:
    """The selected features must be exactly the G x G patches: CLIP's CLS dropped (``default``),
    SigLIP's patches taken whole (``full``); anything else is not a square grid to prune on."""
    tower, strategy = config.vision_config.model_type, config.vision_feature_select_strategy
    if tower not in VISION_TOWERS:
        raise ModelError(f"{model}: vision tower {tower!r} is not supported; expected one of {tuple(VISION_TOWERS)}")
    if strategy not in SELECT_DROPS:
        raise ModelError(f"{model}: vision_feature_select_strategy {strategy!r}; expected one of {tuple(SELECT_DROPS)}")
    extra = VISION_TOWERS[tower] - SELECT_DROPS[strategy]  # tokens beside the G x G patches
    if extra != 0:
        v = config.vision_config
        g = v.image_size // v.patch_size
        n = g * g + extra
        what = "the CLS token stays in front of the patches" if extra > 0 else "the first patch is dropped"
        raise ModelError(
            f"{model}: vision_feature_select_strategy {strategy!r} on a {tower} gives {n} image tokens "
            f"({what}), not a square {g} x {g} grid; FEATHER's criteria need one"
        )


def torch_dtype(precision: str):
    """The torch dtype an export ``precision`` loads the checkpoint in (``PRECISION_DTYPE``)."""
    import torch

    return getattr(torch, PRECISION_DTYPE[precision])


def load(model: str, dtype=None):
    """``(model, processor)`` through transformers' ``from_pretrained`` (``MODEL_CLASSES``)."""
    import torch
    import transformers

    config = load_config(model)
    path = resolve(model)
    cls = getattr(transformers, MODEL_CLASSES[config.model_type])
    net = cls.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True).eval()  # never pickle
    return net, load_processor(model)


def load_processor(model: str):
    """The checkpoint's processor (``AutoProcessor``, Pillow backend), or one ``ModelError`` line."""
    from transformers import AutoProcessor

    path = resolve(model)
    try:
        processor = AutoProcessor.from_pretrained(path)
        _use_pil_backend(processor, path)
    except (OSError, ValueError) as err:
        raise ModelError(f"{model}: cannot load its processor ({str(err).splitlines()[0]})") from None
    return processor


def _use_pil_backend(processor, path: str) -> None:
    """transformers 5 gives the torchvision image processor when torchvision is installed; its
    resize is not Pillow's, and the runtime replays Pillow (``feather.runtime.preprocess``). The PIL
    backend keeps export's ``ImageSpec``, the reference and the runtime on the same pixels."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and getattr(image_processor, "backend", "pil") != "pil":
        from transformers import AutoImageProcessor

        processor.image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")


def is_next(config) -> bool:
    """A LLaVA-NeXT checkpoint (tiled images; exports need a frame size)."""
    return config.model_type == "llava_next"


def frame_tiles(config, image_size: tuple[int, int] | None):
    """The NeXT tiling an export for frames of ``image_size`` ``(width, height)`` uses (None for a
    square-grid LLaVA); ``ConfigError`` in one line for a size a NeXT checkpoint lacks or another
    checkpoint was given (checked from the config, before any weight loads)."""
    if not is_next(config):
        if image_size is not None:
            raise ConfigError("image_size: only LLaVA-NeXT checkpoints take a frame size (their tiles depend "
                              "on it); this checkpoint resizes every image to one square")
        return None
    if image_size is None:
        raise ConfigError("image_size: a LLaVA-NeXT export is for one frame size (its tile layout fixes the "
                          "token counts); pass --image-size WIDTHxHEIGHT, your camera's resolution")
    return tiles(config, image_size)


def layout_for(config, tile_spec, stride: int) -> Layout:
    """Where the image tokens sit and which a stage may prune: the G x G grid, or LLaVA-NeXT's
    base + tiles + newlines for ``tile_spec`` (``frame_tiles`` / ``tiles``)."""
    v = config.vision_config
    return layout.for_tiles(v.image_size // v.patch_size, tile_spec, stride)


def tiles(config, frame: tuple[int, int]):
    """LLaVA-NeXT's tiling of a ``(width, height)`` frame as the manifest's ``TileSpec``, from
    transformers' own functions (``select_best_resolution``, ``get_patch_output_size``,
    ``unpad_image``), so export, runtime and reference count the same tokens."""
    import numpy as np
    import torch
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    from feather.manifest.schema import TileSpec

    width, height = frame
    v = config.vision_config
    res = select_best_resolution((height, width), config.image_grid_pinpoints)
    resized = get_patch_output_size(np.zeros((height, width, 1)), res, input_data_format="channels_last")
    rows, cols = res[0] // v.image_size, res[1] // v.image_size
    g = v.image_size // v.patch_size
    feats = unpad_image(torch.zeros(1, rows * g, cols * g), (height, width)).shape[1:]
    return TileSpec(frame=[height, width], resolution=list(res), resized=[int(x) for x in resized],
                    grid=[rows, cols], features=[int(x) for x in feats])


def geometry(config, tile_spec=None) -> Dims:
    """The numbers the method, the export and the manifest need, as the manifest's ``Dims``.
    With a NeXT ``tile_spec``, ``n_image`` counts the whole block (base, tile features, newlines)."""
    t, v = config.text_config, config.vision_config
    patches = (v.image_size // v.patch_size) ** 2  # the selected features: G x G patches (see _check_grid)
    grid = math.isqrt(patches)
    if tile_spec is not None:
        rows, cols = tile_spec.features
        patches += rows * (cols + 1)
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return Dims(
        num_layers=t.num_hidden_layers, hidden=t.hidden_size, heads=t.num_attention_heads,
        kv_heads=t.num_key_value_heads, head_dim=head_dim, vocab=t.vocab_size,
        intermediate=t.intermediate_size, n_image=patches, grid=grid, vision_hidden=v.hidden_size,
    )
