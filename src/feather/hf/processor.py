"""Read a checkpoint's HF processor into the manifest's ``ImageSpec`` and ``PromptSpec``.

The runtime (``feather.runtime.preprocess``) replays these specs with Pillow, numpy and
tokenizers. Anything the runtime cannot reproduce exactly (padding, tiling, variable output
sizes, other processor classes) fails here, at export, with ``ModelError`` naming the
attribute, rather than at run time with silently different pixels.
"""

from __future__ import annotations

import enum

from PIL import Image

from feather.errors import ModelError
from feather.image import RESAMPLE
from feather.manifest import ImageSpec, PromptSpec
from feather.prompt import template_from_processor

SUPPORTED_IMAGE_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor")
"""Base names (``Pil`` / ``Fast`` suffix dropped) whose pipeline is resize, crop, rescale, normalize."""


def image_spec_from_processor(image_processor, tiled: bool = False) -> ImageSpec:
    """The ``ImageSpec`` that reproduces ``image_processor`` (a CLIP or SigLIP image processor;
    with ``tiled``, a LLaVA-NeXT one, see ``next_image_spec``).

    Raises ``ModelError`` naming the attribute the runtime cannot reproduce."""
    ip = image_processor
    if tiled:
        return next_image_spec(ip)
    _check_supported(ip)
    crop, shortest = _crop_and_resize(ip)
    mean, std = _channels(ip, "image_mean"), _channels(ip, "image_std")
    return ImageSpec(
        size=crop,
        resize_shortest_edge=shortest,
        resample=resample_name(getattr(ip, "resample", None)),
        center_crop=bool(getattr(ip, "do_center_crop", False)),
        rescale_factor=float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0,
        normalize=bool(getattr(ip, "do_normalize", False)),
        mean=mean,
        std=std,
        convert_rgb=bool(getattr(ip, "do_convert_rgb", False)),  # None: transformers skips it too
    )


def next_image_spec(ip) -> ImageSpec:
    """A ``LlavaNextImageProcessor``'s per-image steps as an ``ImageSpec`` of ``size`` S x S.

    Every image it feeds the tower is already S x S before its own resize and crop: the base is
    the frame resized straight to S x S, each tile an S x S cut of the padded frame. So its
    shortest-edge resize to S and centre crop to S x S change nothing, and the spec is a straight
    resize (of the base; tiles are cut at ``TileSpec`` sizes by the runtime), rescale, normalize."""
    name = type(ip).__name__.removesuffix("Pil").removesuffix("Fast")
    if name != "LlavaNextImageProcessor":
        raise ModelError(f"image_processor: {type(ip).__name__} is not supported for LLaVA-NeXT; "
                         "expected LlavaNextImageProcessor")
    size, crop = _size(ip.size), _size(getattr(ip, "crop_size", None))
    side = size.get("shortest_edge")
    if set(size) != {"shortest_edge"} or crop != {"height": side, "width": side}:
        raise ModelError(f"image_processor.size: {size} with crop_size {crop}; expected a shortest edge S "
                         "and an S x S crop (llava-v1.6's)")
    mean, std = _channels(ip, "image_mean"), _channels(ip, "image_std")
    return ImageSpec(
        size=[int(side), int(side)], resize_shortest_edge=None, resample=resample_name(getattr(ip, "resample", None)),
        center_crop=False, rescale_factor=float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0,
        normalize=bool(getattr(ip, "do_normalize", False)), mean=mean, std=std,
        convert_rgb=bool(getattr(ip, "do_convert_rgb", False)),
    )


def _check_supported(ip) -> None:
    name = type(ip).__name__
    if name.removesuffix("Pil").removesuffix("Fast") not in SUPPORTED_IMAGE_PROCESSORS:
        raise ModelError(
            f"image_processor: {name} is not supported; expected one of {', '.join(SUPPORTED_IMAGE_PROCESSORS)}"
        )
    if not getattr(ip, "do_resize", True):
        raise ModelError("image_processor.do_resize: False; the vision graph needs a fixed input size")
    if getattr(ip, "do_pad", None):
        raise ModelError("image_processor.do_pad: True; padding is not reproduced by the runtime")


