"""The OpenAI chat-completions request, checked field by field, and the response bodies.

``parse_chat(body, limits)`` turns a decoded JSON body into a ``ChatRequest`` (prompt, one
decoded image, sampling, the operating point) or raises ``RequestError`` with the HTTP status
and one line naming the field. The image must be a base64 ``data:image/...`` URI: the server
never fetches a URL or opens a path that a client names.

The ``feather`` extension field chooses the operating point (``feather.points``): any of
``{"feather": {"ratio": 0.5, "stride": 2, "mode": "static"}}``, the rest from the export. Its
types are checked here; the range the export accepts by ``check_point`` (it needs the manifest).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from dataclasses import dataclass

from PIL import Image

from feather import jsonread, points
from feather.errors import InputError
from feather.image import ImageTooLargeError, load_image
from feather.sampling import Sampling

_DATA_URI = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),", re.ASCII)
# Fields an OpenAI client may send that this server cannot honour: refused when set, so a
# client never gets an answer that silently ignored what it asked for.
_UNSUPPORTED = {"n": 1, "stop": None, "tools": None, "tool_choice": None, "logprobs": False,
                "top_logprobs": None, "response_format": None, "functions": None}


class RequestError(Exception):
    """A bad request: HTTP ``status``, a one-line ``message``, the offending ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, " ".join(message.split()), param, code


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may carry."""

    max_body_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096
    default_max_tokens: int = 128
    body_timeout_s: float = 30.0  # the whole body must arrive within this (slow clients get 408)
    max_json_depth: int = jsonread.MAX_DEPTH  # a chat request nests 5 levels


@dataclass
class ChatRequest:
    """One checked request: what ``Pipeline.generate`` needs, plus the OpenAI options."""

    prompt: str
    image: Image.Image
    max_tokens: int
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    point: points.Point | None = None  # the ``feather`` field (None: not sent, the export's own point)


def parse_chat(body, limits: Limits) -> ChatRequest:
    """Check an OpenAI ``/v1/chat/completions`` body. -> ``ChatRequest``, or ``RequestError``."""
    if not isinstance(body, dict):
        raise RequestError(400, f"request body: expected a JSON object, got {_kind(body)}")
    for key, default in _UNSUPPORTED.items():
        if body.get(key, default) != default:
            raise RequestError(400, f"{key}: not supported by this server (leave it unset)", key)
    prompt, image_url = _messages(body.get("messages"))
    image = decode_image(image_url, limits.max_image_pixels)
    stream = _optional(body, "stream", bool, False)
    options = _optional(body, "stream_options", dict, {}) or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise RequestError(400, f"stream_options.include_usage: expected a boolean, got {_kind(include_usage)}",
                           "stream_options")
    return ChatRequest(prompt=prompt, image=image, max_tokens=_max_tokens(body, limits), sampling=_sampling(body),
                       stream=stream, include_usage=include_usage, model=_optional(body, "model", str, None),
                       point=_point(body))


FIELD = "feather"
"""The request's extension field: the operating point (``{"ratio", "stride", "mode"}``, any subset)."""


def _point(body: dict) -> points.Point | None:
    value = body.get(FIELD)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError(400, f"{FIELD}: expected an object with any of {', '.join(points.FIELDS)}, "
                           f"got {_kind(value)}", FIELD)
    try:
        return points.parse(value, FIELD)
    except InputError as err:
        raise RequestError(400, str(err), FIELD) from None


def check_point(manifest, point: points.Point | None) -> points.Point | None:
    """The point a request asked for, checked against the range the export accepts
    (``feather.points.resolve``): a 400 naming the field and the range otherwise. None stays
    None (the export's own point, and nothing handed to ``generate``)."""
    if point is None:
        return None
    try:
        return points.resolve(manifest, point, FIELD)
    except InputError as err:
        raise RequestError(400, str(err), FIELD) from None


def _messages(messages) -> tuple[str, str]:
    """The one user turn's text and its one image URL."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, f"messages: expected a non-empty list, got {_kind(messages)}", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(400, f"messages[{i}]: expected an object, got {_kind(m)}", "messages")
        if m.get("role") != "user":
            raise RequestError(400, f"messages[{i}].role: got {m.get('role')!r}; this export's prompt template takes "
                               "one user turn (no system or assistant messages)", "messages")
    if len(messages) != 1:
        raise RequestError(400, f"messages: got {len(messages)} user messages; expected one", "messages")
    texts, images = _parts(messages[0].get("content"))
    if not images:
        raise RequestError(400, "messages[0].content: no image; send one image_url part with a base64 data URI",
                           "messages")
    if len(images) > 1:
        raise RequestError(400, f"messages[0].content: {len(images)} images; this model takes one image per request",
                           "messages")
    prompt = "\n".join(texts).strip()
    if not prompt:
        raise RequestError(400, "messages[0].content: no text; ask a question about the image", "messages")
    return prompt, images[0]


def _parts(content) -> tuple[list[str], list[str]]:
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise RequestError(400, f"messages[0].content: expected a string or a list of parts, got {_kind(content)}",
                           "messages")
    texts, images = [], []
    for j, part in enumerate(content):
        where = f"messages[0].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise RequestError(400, f"{where}.image_url.url: expected a string, got {_kind(url)}", "messages")
            images.append(url)
        else:
            raise RequestError(400, f"{where}: expected {{'type': 'text', 'text': str}} or "
                               "{'type': 'image_url', 'image_url': {'url': str}}", "messages")
    return texts, images


def decode_image(url: str, max_pixels: int) -> Image.Image:
    """A ``data:image/...;base64,`` URI -> a decoded ``PIL.Image`` (EXIF-transposed, as
    ``feather-run`` reads a file). The pixel count is checked from the header, before decoding."""
    match = _DATA_URI.match(url)
    if match is None:
        raise RequestError(400, f"image_url: {_clip(url)} is not a data URI; this server never fetches URLs or opens "
                           "paths: send the image as data:image/...;base64,...", "messages", "image_url_not_data")
    mime, params = match["mime"].strip().lower(), match["params"].lower().split(";")
    if not mime.startswith("image/"):
        raise RequestError(400, f"image_url: data URI of type {mime or 'text/plain'!r}; expected image/*", "messages")
    if "base64" not in params:
        raise RequestError(400, "image_url: data URI is not base64-encoded; expected ;base64,", "messages")
    try:
        data = base64.b64decode(url[match.end():], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "image_url: data URI payload is not valid base64", "messages") from None
    return open_image_bytes(data, max_pixels)


def open_image_bytes(data: bytes, max_pixels: int) -> Image.Image:
    """Encoded image bytes (PNG, JPEG, ...) -> an RGB ``PIL.Image`` through ``feather.image.load_image``,
    the loader feather-run uses: the pixel count is read from the header and checked against
    ``max_pixels`` before decoding; EXIF-transposed; every mode converted by its rules."""
    try:
        return load_image(data, max_pixels)
    except ImageTooLargeError as err:
        raise RequestError(400, _no_repr(str(err)), "messages", "image_too_large") from None
    except InputError as err:
        raise RequestError(400, _no_repr(str(err)), "messages") from None


def _no_repr(message: str) -> str:
    """``message`` without the repr of an in-memory buffer (``<_io.BytesIO object at 0x...>``)
    that Pillow's own messages may carry."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the image", message)
    return text if len(text) <= 200 else text[:200] + "..."


