"""Interrupted exports: SIGTERM and SIGINT at two points leave nothing behind (the work
folder and the parent folders the export created are removed, one line, exit 128 + signal);
after a SIGKILL the next export into the same folder cleans the leftover and succeeds."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from feather.config import PruneConfig
from feather.export import export

# name -> (signal, when): "work" = as soon as the .partial work folder exists (model loaded,
# nothing exported yet); "graph" = once the first graph file is written inside it.
CASES = {"sigterm at work folder": (signal.SIGTERM, "work"), "sigint at first graph": (signal.SIGINT, "graph"),
         "sigkill at first graph": (signal.SIGKILL, "graph")}


def _stage(parent) -> str | None:
    partial = [p for p in parent.glob(".out.partial-*")] if parent.exists() else []
    if not partial:
        return None
    return "graph" if any(partial[0].glob("*.onnx")) else "work"


@pytest.fixture(scope="module")
def interrupted(tiny_path, tmp_path_factory):
    """All cases as concurrent ``feather-export`` processes into <case>/new/deep/out; each is
    signalled when its work folder reaches the case's stage. -> name -> (case, code, stderr)."""
    root, procs = tmp_path_factory.mktemp("signals"), {}
    for i, name in enumerate(CASES):
        case = root / f"case{i}"
        case.mkdir()
        cmd = [sys.executable, "-m", "feather.export.cli", "--model", "tiny", "-q", "-o", str(case / "new/deep/out")]
        procs[name] = (case, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    pending, deadline = set(procs), time.monotonic() + 240
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            case, proc = procs[name]
            sig, when = CASES[name]
            stage = _stage(case / "new" / "deep")
            if stage == when or (when == "work" and stage == "graph"):
                proc.send_signal(sig)
                pending.discard(name)
            elif proc.poll() is not None:
                pending.discard(name)  # finished before the signal: the assertions below say so
        time.sleep(0.02)
    out = {}
    for name, (case, proc) in procs.items():
        _, err = proc.communicate(timeout=120)
        out[name] = (case, proc.returncode, err)
    return out


@pytest.mark.parametrize("name", ["sigterm at work folder", "sigint at first graph"])
def test_signal_leaves_nothing_behind(interrupted, name):
    case, code, err = interrupted[name]
    sig = CASES[name][0]
    assert code == 128 + sig, err
    assert err.splitlines() == [f"feather-export: interrupted ({sig.name})"]
    assert list(case.iterdir()) == []  # no .partial folder, and new/deep removed too


def test_after_sigkill_the_next_export_cleans_up_and_works(interrupted):
    case, code, _ = interrupted["sigkill at first graph"]
    assert code == -signal.SIGKILL
    parent = case / "new" / "deep"
    assert [p.name.split("-")[0] for p in parent.iterdir()] == [".out.partial"]  # what a kill leaves
    out = export(model="tiny", config=PruneConfig(criterion="none"), output=parent / "out", quiet=True)
    assert sorted(p.name for p in parent.iterdir()) == ["out"] and (out / "feather.json").is_file()