def _size(value) -> dict:
    """A size dict or transformers' ``SizeDict`` (iterates its set pairs) as a plain dict."""
    if value is None:
        return {}
    return {k: v for k, v in dict(value).items() if v is not None}


def _crop_and_resize(ip) -> tuple[list[int], int | None]:
    """(final [height, width], shortest edge or None for a straight resize)."""
    size, crop = _size(ip.size), _size(getattr(ip, "crop_size", None))
    do_crop = bool(getattr(ip, "do_center_crop", False))
    if set(size) == {"shortest_edge"}:
        if not do_crop or set(crop) != {"height", "width"}:
            raise ModelError(
                f"image_processor.crop_size: {crop or None} with do_center_crop={do_crop}; a shortest-edge "
                "resize needs a center crop to a fixed height and width"
            )
        return [int(crop["height"]), int(crop["width"])], int(size["shortest_edge"])
    if set(size) == {"height", "width"}:
        hw = [int(size["height"]), int(size["width"])]
        if do_crop and [crop.get("height"), crop.get("width")] != hw:
            raise ModelError(
                f"image_processor.crop_size: {crop} after a resize to {size}; only a crop equal to the "
                "resize is supported"
            )
        return hw, None
    raise ModelError(f"image_processor.size: {size}; expected {{'shortest_edge'}} or {{'height', 'width'}}")


def _channels(ip, name: str) -> list[float]:
    value = getattr(ip, name, None)
    if value is None:
        return [0.0, 0.0, 0.0] if name == "image_mean" else [1.0, 1.0, 1.0]
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ModelError(f"image_processor.{name}: {list(values)}; expected 3 values (RGB)")
    return values


def resample_name(value) -> str:
    """``ImageSpec.resample`` for a processor's ``resample``: a PIL filter (int or enum) or a
    torchvision ``InterpolationMode``; ``None`` is bilinear, the default of transformers' PIL resize.

    A plain string is refused: transformers' PIL backend resizes with bilinear whatever the
    string says, so no name reproduces it faithfully."""
    if value is None:
        return "bilinear"
    if isinstance(value, enum.Enum) and isinstance(value.value, str):  # torchvision InterpolationMode
        name = value.value
    elif isinstance(value, str):
        raise ModelError(
            f"image_processor.resample: {value!r} (a string); transformers resizes with bilinear for any "
            "string, so set a PIL filter number instead (2 = bilinear, 3 = bicubic)"
        )
    else:
        try:
            name = Image.Resampling(int(value)).name.lower()
        except (TypeError, ValueError):
            name = repr(value)
    if name not in RESAMPLE:
        raise ModelError(f"image_processor.resample: {value!r}; expected one of {', '.join(RESAMPLE)}")
    return name


def prompt_spec_from_processor(processor, n_image_tokens: int, image_token_id: int) -> PromptSpec:
    """The ``PromptSpec`` for a ``LlavaProcessor``: its chat template rendered once around a
    ``{prompt}`` slot (LLaVA-1.5's ``USER: <image>\\n{prompt} ASSISTANT:`` when it has none).

    Raises ``ModelError`` when the template does not place exactly one image token."""
    image_token = getattr(processor, "image_token", None) or "<image>"
    template = template_from_processor(processor)
    if template.count(image_token) != 1 or template.count("{prompt}") != 1:
        raise ModelError(
            f"processor.chat_template: renders {template!r}; expected one {image_token!r} and one prompt"
        )
    return PromptSpec(
        template=template,
        image_token=image_token,
        image_token_id=int(image_token_id),
        n_image_tokens=int(n_image_tokens),
        add_special_tokens=True,  # what processor(text=...) does, and the PyTorch reference with it
    )
