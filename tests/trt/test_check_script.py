"""scripts/trt_check.py, the script for the first machine with TensorRT, run end to end on the
fake TensorRT + CUDA (tests/trt/fake.py): it must build, pass --check against the PyTorch
reference, and print one row per backend with the same tokens. Real TensorRT has not run it."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from feather.runtime.backends import tensorrt as trt_backend
from tests.trt.fake import FakeCuda, make_trt

SCRIPT = Path(__file__).parents[2] / "scripts" / "trt_check.py"


def test_trt_check_builds_checks_and_prints_the_table(export_feather, tiny_path, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its build copy lands here
    cuda = FakeCuda()
    trt = make_trt(cuda)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "Cuda", lambda who="": cuda)
    spec = importlib.util.spec_from_file_location("trt_check", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(export_feather), "--model", str(tiny_path), "--runs", "1", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "check (tensorrt-native vs PyTorch)" in out
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines()
            if line.startswith(("tensorrt-native ", "trt, no cuda graphs", "onnxruntime-cpu"))}
    assert set(rows) == {"tensorrt-native", "trt, no cuda graphs", "onnxruntime-cpu"}
    assert all(cells[-1] == "True" for cells in rows.values())  # same tokens as ONNX Runtime
    assert cuda.launches > 0  # the first row replayed its decode steps as CUDA graphs
    assert not (Path(export_feather) / "engines").exists()  # built into a copy, not the folder given
    assert list(tmp_path.glob("trt-check-*/*/engines/*.engine"))
