"""An export folder on disk: hashing, writing feather.json atomically, reading and verifying.

Integrity rules (``verify_files``): feather.json lists a sha256 for every regular file in the
folder, graphs and tokenizer included (only ``trt-cache/``, which ONNX Runtime's TensorRT
provider writes at run time, and ``engines/``, whose engines ``feather-build`` records with
their own sha256 in ``manifest.engines``, are exempt); no file may be missing, changed, unlisted, or a
symbolic link; so nothing the runtime opens comes from outside the folder it was given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from feather import jsonread
from feather.errors import ManifestError
from feather.folder import TMP_SUFFIX, write_atomic
from feather.jsoncodec import MANIFEST_NAME
from feather.manifest.checks import parse
from feather.manifest.schema import Manifest

_CHUNK = 1 << 20  # sha256 reads 1 MiB at a time
_TMP_PREFIX, _TMP_SUFFIX = f".{MANIFEST_NAME}.", TMP_SUFFIX  # write_atomic's temporary feather.json
MAX_MANIFEST_BYTES = 16 << 20  # a real feather.json is a few KB
RUNTIME_FOLDERS = ("trt-cache", "engines")
"""Folders the runtime itself may write into an export (never hashed, never read as graphs)."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (graphs' external data can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path):
    """(relative POSIX name, path) of every entry under ``root`` except feather.json, its temp
    files and the runtime's own folders; symbolic links are yielded, never followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in RUNTIME_FOLDERS]
        for name in sorted(filenames) + sorted(d for d in dirnames if (here / d).is_symlink()):
            path = here / name
            rel = path.relative_to(root).as_posix()
            temp = name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX)
            if rel != MANIFEST_NAME and not temp:
                yield rel, path


def hash_folder(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (recursive) except feather.json.

    Keys are relative POSIX names (``tokenizer/tokenizer.json``), sorted. Refuses symlinks.
    """
    root = Path(folder)
    out = {}
    for name, path in _walk(root):
        if path.is_symlink():
            raise ManifestError(f"{path}: is a symbolic link; an export folder holds plain files only")
        if path.is_file():
            out[name] = sha256_file(path)
    return dict(sorted(out.items()))


def save_manifest(manifest: Manifest, folder: str | os.PathLike) -> Path:
    """Hash every file in ``folder`` into ``manifest.files`` and write feather.json atomically.

    The manifest is validated first (what ``load_manifest`` would refuse is never written).
    Sets ``manifest.files`` in place and returns the path of feather.json.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: no such folder")
    files = hash_folder(folder)
    data = dataclasses.replace(manifest, files=files).to_json()
    parse(data)
    target = folder / MANIFEST_NAME
    write_atomic(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    manifest.files = files
    return target


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and validate ``folder/feather.json``; with ``verify``, check every file too.

    Raises ``ManifestError`` for a missing folder or feather.json, invalid JSON, another
    schema, any schema violation, and (with ``verify``) a missing, changed, unlisted or
    linked file.
    """
    folder = Path(folder)
    manifest = parse(_read_json(folder))
    if verify:
        verify_files(manifest, folder)
    return manifest


def _read_json(folder: Path) -> Any:
    if not folder.is_dir():
        raise ManifestError(f"{folder}: no such folder")
    path = folder / MANIFEST_NAME
    if path.is_symlink() or not path.is_file():
        why = "is a symbolic link" if path.is_symlink() else "missing"
        raise ManifestError(f"{folder} is not a feather export: {MANIFEST_NAME} {why}")
    text = jsonread.read_file(path, max_bytes=MAX_MANIFEST_BYTES, error=ManifestError)
    return jsonread.loads(text, str(path), max_bytes=MAX_MANIFEST_BYTES, error=ManifestError, allow_nan=True)


def verify_files(manifest: Manifest, folder: str | os.PathLike) -> None:
    """Check the folder against ``manifest.files``: every listed file present, a plain file and
    unchanged; every file present listed; every file the manifest names listed."""
    folder = Path(folder)
    for where, name in [*manifest.graph_files(), ("tokenizer", manifest.tokenizer)]:
        if not (folder / name).exists() and not (folder / name).is_symlink():
            raise ManifestError(f"{folder / name}: missing (named by {MANIFEST_NAME} {where})")
        if name not in manifest.files:
            raise ManifestError(f"{folder / name}: not listed in {MANIFEST_NAME} files (no sha256 to verify it)")
    for name, path in _walk(folder):
        if path.is_symlink():
            raise ManifestError(f"{path}: is a symbolic link; an export folder holds plain files only")
        if path.is_file() and name not in manifest.files:
            raise ManifestError(f"{path}: not listed in {MANIFEST_NAME} files (added after export?)")
    for name, digest in manifest.files.items():
        path = folder / name
        if path.is_symlink():
            raise ManifestError(f"{path}: is a symbolic link; an export folder holds plain files only")
        if not path.is_file():
            raise ManifestError(f"{path}: missing (listed in {MANIFEST_NAME})")
        if sha256_file(path) != digest:
            raise ManifestError(f"{path}: sha256 mismatch (file changed after export)")
