"""feather-build writes engines/ through feather.folder, like feather-export writes its folder:
engines/ made when missing (and removed again on failure), leftovers of killed builds removed,
only the engines it builds replaced, and a failure leaves engines/ and feather.json as they
were (interrupts: tests/hardening/test_interrupted_cleanup.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from feather.build import engines
from feather.errors import BackendError, ManifestError
from feather.manifest import MANIFEST_NAME, load_manifest
from tests.trt.fake import FakeCuda, make_trt


def _snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (dot-names included) -> its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _failing_build(monkeypatch, at: int = 3) -> None:
    """The ``at``-th engine's build fails, after the earlier ones were written to the work folder."""
    real, calls = engines.build_engine, []

    def build_engine(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise BackendError("segment0.onnx: the TensorRT build failed (see TensorRT's log above)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engines, "build_engine", build_engine)


def _build(folder, **kwargs):
    cuda = FakeCuda()
    return engines.build(folder, trt=make_trt(cuda), cuda=cuda, log=lambda s: None, **kwargs)


def test_a_failed_first_build_leaves_no_engines_folder(export_feather, tmp_path, monkeypatch):
    folder = tmp_path / "export"
    shutil.copytree(export_feather, folder)
    before = _snapshot(folder)
    _failing_build(monkeypatch)
    with pytest.raises(BackendError, match="the TensorRT build failed"):
        _build(folder)
    assert _snapshot(folder) == before and not (folder / "engines").exists()
    assert load_manifest(folder).engines == []


def test_a_failed_rebuild_leaves_engines_and_records_as_they_were(built, monkeypatch):
    folder, _, _ = built
    before = _snapshot(folder)
    _failing_build(monkeypatch)
    with pytest.raises(BackendError):
        _build(folder, precision="fp16")
    assert _snapshot(folder) == before
    assert {e.precision for e in load_manifest(folder).engines} == {"as-exported"}


def test_leftovers_are_removed_and_files_it_did_not_build_are_kept(built):
    folder, _, _ = built
    proc = subprocess.Popen(["true"])
    proc.wait()
    killed = folder / "engines" / f".engines.partial-{proc.pid}-abcd1234"  # a build killed outright
    killed.mkdir()
    (killed / "segment0.engine").write_bytes(b"half")
    (folder / "engines" / "notes.txt").write_text("mine")
    old = {e.file: e.sha256 for e in load_manifest(folder).engines}
    built_again = _build(folder, precision="fp16")
    assert sorted(p.name for p in (folder / "engines").iterdir()) == sorted(
        [e.file[len("engines/"):] for e in built_again.engines] + ["notes.txt"])
    assert (folder / "engines" / "notes.txt").read_text() == "mine"
    assert {e.precision for e in load_manifest(folder).engines} == {"fp16"}
    assert {e.file for e in built_again.engines} == set(old)


def test_a_folder_that_is_not_an_export_is_refused_and_left_alone(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(ManifestError, match=MANIFEST_NAME):
        _build(plain)
    assert [p.name for p in plain.iterdir()] == ["notes.txt"]
