"""A checkpoint's config.json checked before any weight is allocated (torch-free).

transformers builds whatever config.json says: a vocabulary of -5, 1,000,000 layers or a hidden
size of 1e9 are allocated (or crash) long after the export started. ``check_config`` holds
every number the export uses to the bounds the manifest accepts (``feather.manifest.schema.
BOUNDS``: an export the runtime would refuse is refused first) and to the shapes the layers need
(heads dividing the width, KV heads dividing the heads, the image token inside the vocabulary),
each in one ``ModelError`` line naming the field, its value and what was expected."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from feather.errors import ModelError
from feather.manifest.schema import BOUNDS, MAX_IMAGE_SIDE

TEXT_FIELDS = {
    "num_hidden_layers": "dims.num_layers", "hidden_size": "dims.hidden", "num_attention_heads": "dims.heads",
    "num_key_value_heads": "dims.kv_heads", "vocab_size": "dims.vocab", "intermediate_size": "dims.intermediate",
}
"""text_config fields -> the manifest bound they must lie in."""
VISION_FIELDS = {
    "num_hidden_layers": "dims.num_layers", "hidden_size": "dims.vision_hidden",
    "num_attention_heads": "dims.heads", "intermediate_size": "dims.intermediate",
}
PROBE_S = 5.0
"""Seconds to wait for the hub's TCP handshake before working from the local cache."""
MAX_POSITIONS = 1 << 24
"""``max_position_embeddings`` beyond this is not a real model (RoPE tables are built from it)."""


def from_pretrained(model: str, path: str):
    """``AutoConfig.from_pretrained(path)``, with transformers' own field checks (a float width,
    heads not dividing it: huggingface_hub's ``StrictDataclassError``) as one ``ModelError`` line."""
    from huggingface_hub.errors import StrictDataclassError

    no_network = None if os.path.isdir(path) else offline_unless_reachable()
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except StrictDataclassError as err:
        shown = " ".join(str(err).split())
        raise ModelError(f"{model}: config.json is not valid ({shown[:300]})") from None
    except OSError:
        if no_network is None:
            raise
        raise ModelError(f"{model}: no network ({no_network}) and not in the local Hugging Face cache; "
                         "connect and retry, or pass a local checkpoint folder or --model tiny") from None
    if os.path.isdir(path):
        check_weights(model, path)
    return config


def check_weights(model: str, folder: str) -> None:
    """A local checkpoint must hold safetensors weights: pickled ones (``pytorch_model.bin``,
    ``*.pt``, ``*.pth``, ``*.ckpt``) are never loaded, since unpickling a file can run code."""
    names = os.listdir(folder)
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return
    pickled = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if pickled:
        raise ModelError(f"{model}: {pickled[0]} holds pickled weights, which feather does not load (unpickling "
                         "can run code); convert it to model.safetensors on a machine you trust, e.g. "
                         "save_pretrained(..., safe_serialization=True)")


def offline_unless_reachable(timeout: float = PROBE_S) -> str | None:
    """Before a hub id is resolved: when the hub (``HF_ENDPOINT``) cannot be reached, switch this
    process to the local cache (``HF_HUB_OFFLINE=1``), so a cached id loads at once and an
    uncached one fails in one line, instead of five retries over 25 s; return why it could not
    be reached. None (nothing changed) when it answers, when the user set ``HF_HUB_OFFLINE``, or
    behind a proxy (where a direct connection says nothing)."""
    import huggingface_hub.constants as hub

    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if hub.HF_HUB_OFFLINE or proxied:
        return None
    url = urlsplit(hub.ENDPOINT)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return None
    except (OSError, ValueError) as err:
        reason = " ".join(str(getattr(err, "strerror", None) or err).split())
        os.environ["HF_HUB_OFFLINE"] = "1"
        hub.HF_HUB_OFFLINE = True
        return f"{hub.ENDPOINT} cannot be reached: {reason}"


def check_config(model: str, config) -> None:
    """``ModelError`` (one line) for the first number in ``config`` (a LLaVA ``PretrainedConfig``)
    that is not an int in its bound, or shapes that do not fit together."""
    t, v = config.text_config, config.vision_config
    for field, bound in TEXT_FIELDS.items():
        _bounded(model, f"text_config.{field}", getattr(t, field, None), BOUNDS[bound])
    for field, bound in VISION_FIELDS.items():
        _bounded(model, f"vision_config.{field}", getattr(v, field, None), BOUNDS[bound])
    _bounded(model, "vision_config.image_size", v.image_size, (1, MAX_IMAGE_SIDE))
    _bounded(model, "vision_config.patch_size", v.patch_size, (1, v.image_size))
    image_id = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
    _bounded(model, "image_token_index", image_id, (0, t.vocab_size - 1))
    positions = getattr(t, "max_position_embeddings", None)
    if positions is not None:
        _bounded(model, "text_config.max_position_embeddings", positions, (1, MAX_POSITIONS))
    head_dim = getattr(t, "head_dim", None)
    if head_dim is not None:
        _bounded(model, "text_config.head_dim", head_dim, BOUNDS["dims.head_dim"])
    _divides(model, "text_config", t.num_attention_heads, "num_attention_heads", t.hidden_size, "hidden_size",
             needed=head_dim is None)
    _divides(model, "text_config", t.num_key_value_heads, "num_key_value_heads", t.num_attention_heads,
             "num_attention_heads")
    _divides(model, "vision_config", v.num_attention_heads, "num_attention_heads", v.hidden_size, "hidden_size")
    grid = v.image_size // v.patch_size
    _bounded(model, "vision_config.image_size / patch_size", grid, BOUNDS["dims.grid"])


def _bounded(model: str, name: str, value, bound: tuple[int, int]) -> None:
    lo, hi = bound
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise ModelError(f"{model}: config.json {name} is {shown}; expected an integer in [{lo:,}, {hi:,}]")


def _divides(model: str, where: str, part: int, part_name: str, whole: int, whole_name: str,
             needed: bool = True) -> None:
    if needed and whole % part:
        raise ModelError(f"{model}: config.json {where}.{part_name} = {part} does not divide "
                         f"{whole_name} = {whole}; expected a divisor")