def _max_tokens(body: dict, limits: Limits) -> int:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return limits.default_max_tokens
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(400, f"{key}: expected an integer >= 1, got {_shown(value)}", key)
    return value


def _sampling(body: dict) -> Sampling:
    """Greedy unless ``temperature`` > 0 (the default is feather-run's greedy, not OpenAI's 1.0)."""
    temperature = _number(body, "temperature", 0.0, lambda v: 0.0 <= v <= 2.0, "a number in [0, 2]")
    top_p = _number(body, "top_p", 1.0, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
    seed = _optional(body, "seed", int, None)
    if seed is None:
        seed = secrets.randbits(63)  # OpenAI semantics: unseeded sampling differs per request
    return Sampling(temperature=float(temperature), top_p=float(top_p), seed=seed)


def _number(body: dict, key: str, default: float, ok, expected: str) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise RequestError(400, f"{key}: expected {expected}, got {_shown(value)}", key)
    return value


def _optional(body: dict, key: str, kind: type, default):
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError(400, f"{key}: expected {_TYPE_NAMES[kind]}, got {_kind(value)}", key)
    return value


_TYPE_NAMES = {bool: "a boolean", int: "an integer", str: "a string", dict: "an object"}


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _shown(value) -> str:
    return repr(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _kind(value)


def _clip(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


# -- responses ---------------------------------------------------------------------------
def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": " ".join(str(message).split()), "type": kind, "param": param, "code": code}}


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def completion_body(cid: str, model: str, result, prompt_tokens: int, info: dict | None = None) -> dict:
    """A ``chat.completion`` with ``usage`` and the ``feather`` extension; ``finish_reason`` is
    the result's ("stop" at end-of-sequence, "length" at ``max_tokens``)."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason}],
        "usage": usage(prompt_tokens, len(result.tokens)),
        "feather": feather_extension(result, info),
    }


def chunk_body(cid: str, model: str, delta: dict, finish_reason: str | None = None, **extra) -> dict:
    """One ``chat.completion.chunk`` of a stream."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def feather_extension(result, info: dict | None = None) -> dict:
    """Kept image indices per pruning stage, the token ids, the timings (s) and the operating
    point that ran (``point``: ratio, stride, mode, as ``Result.point``; null for an export that
    prunes nothing), plus ``info`` (``export_info``: the token grid, the operating point, the
    range of points accepted) when given. ``operating_point`` then describes the point that ran:
    its ratio, stride and mode, and each stage's kept count in this answer."""
    point = getattr(result, "point", None)
    ext = {"tokens": list(result.tokens), "stages": result.stages, "timings": result.timings, **(info or {}),
           "point": point}
    if point is not None and "operating_point" in ext:
        ext["operating_point"] = {**ext["operating_point"], **point,
                                  "stages": [{"layer": s["layer"], "keep": len(s["kept"])} for s in result.stages]}
    return ext


def export_info(manifest) -> dict:
    """What a client needs to draw the kept tokens (``grid``: token ``i`` covers row ``i // grid``,
    column ``i % grid`` of the model's view; ``center_crop``: that view is the centre square), the
    export's own operating point (criterion, K, ratio R, stride, mode, stages with the tokens each
    keeps) and ``points``, the range a request's ``feather`` field may choose from (null: an
    export that prunes nothing)."""
    p = manifest.pruning
    tiled = getattr(manifest, "tiles", None) is not None
    accepts = None
    if p.stages:
        (rlo, rhi), (slo, shi), modes = points.accepted(manifest)
        accepts = {"ratio": [rlo, rhi], "stride": [slo, shi], "modes": list(modes)}
    return {"grid": None if tiled else manifest.dims.grid, "n_image": manifest.dims.n_image,
            "center_crop": bool(manifest.image.center_crop),
            "operating_point": {"criterion": p.criterion, "K": list(p.K), "ratio": p.ratio, "stride": p.stride,
                                "mode": p.mode, "stages": [{"layer": s.layer, "keep": s.keep} for s in p.stages]},
            "points": accepts}
