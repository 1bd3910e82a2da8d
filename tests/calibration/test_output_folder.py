"""feather-quantize writes its folder through feather.folder, like feather-export: the output is
checked before the capture runs, missing parents are made, leftovers of killed runs removed,
--overwrite replaces only an export, and a failure leaves nothing (interrupts:
tests/hardening/test_interrupted_cleanup.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from feather.calibration import api
from feather.calibration import quantize as quantize_fn
from feather.errors import OutputError
from feather.manifest import load_manifest
from tests.calibration.conftest import STEPS


def quantize(export_dir, output, captured, **kwargs):
    return quantize_fn(export_dir, method="int8", output=output, quiet=True, captured=captured,
                       max_new_tokens=STEPS, **kwargs)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_missing_parents_are_made_then_leftovers_removed_and_an_export_replaced(export_feather, captured, tmp_path):
    out = tmp_path / "a" / "b" / "q"
    done = quantize(export_feather, out, captured)
    assert done.folder == out.resolve() and load_manifest(out).segments[0].method == "int8"
    assert sorted(p.name for p in out.parent.iterdir()) == ["q"]
    dead = _dead_pid()
    (out.parent / f".q.partial-{dead}-abcd1234").mkdir()  # a quantize killed outright
    (out.parent / f".q.old-{dead}-abcd1234").mkdir()  # ... killed between the renames, after
    (out.parent / f".q.old-{dead}-abcd1234" / "feather.json").write_text("{}")
    (out / "stale.txt").write_text("from the first run")  # replaced with the folder, not kept
    with pytest.raises(OutputError, match="q: folder is not empty; pass --overwrite"):
        quantize(export_feather, out, captured)
    quantize(export_feather, out, captured, overwrite=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["q"]
    assert not (out / "stale.txt").exists() and load_manifest(out).segments[0].method == "int8"


@pytest.fixture
def no_capture(monkeypatch):
    """A capture that fails the test: a refused output must be refused before it runs."""
    def capture(*args, **kwargs):
        raise AssertionError("the capture ran before the output was checked")

    monkeypatch.setattr(api, "_capture", capture)


def test_outputs_are_refused_before_the_capture(export_feather, tmp_path, no_capture):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("mine")
    for output, overwrite, message in [
        (mine, True, r"mine: not a feather export \(no feather.json\); --overwrite replaces only"),
        (mine, False, "mine: folder is not empty; pass --overwrite"),
        (tmp_path / "notes.txt" / "a" / "out", False, "notes.txt: not a writable folder"),
        (tmp_path / "notes.txt", True, "notes.txt: exists and is not a folder"),
        (export_feather / "q", False, "overlaps the export being quantized"),
        (export_feather, True, "overlaps the export being quantized"),
    ]:
        with pytest.raises(OutputError, match=message):
            quantize_fn(export_feather, method="int8", output=output, overwrite=overwrite, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (tmp_path / "notes.txt").read_text() == "mine"
    assert not (export_feather / "q").exists()


def test_a_failure_leaves_nothing_and_the_old_export_intact(export_feather, captured, tmp_path, monkeypatch):
    def broken_report(*args, **kwargs):
        raise RuntimeError("report broke")

    monkeypatch.setattr(api, "_report", broken_report)  # after every quantized graph is written
    with pytest.raises(RuntimeError, match="report broke"):
        quantize(export_feather, tmp_path / "new" / "deep" / "q", captured)
    assert list(tmp_path.iterdir()) == []

    def full_disk(tmp, *args):
        raise OSError(28, "No space left on device", os.fspath(tmp / "quantization.json"))

    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "feather.json").write_text("the old export")
    monkeypatch.setattr(api, "_report", lambda *args: None)
    monkeypatch.setattr(api, "_write_report", full_disk)
    with pytest.raises(OutputError, match=r"quantization\.json: No space left on device; nothing was written$"):
        quantize(export_feather, keep, captured, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert [p.name for p in keep.iterdir()] == ["feather.json"]
    assert (keep / "feather.json").read_text() == "the old export"
