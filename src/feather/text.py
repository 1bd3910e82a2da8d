"""Text for one-line messages (stdlib only): a path made printable, an exception's first line.

Every user-facing error is one line (docs/hardening.md), so these two are the only ways a
message quotes a path or a library's exception text.
"""

from __future__ import annotations

import os


def shown(path: object) -> str:
    """A path as text safe to print: bytes that are not UTF-8 (argv surrogates) as \\xNN,
    control characters escaped (a file name with a newline stays on one line)."""
    text = os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # no newline splits the line


def first_line(err: BaseException) -> str:
    """The first line of ``str(err)`` with its whitespace runs as one space, or the
    exception's type name when it has no text (libraries' messages can run to pages)."""
    text = str(err).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(err).__name__
