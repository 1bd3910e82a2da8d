"""python -m feather.reference: JSON shape and one-line errors."""

import json
import subprocess
import sys

import pytest

from feather.reference.__main__ import main


def test_json_output(tiny_path, capsys):
    assert main(["--model", "tiny", "--max-new-tokens", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"tokens", "text", "stages"} and len(out["tokens"]) == 6
    assert [(s["layer"], len(s["kept"])) for s in out["stages"]] == [(8, 236), (16, 21)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--K", "16", "8"], "K: got [16, 8], expected strictly ascending layer indices"),
        (["--K", "8", "24"], "K[1]: got 24, expected a layer index below the model's 24 layers"),
        (["--ratio", "1.5"], "ratio: got 1.5, expected a fraction pruned strictly between 0 and 1"),
        (["--criterion", "fastv"], "criterion: got 'fastv', expected one of"),
        (["--prompt", "<image> and <image>"], "prompt: contains '<image>'"),
        (["--image", "/nonexistent.png"], "/nonexistent.png: no such file"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tiny_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "feather.reference", "--model", "tiny", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_missing_model_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "feather.reference", "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no such checkpoint folder" in proc.stderr
