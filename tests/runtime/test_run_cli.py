"""feather-run: output shapes, --check, and one-line errors with the project's error types."""

import json
import re
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
    with pytest.raises(FeatherError):  # float arrays in 0..1 are images (feather.image); 2.0 is not
        pipe.generate(__import__("numpy").full((8, 8), 2.0), "hi")
    with pytest.raises(FeatherError):
        pipe.generate(__import__("numpy").zeros((8, 8), "complex64"), "hi")


# ---------------------------------------------------------------- hostile input: one line, exit 1, no hang
HOSTILE = {
    "empty image path": (["--image", ""], "image: empty path; expected an image file"),
    "image is a FIFO": (["--image", "{tmp}/fifo"], "fifo: is a FIFO; expected an image file"),
    "image is a folder": (["--image", "{tmp}"], ": is a folder; expected an image file"),
    "image is a device": (["--image", "/dev/zero"], "/dev/zero: is a device or socket; expected an image file"),
    "image name too long": (["--image", "x" * 300], ": cannot open (File name too long)"),
    "negative seed": (["--seed", "-1"], "argument --seed: got -1, expected an integer in 0..9223372036854775807"),
    "temperature inf": (["--temperature", "inf"], "argument --temperature: got 'inf', expected a finite number"),
    "temperature nan": (["--temperature", "nan"], "argument --temperature: got 'nan', expected a finite number"),
    "threads 1000": (["--threads", "1000"], "argument --threads: got 1000, expected an integer in 1.."),
    "not UTF-8 prompt": ([b"--prompt", b"caf\xe9?"], "prompt: not valid UTF-8 text (byte 0xe9 at character 3)"),
    "empty folder": (["--image", "{tmp}/fifo", "--folder-first"], "folder: empty path; expected an export folder"),
    "unknown flag": (["--bogus"], "unrecognized arguments: --bogus"),
}


@pytest.fixture(scope="module")
def hostile_runs(export_feather, tmp_path_factory):
    import os

    tmp = tmp_path_factory.mktemp("hostile")
    os.mkfifo(tmp / "fifo")
    procs = {}
    for name, (extra, _) in HOSTILE.items():
        folder = "" if "--folder-first" in extra else str(export_feather)
        args = [a.replace("{tmp}", str(tmp)) if isinstance(a, str) else a for a in extra if a != "--folder-first"]
        procs[name] = subprocess.Popen([sys.executable, "-m", "feather.runtime.cli", folder, *args],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return {name: (p.communicate(timeout=60), p.returncode) for name, p in procs.items()}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_is_one_line(hostile_runs, name):
    (out, err), code = hostile_runs[name]
    lines = err.decode("utf-8", "replace").strip().splitlines()
    assert code == 1 and out == b"", err
    assert len(lines) == 1 and lines[0].startswith("feather-run: error: ") and HOSTILE[name][1] in lines[0], lines


def test_json_stream_is_json_lines_then_the_result(export_feather, capsys):
    assert main([str(export_feather), "--max-new-tokens", "6", "--stream", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    *pieces, final = lines
    assert pieces and all(set(p) == {"piece", "token"} for p in pieces)
    assert "".join(p["piece"] for p in pieces) == final["text"] and len(final["tokens"]) == 6
    ends = [p["token"] for p in pieces]  # the token that completed each piece, in order
    assert ends[-1] == final["tokens"][-1] and all(t in final["tokens"] for t in ends)


@pytest.mark.parametrize("quiet", [False, True])
def test_stream_prints_its_timing_line(export_feather, capsys, quiet):
    """--stream: the answer on stdout as it comes, then the timing line on stderr (none with -q)."""
    assert main([str(export_feather), "--max-new-tokens", "4", "--stream", *(["-q"] if quiet else [])]) == 0
    cap = capsys.readouterr()
    assert cap.out.endswith("\n") and cap.out.strip()
    lines = cap.err.splitlines()
    if quiet:
        assert lines == []
    else:
        assert len(lines) == 1 and "first token" in lines[0] and "tok/s" in lines[0], lines


def test_check_says_what_it_is_loading(export_feather, capsys):
    """--check loads torch and the checkpoint (about a minute on a 7B): a status line first, then
    the time it took; the report follows."""
    assert main([str(export_feather), "--max-new-tokens", "2", "--check"]) == 0
    lines = capsys.readouterr().err.splitlines()  # (in-process, transformers' own bars show too)
    what = "--check: loading torch and the checkpoint, running the PyTorch reference"
    assert lines[0] == f"{what} ..."
    done = [i for i, line in enumerate(lines) if re.fullmatch(rf"{re.escape(what)}: \d+\.\d s", line)]
    assert len(done) == 1 and lines.index("tokens: 2/2 agree") > done[0], lines
    assert lines[-1].startswith("check: PASS")


def test_check_json_is_json(export_feather, capsys):
    assert main([str(export_feather), "--max-new-tokens", "4", "--check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["ok"] is True and out["check"]["tokens_agree"] == 4 and len(out["tokens"]) == 4


def test_closed_stdout_and_ctrl_c_during_stream(export_feather):
    """`feather-run --stream | head -c3` and Ctrl-C mid-answer: no traceback, no abort."""
    import signal
    import time

    cmd = [sys.executable, "-m", "feather.runtime.cli", str(export_feather), "--stream", "--max-new-tokens", "400"]
    head = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(head.stdout.read(3)) == 3
    head.stdout.close()  # the reader goes away, as head does
    assert head.wait(timeout=120) == 1 and head.stderr.read() == b""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(3)) == 3  # mid-answer
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.decode().splitlines() == ["feather-run: interrupted (SIGINT)"]


def test_viz_draws_the_kept_tokens_of_the_chain_and_the_reference(export_feather, tiny_path, tmp_path, capsys):
    """--viz writes one overlay per run; the chain's and the reference's are the same picture
    (the same kept indices drawn on the same image)."""
    from PIL import Image

    from feather.reference.__main__ import main as ref_main

    assert main([str(export_feather), "--max-new-tokens", "2", "--viz", str(tmp_path / "chain.png"), "-q"]) == 0
    assert ref_main(["--model", "tiny", "--max-new-tokens", "2", "--viz", str(tmp_path / "ref.png")]) == 0
    chain, ref = Image.open(tmp_path / "chain.png"), Image.open(tmp_path / "ref.png")
    assert chain.size == ref.size and chain.size[0] > 3 * 300
    assert chain.tobytes() == ref.tobytes()
