"""feather.folder, the one output transaction of feather-export, feather-quantize and feather-build,
on plain folders (no model): parents, leftovers, --overwrite, failures, signals, atomic files.
The commands' own runs through it: tests/export/test_output_folder.py, tests/calibration/
test_output_folder.py, tests/trt/test_build_folder.py, tests/hardening/test_interrupted_cleanup.py."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from feather import folder
from feather.errors import OutputError

ROOT = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_missing_parents_are_made_and_the_work_folder_becomes_the_output(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with folder.staged_output(out) as work:
        assert work.parent == out.parent and work.name.startswith(f".out.partial-{os.getpid()}-")
        (work / "feather.json").write_text("{}")
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"] and (out / "feather.json").is_file()
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~folder.umask()


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_leaves_nothing_and_removes_only_the_parents_it_made(tmp_path, existing):
    if existing:
        (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError, match="broke"), folder.staged_output(tmp_path / "a" / "b" / "out") as work:
        (work / "half.onnx").write_bytes(b"half")
        raise RuntimeError("the build broke")
    assert [p.name for p in tmp_path.iterdir()] == (["a"] if existing else [])
    assert not existing or list((tmp_path / "a").iterdir()) == []


def test_a_file_system_failure_is_one_line_and_leaves_nothing(tmp_path):
    with pytest.raises(OutputError) as info, folder.staged_output(tmp_path / "new" / "out") as work:
        raise OSError(28, "No space left on device", str(work / "segment0.onnx"))
    assert str(info.value).endswith("segment0.onnx: No space left on device; nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_killed_runs_beside_the_output_are_removed(tmp_path):
    dead, mine = dead_pid(), f".out.partial-{os.getpid()}-abcd1234"
    for name in (f".out.partial-{dead}-abcd1234", f".other.partial-{dead}-abcd1234", mine, ".out.partial-1-mine"):
        (tmp_path / name).mkdir()
    with folder.staged_output(tmp_path / "out") as work:
        (work / "feather.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.partial-1-mine", mine, "out"])


def test_overwrite_replaces_an_export_and_refuses_anything_else(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for overwrite, message in ((False, "folder is not empty; pass --overwrite"),
                               (True, r"not a feather export \(no feather.json\); --overwrite replaces only")):
        with pytest.raises(OutputError, match=message), folder.staged_output(mine, overwrite):
            raise AssertionError("the block must not run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and (mine / "thesis.tex").is_file()
    old = tmp_path / "old"
    old.mkdir()
    (old / "feather.json").write_text("old")
    (old / "segment9.onnx").write_text("old")
    with folder.staged_output(old, overwrite=True) as work:
        (work / "feather.json").write_text("new")
    assert sorted(p.name for p in old.iterdir()) == ["feather.json"] and (old / "feather.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "old"]


def test_a_folder_made_while_the_run_worked_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="folder is not empty"), folder.staged_output(out) as work:
        (work / "feather.json").write_text("{}")
        out.mkdir()  # someone else's, meanwhile
        (out / "notes.txt").write_text("mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "notes.txt").read_text() == "mine"


def test_staged_files_adds_files_to_a_folder_and_leaves_the_others(tmp_path):
    engines, dead = tmp_path / "export" / "engines", dead_pid()

    def commit(work: Path) -> None:
        os.replace(work / "a.engine", engines / "a.engine")

    with folder.staged_files(engines, commit) as work:
        assert work.parent == engines and work.name.startswith(f".engines.partial-{os.getpid()}-")
        (work / "a.engine").write_text("new")
    assert sorted(p.name for p in engines.iterdir()) == ["a.engine"]
    (engines / "notes.txt").write_text("mine")
    (engines / f".engines.partial-{dead}-abcd1234").mkdir()  # a build killed outright
    with pytest.raises(RuntimeError, match="broke"), folder.staged_files(engines, commit) as work:
        (work / "a.engine").write_text("newer")
        raise RuntimeError("the build broke")
    assert sorted(p.name for p in engines.iterdir()) == ["a.engine", "notes.txt"]
    assert (engines / "a.engine").read_text() == "new"


def test_staged_files_removes_the_folder_it_made_and_refuses_a_link(tmp_path):
    with pytest.raises(RuntimeError, match="broke"), folder.staged_files(tmp_path / "engines", lambda work: None):
        raise RuntimeError("the build broke")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "engines").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="engines: exists and is not a folder"):
        with folder.staged_files(tmp_path / "engines", lambda work: None):
            raise AssertionError("the block must not run")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_signals_are_held_even_with_other_threads_running():
    """Blocking the signal in this thread (pthread_sigmask) is not enough once a thread pool
    exists: another thread takes it, and Python runs the handler here, mid-block."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signum)

    stop = threading.Event()
    pool = threading.Thread(target=stop.wait, daemon=True)
    pool.start()
    old = signal.signal(signal.SIGTERM, interrupt)
    finished = []
    try:
        with pytest.raises(KeyboardInterrupt), folder.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                sum(range(100))  # bytecodes, where Python would run a pending handler
            finished.append(True)
    finally:
        signal.signal(signal.SIGTERM, old)
        stop.set()
    assert finished == [True]


SCRIPT = """
import os, signal, sys
from feather import cli, folder

real = folder._clean_up
def clean_up(*args):
    os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM, as the clean-up starts
    real(*args)
folder._clean_up = clean_up

def body(args):
    with folder.staged_output(args.out) as work:
        (work / "segment0.onnx").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

parser = cli.ArgumentParser(prog="feather-test")
parser.add_argument("out")
sys.exit(cli.run(body, parser, None))
"""


def test_a_signal_during_the_clean_up_does_not_cut_it_short(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "new" / "deep" / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.splitlines() == ["feather-test: interrupted (SIGTERM)"]
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "feather.json"
    folder.write_atomic(target, "old\n")
    assert target.read_text() == "old\n" and stat.S_IMODE(target.stat().st_mode) == 0o666 & ~folder.umask()
    folder.write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folder.os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        folder.write_atomic(target, "new")
    assert target.read_bytes() == b"\x00bytes" and [p.name for p in tmp_path.iterdir()] == ["feather.json"]
