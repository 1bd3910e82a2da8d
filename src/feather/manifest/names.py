"""Which file names a manifest may hold: plain relative names inside the export folder. Stdlib only."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

BAD_NAME = "is not a plain relative name inside the export folder (no '..', no absolute path)"


def plain_name(name: str) -> bool:
    """A relative name with no '..', no backslash, no drive or root, no NUL."""
    parts, windows = PurePosixPath(name).parts, PureWindowsPath(name)
    absolute = name.startswith("/") or bool(windows.drive or windows.root)
    return bool(parts) and ".." not in parts and "\\" not in name and not absolute and "\0" not in name
