"""The output folder: missing parents are created, and removed again when export fails."""

import pytest

from feather import folder as folder_rules
from feather.config import PruneConfig
from feather.errors import ValidationError
from feather.export import api, export


def test_missing_parents_are_created(tiny_path, tmp_path):
    out = export(model="tiny", config=PruneConfig(criterion="none"), output=tmp_path / "a" / "b" / "c", quiet=True)
    assert (out / "feather.json").is_file() and out == (tmp_path / "a" / "b" / "c").resolve()


def test_a_failed_export_leaves_nothing(tiny_path, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValidationError("segment0.onnx [prefill] hidden_out: max abs diff 1 > 1e-4")

    monkeypatch.setattr(api.validate, "raise_failures", lambda failures: broken())
    with pytest.raises(ValidationError):
        export(model="tiny", config=PruneConfig(), output=tmp_path / "new" / "out", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_external_data_graphs_load_and_run(tiny_path, tmp_path, monkeypatch, sample_image):
    """The >2 GB path, forced on the tiny model: every graph's weights in one .data file
    beside it, hashed in the manifest, and the chain still answers like the reference."""
    from feather.manifest import load_manifest
    from feather.reference import Reference
    from feather.runtime import Pipeline

    monkeypatch.setattr(api.onnx_io, "EXTERNAL_DATA_BYTES", 0)
    out = export(model="tiny", config=PruneConfig(), output=tmp_path / "ext", quiet=True)
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.endswith(".data")] == [
        "embed.onnx.data", "segment0.onnx.data", "segment1.onnx.data", "segment2.onnx.data", "vision.onnx.data"]
    assert not [n for n in names if n.startswith(".work")]
    assert "segment1.onnx.data" in load_manifest(out).files
    chain = Pipeline.load(out).generate(sample_image, "What is in the image?", max_new_tokens=6)
    ref = Reference.load(str(tiny_path), PruneConfig()).generate(sample_image, "What is in the image?", 6)
    assert chain.tokens == ref.tokens and chain.stages == ref.stages


# ---------------------------------------------------------------- what an export may write or replace
def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_export_folder_mode_follows_the_umask(export_feather):
    import stat

    assert stat.S_IMODE(export_feather.stat().st_mode) == 0o777 & ~_umask()


@pytest.fixture
def precious(tmp_path, monkeypatch):
    """A working folder with a user's file and a local checkpoint folder."""
    (tmp_path / "notes.txt").write_text("mine")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path, ckpt


@pytest.mark.parametrize("output, message", [
    ("", "output: empty path; expected a folder name"),
    ("   ", "output: empty path; expected a folder name"),
    (".", "{cwd}: is or contains the current folder"),
    ("..", "{parent}: is or contains the current folder"),
    ("~", "{home}: is or contains"),
    ("/", "/: is or contains the file-system root"),
    ("/proc/x", "/proc/x: under /proc, a system folder"),
    ("/sys/y/z", "/sys/y/z: under /sys, a system folder"),
    ("/dev/shm/out", "/dev/shm/out: under /dev, a system folder"),
    ("ckpt", "{cwd}/ckpt: overlaps the checkpoint folder {cwd}/ckpt"),
    ("ckpt/out", "{cwd}/ckpt/out: overlaps the checkpoint folder"),
    ("notes.txt", "{cwd}/notes.txt: exists and is not a folder"),
    ("x" * 220, "folder name too long (at most 215 bytes)"),
])
def test_outputs_that_are_refused(precious, output, message):
    from pathlib import Path

    from feather.errors import OutputError

    cwd, ckpt = precious
    message = message.format(cwd=cwd, parent=cwd.parent, home=Path.home())
    with pytest.raises(OutputError) as info:
        folder_rules.check_output(output, overwrite=True, model=str(ckpt))
    assert message in str(info.value)
    assert (cwd / "notes.txt").read_text() == "mine" and (ckpt / "config.json").is_file()


def test_overwrite_replaces_only_an_export_or_an_empty_folder(tmp_path):
    from feather.errors import OutputError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match=r"mine: not a feather export \(no feather.json\); --overwrite"):
        folder_rules.check_output(mine, overwrite=True)
    with pytest.raises(OutputError, match=r"mine: folder is not empty; pass --overwrite"):
        folder_rules.check_output(mine, overwrite=False)
    (tmp_path / "empty").mkdir()
    assert folder_rules.check_output(tmp_path / "empty", overwrite=False) == (tmp_path / "empty").resolve()
    (mine / "feather.json").write_text("{}")
    assert folder_rules.check_output(mine, overwrite=True) == mine.resolve()


def test_a_failed_swap_leaves_the_old_export_intact(tmp_path, monkeypatch):
    out, new = tmp_path / "out", tmp_path / ".out.partial-1-abcdefgh"
    out.mkdir()
    (out / "feather.json").write_text("old")
    new.mkdir()
    (new / "feather.json").write_text("new")
    real, calls = folder_rules.os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new export into place: fail as a full or read-only disk would
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(folder_rules.os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        folder_rules.swap_in(new, out, overwrite=True)
    assert (out / "feather.json").read_text() == "old" and (new / "feather.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-1-abcdefgh", "out"]
    monkeypatch.setattr(folder_rules.os, "rename", real)
    folder_rules.swap_in(new, out, overwrite=True)
    assert (out / "feather.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftovers_of_dead_exports_are_cleaned_and_nothing_else(tmp_path):
    import os

    dead = _dead_pid()
    names = {
        f".out.partial-{dead}-abcd1234": "work of a killed export",
        f".out.partial-{os.getpid()}-abcd1234": "work of a live export",
        f".gone.old-{dead}-abcd1234": "an export set aside, then killed before the new one moved in",
        f".kept.old-{dead}-abcd1234": "set aside and replaced",
        ".out.partial-123-notours": "a user's folder that only looks like ours",
        f".user.old-{dead}-abcd1234": "no feather.json: not an export we set aside",
    }
    for name in names:
        (tmp_path / name).mkdir()
        if ".old-" in name and not name.startswith(".user"):
            (tmp_path / name / "feather.json").write_text("{}")
    (tmp_path / "kept").mkdir()
    removed = folder_rules.remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == [f".kept.old-{dead}-abcd1234", f".out.partial-{dead}-abcd1234"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        f".out.partial-{os.getpid()}-abcd1234", ".out.partial-123-notours", f".user.old-{dead}-abcd1234",
        "gone", "kept"])
    assert (tmp_path / "gone" / "feather.json").is_file()


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
