"""feather-run: output shapes, --check, and one-line errors with the project's error types."""

import json
import shutil
import subprocess
import sys

import pytest

from feather.errors import FeatherError, InputError, ManifestError
from feather.runtime import Pipeline
from feather.runtime.cli import main


def test_json_has_the_reference_shape_plus_timings(export_feather, capsys):
    assert main([str(export_feather), "--max-new-tokens", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"tokens", "text", "stages", "timings"} <= set(out) and len(out["tokens"]) == 5
    assert [(s["layer"], len(s["kept"])) for s in out["stages"]] == [(8, 236), (16, 21)]
    from feather.reference.__main__ import main as ref_main

    assert ref_main(["--model", "tiny", "--max-new-tokens", "5", "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert ref["tokens"] == out["tokens"] and ref["stages"] == out["stages"]


def test_plain_output_is_the_answer_and_timings_go_to_stderr(export_feather, capsys):
    assert main([str(export_feather), "--max-new-tokens", "5"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == Pipeline.load(export_feather).generate(
        __import__("feather.cli").cli.SAMPLE_IMAGE, "What is in this image?", 5).text.strip()
    assert "first token" in cap.err and "tok/s" in cap.err


def test_check_passes_on_an_intact_export(export_feather, capsys):
    assert main([str(export_feather), "--max-new-tokens", "8", "--check"]) == 0
    err = capsys.readouterr().err
    assert "tokens: 8/8 agree" in err and "equal, equal" in err and "check: PASS" in err


def _one_line_error(args):
    proc = subprocess.run([sys.executable, "-m", "feather.runtime.cli", *args], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_bad_inputs_are_one_line(export_feather, tmp_path):
    folder = str(export_feather)
    assert "nope.png: no such file" in _one_line_error([folder, "--image", str(tmp_path / "nope.png")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert "cannot read image" in _one_line_error([folder, "--image", str(bad)])
    assert "prompt: empty" in _one_line_error([folder, "--prompt", "   "])
    assert "exceed the export's max_seq 1024" in _one_line_error([folder, "--prompt", "word " * 600])
    assert "is not a feather export" in _one_line_error([str(tmp_path)])
    assert "no such folder" in _one_line_error([str(tmp_path / "missing")])
    assert "provider cuda" in _one_line_error([folder, "--provider", "cuda"])


def test_changed_file_is_refused(export_feather, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export_feather, copy)
    with open(copy / "segment1.onnx", "r+b") as f:
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert "segment1.onnx: sha256 mismatch" in _one_line_error([str(copy)])
    with pytest.raises(ManifestError, match="segment1.onnx"):
        Pipeline.load(copy)


def test_pipeline_raises_project_errors(export_feather):
    pipe = Pipeline.load(export_feather)
    with pytest.raises(InputError):
        pipe.generate("/nonexistent.jpg", "hi")
    with pytest.raises(InputError, match="max_new_tokens"):
        pipe.generate(__import__("numpy").zeros((8, 8, 3), "uint8"), "hi", max_new_tokens=0)
    with pytest.raises(FeatherError):
        pipe.generate(__import__("numpy").zeros((8, 8), "float64"), "hi")
