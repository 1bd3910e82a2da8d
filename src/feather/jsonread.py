"""Reading JSON a user hands in: one reader with size and depth limits (stdlib only).

Request bodies (``feather-serve``), JSONL lines (``feather-eval --data``, calibration sets) and
``feather.json`` all go through ``loads``: the text is refused over ``max_bytes`` before it is
parsed, and its nesting is measured by a linear scan (brackets outside strings) before
``json.loads`` runs, so a deeply nested value is one line naming the depth, never a
``RecursionError`` from the parser. ``NaN`` and ``Infinity`` (not JSON, though Python's
parser takes them) are refused too.

Paths named inside a JSONL file follow one rule, ``path_inside``: a relative path resolving
inside the file's folder. Absolute paths, ``~`` and ``..`` that climb out are refused.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from feather.errors import FeatherError, InputError

MAX_DEPTH = 64
"""Deepest nesting accepted: no file or request of feather-vlm needs more than 6 levels."""
MAX_BYTES = 64 << 20
"""Largest JSON text accepted when the caller gives no smaller bound."""

# a string (unrolled: fast on long base64 payloads) or one bracket
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset("[{")


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (0 for a scalar), counting
    brackets outside strings; a linear scan that never recurses."""
    deepest = level = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in _OPENERS:
            level += 1
            deepest = max(deepest, level)
        elif token[0] != '"':
            level -= 1
    return deepest


def loads(data: str | bytes, where: str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
          error: type[FeatherError] = InputError, allow_nan: bool = False):
    """Parse ``data`` as JSON, or raise ``error`` with one line starting with ``where``.

    Refused: more than ``max_bytes`` (UTF-8 bytes), bytes that are not UTF-8, nesting deeper
    than ``max_depth``, invalid JSON, and (unless ``allow_nan``: the manifest reader checks
    finiteness itself, naming the field) the non-JSON constants ``NaN``, ``Infinity``."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise error(f"{where}: {size} bytes of JSON, expected at most {max_bytes}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise error(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    few = data.count("[") + data.count("{") <= max_depth  # cannot nest deeper: skip the scan
    if not few and (found := depth(data)) > max_depth:
        raise error(f"{where}: JSON nested too deeply ({found} levels, expected at most {max_depth})")
    try:
        return json.loads(data, parse_constant=None if allow_nan else _no_constant)
    except json.JSONDecodeError as err:
        at = f"line {err.lineno}, column {err.colno}" if "\n" in data else f"column {err.colno}"  # one JSONL line
        raise error(f"{where}: invalid JSON at {at}: {err.msg}") from None
    except ValueError as err:  # _no_constant
        raise error(f"{where}: {err}") from None
    except RecursionError:  # the scan above makes this unreachable; kept as a last line of defence
        raise error(f"{where}: JSON nested too deeply") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON; expected a finite number")


def read_file(path: str | os.PathLike, where: str | None = None, *, max_bytes: int = MAX_BYTES,
              error: type[FeatherError] = InputError) -> str:
    """The UTF-8 text of ``path``, refusing files over ``max_bytes`` before reading them."""
    where = where or str(path)
    try:
        size = Path(path).stat().st_size
        if size > max_bytes:
            raise error(f"{where}: {size} bytes, expected at most {max_bytes}")
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: is a folder; expected a file") from None
    except UnicodeDecodeError as err:
        raise error(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise error(f"{where}: cannot read it ({err.strerror})") from None


def path_inside(where: str, value, root: str | os.PathLike) -> Path:
    """The rule for a path named in a JSONL file: a non-empty relative path that resolves
    (symbolic links followed) inside ``root``, the file's folder. -> the resolved path."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise InputError(f"{where}: image: expected a relative path string")
    root = Path(root).resolve()
    path = Path(value)
    if path.is_absolute() or value.startswith("~"):
        raise InputError(f"{where}: image {value!r} is not a relative path; name images relative to the "
                         f"JSONL's folder {root}")
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise InputError(f"{where}: image {value!r} leaves the JSONL's folder {root}; use a path inside it")
    return resolved
