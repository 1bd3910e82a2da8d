"""An export folder's files against feather.json: every file listed and hashed, nothing
linked, nothing changed after the save, and a save that writes nothing when it refuses."""

from __future__ import annotations

import json

import pytest

from feather.errors import ManifestError
from feather.manifest import (
    MANIFEST_NAME,
    load_manifest,
    save_manifest,
)
from tests.feather.manifest_helpers import (
    make_manifest,
    write_export,
)


def test_unlisted_and_linked_files_are_refused(tmp_path):
    """Integrity covers the whole folder: a file that is not listed (so a byte-flip in it would
    go unnoticed) and a symlink out of the folder are both refused; trt-cache/ is exempt."""
    write_export(tmp_path)
    (tmp_path / "trt-cache").mkdir()
    (tmp_path / "trt-cache" / "engine.bin").write_bytes(b"engine")
    assert load_manifest(tmp_path).vision.file == "vision.onnx"
    (tmp_path / "extra.onnx.data").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"extra\.onnx\.data: not listed in feather.json files"):
        load_manifest(tmp_path)
    (tmp_path / "extra.onnx.data").unlink()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    outside.write_text("{}")
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ManifestError, match=r"tokenizer\.json: is a symbolic link"):
        load_manifest(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.json").write_text('{"model": {}}')
    (tmp_path / "weights2").symlink_to(tmp_path.parent)
    with pytest.raises(ManifestError, match=r"weights2: is a symbolic link"):
        load_manifest(tmp_path)


def test_empty_file_list_is_refused(tmp_path):
    write_export(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["files"] = {}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"vision\.onnx: not listed in feather.json files"):
        load_manifest(tmp_path)


def test_file_changed_after_save(tmp_path):
    write_export(tmp_path)
    (tmp_path / "vision.onnx").write_bytes(b"tampered")
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert str(info.value) == f"{tmp_path / 'vision.onnx'}: sha256 mismatch (file changed after export)"
    assert load_manifest(tmp_path, verify=False).vision.file == "vision.onnx"


def test_nested_file_changed_after_save(tmp_path):
    write_export(tmp_path)
    (tmp_path / "weights" / "segment_00_08.onnx.data").write_bytes(b"\0")
    with pytest.raises(ManifestError, match=r"weights/segment_00_08\.onnx\.data: sha256 mismatch"):
        load_manifest(tmp_path)


def test_listed_file_deleted(tmp_path):
    write_export(tmp_path)
    (tmp_path / "segment_08_16.onnx").unlink()
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert str(info.value) == f"{tmp_path / 'segment_08_16.onnx'}: missing (named by feather.json segments[1].file)"
    (tmp_path / "weights" / "segment_00_08.onnx.data").unlink()
    (tmp_path / "segment_08_16.onnx").write_bytes(b"onnx:segment_08_16.onnx")
    with pytest.raises(ManifestError, match=r"segment_00_08\.onnx\.data: missing \(listed in feather.json\)$"):
        load_manifest(tmp_path)


def test_named_file_never_saved(tmp_path):
    manifest = make_manifest()
    manifest.embed.file = "embed_fp16.onnx"
    write_export(tmp_path, manifest)
    (tmp_path / "embed_fp16.onnx").unlink()
    save_manifest(manifest, tmp_path)
    with pytest.raises(
        ManifestError, match=r"embed_fp16\.onnx: missing \(named by feather.json embed.file\)"
    ):
        load_manifest(tmp_path)


def test_save_refuses_invalid_manifest_and_writes_nothing(tmp_path):
    manifest = make_manifest()
    manifest.segments[1].layers = [8, 15]
    with pytest.raises(ManifestError, match=r"segments\[2\]\.layers: starts at 16, expected 15"):
        write_export(tmp_path, manifest)
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert manifest.files == {}


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(ManifestError, match=r"missing: no such folder$"):
        save_manifest(make_manifest(), tmp_path / "missing")
