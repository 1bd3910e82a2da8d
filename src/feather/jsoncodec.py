"""A strict, type-hint-driven JSON codec for dataclasses (stdlib only).

Unknown keys, missing keys and wrong types raise ``ManifestError`` naming the JSON path
(``feather.json: segments[1].inputs.hidden: expected str, got int``). Hand-written because
pydantic / dacite / cattrs would add a runtime dependency for ~60 lines.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from feather.errors import ManifestError

MANIFEST_NAME = "feather.json"

_KINDS = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object"}


def fail(path: str, message: str) -> typing.NoReturn:
    where = f"{path}: " if path else ""
    raise ManifestError(f"{MANIFEST_NAME}: {where}{message}")


def _kind(value: object) -> str:
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)


def join_path(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def from_json(cls: type, obj: Any, path: str = "") -> Any:
    """Decode the JSON value ``obj`` as type ``cls`` (usually a dataclass), strictly.

    Supports int (a bool is not an int), float (an int is accepted), str, bool,
    ``X | None``, ``list[T]``, ``dict[str, T]`` and nested dataclasses whose fields may
    have defaults. Unknown keys, missing keys and wrong types raise ``ManifestError``
    naming the JSON path (``path`` is the prefix for ``obj`` itself).
    """
    if dataclasses.is_dataclass(cls):
        return _decode_dataclass(cls, obj, path)
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):
        return _decode_optional(args, obj, path)
    if origin is list:
        if type(obj) is not list:
            fail(path, f"expected list, got {_kind(obj)}")
        return [from_json(args[0], v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if origin is dict and args[0] is str:
        if type(obj) is not dict:
            fail(path, f"expected object, got {_kind(obj)}")
        return {k: from_json(args[1], v, join_path(path, k)) for k, v in obj.items()}
    if cls in (int, float, str, bool):
        return _decode_scalar(cls, obj, path)
    raise TypeError(f"from_json: unsupported type {cls!r} at {path or '<root>'}")


def _decode_scalar(cls: type, obj: Any, path: str) -> Any:
    if cls is float and type(obj) is int:
        return float(obj)
    if type(obj) is not cls:  # exact: True is not an int, 1 is not a bool
        fail(path, f"expected {_KINDS[cls]}, got {_kind(obj)}")
    return obj


def _decode_optional(args: tuple, obj: Any, path: str) -> Any:
    inner = [a for a in args if a is not type(None)]
    if len(inner) != 1 or len(args) != 2:
        raise TypeError(f"from_json: only `X | None` unions are supported, got {args!r}")
    return None if obj is None else from_json(inner[0], obj, path)


def _decode_dataclass(cls: type, obj: Any, path: str) -> Any:
    if type(obj) is not dict:
        fail(path, f"expected object, got {_kind(obj)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in obj:
        if key not in fields:
            fail(join_path(path, key), "unknown key")
    hints, kwargs = typing.get_type_hints(cls), {}
    for name, f in fields.items():
        if name in obj:
            kwargs[name] = from_json(hints[name], obj[name], join_path(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            fail(join_path(path, name), "missing")
    return cls(**kwargs)


def to_json(obj: Any) -> Any:
    """Encode a dataclass (or list / dict / scalar of them) as plain JSON values.

    Every field is written, ``None`` as ``null``, in declaration order.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj
