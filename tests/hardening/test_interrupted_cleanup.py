"""A SIGTERM while feather-export, feather-quantize or feather-build writes, and a second one
as the clean-up starts: the clean-up still finishes (feather.folder holds the signals), so
nothing is left: no work folder, no parent folder the command made, no half-built engine.

Each command runs in a subprocess with two hooks: once its first file is in the work folder
(export: vision.onnx; quantize: segment0.onnx; build: the first engine) it sends itself a
SIGTERM, which the CLI turns into ``Interrupted``; and ``feather.folder._clean_up`` sends a
second SIGTERM before it removes anything. Before signals were held by swapping handlers,
that second one cut the clean-up short even with signals blocked, because numpy's and ONNX
Runtime's threads take a blocked signal for the process. (Timed external signals:
tests/export/test_signals.py.)"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HOOKS = """
import glob, os, signal, sys
from feather import folder

HOME = sys.argv[1]
real_clean_up = folder._clean_up

def clean_up(*args):
    os.kill(os.getpid(), signal.SIGTERM)  # the second SIGTERM, before anything is removed
    real_clean_up(*args)

folder._clean_up = clean_up

def interrupt():
    work = glob.glob(os.path.join(HOME, ".*.partial-*"))
    print("work folder:", *sorted(os.listdir(work[0])) if len(work) == 1 else work, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not interrupt")
"""

COMMANDS = {
    "feather-export": """
from feather.export import onnx_io
onnx_io.check_graph = lambda *args, **kwargs: interrupt()  # vision.onnx is written, not yet checked
from feather.export.cli import main
sys.exit(main(["--model", "tiny", "-q", "-o", os.path.join(HOME, "out")]))
""",
    "feather-quantize": """
from feather.export import onnx_io
onnx_io.check_graph = lambda *args, **kwargs: interrupt()  # segment0.onnx is quantized, not yet checked
from feather.calibration.cli import main
sys.exit(main([sys.argv[2], "-o", os.path.join(HOME, "out"), "--calibration", sys.argv[3], "--steps", "1", "-q"]))
""",
    "feather-build": """
from feather.build import engines
from feather.runtime.backends import tensorrt as backend
from tests.trt.fake import FakeCuda, make_trt

cuda = FakeCuda()
trt = make_trt(cuda)
backend.import_tensorrt = lambda: trt
backend.Cuda = lambda who="": cuda
real_build_engine, calls = engines.build_engine, []

def build_engine(*args, **kwargs):
    if calls:
        interrupt()  # the first engine is in the work folder
    calls.append(1)
    return real_build_engine(*args, **kwargs)

engines.build_engine = build_engine
from feather.build.cli import main
sys.exit(main([os.path.dirname(HOME)]))
""",
}
FIRST_FILE = {"feather-export": "vision.onnx", "feather-quantize": "segment0.onnx", "feather-build": "vision.engine"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_a_signal_during_the_clean_up_leaves_nothing(prog, tiny_path, export_feather, tmp_path):
    from feather.cli import SAMPLE_IMAGE

    args = []
    if prog == "feather-build":
        case = tmp_path / "export"
        shutil.copytree(export_feather, case)
        home = case / "engines"  # missing: the build makes it, and must remove it again
    else:
        case = tmp_path / "case"
        case.mkdir()
        home = case / "new" / "deep"  # missing parents: made, and removed again
    if prog == "feather-quantize":
        shutil.copy(SAMPLE_IMAGE, tmp_path / "pic.png")
        (tmp_path / "calib.jsonl").write_text('{"image": "pic.png", "prompt": "What is it?"}\n')
        args = [str(export_feather), str(tmp_path / "calib.jsonl")]
    before = _snapshot(case)
    proc = subprocess.run([sys.executable, "-c", HOOKS + COMMANDS[prog], str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert FIRST_FILE[prog] in proc.stdout.split(), proc.stdout  # interrupted with a half-written work folder
    assert proc.stderr.splitlines()[-1:] == [f"{prog}: interrupted (SIGTERM)"] and "Traceback" not in proc.stderr
    assert _snapshot(case) == before and not home.exists()
    if prog != "feather-build":
        assert list(case.iterdir()) == []  # new/deep removed too
