"""feather-export CLI: a success in-process, and one-line errors that leave nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from feather.export.cli import main
from feather.manifest import load_manifest

# name -> (extra arguments, what the one error line must say); --model is the tiny folder
# unless the case gives its own, -o is <case folder>/out.
BAD = {
    "missing model": (["--model", "{case}/nope"], "nope: no such checkpoint folder"),
    "not llava": (["--model", "{case}/llama"], "model_type 'llama' is not LLaVA"),
    "K not ascending": (["--K", "16", "8"], "K: got [16, 8], expected strictly ascending"),
    "K past the layers": (["--K", "8", "24"], "K[1]: got 24, expected a layer index below the model's 24 layers"),
    "unknown criterion": (["--criterion", "fastest"], "criterion: got 'fastest', expected one of"),
    "ratio 1.5": (["--ratio", "1.5"], "ratio: got 1.5, expected a fraction pruned strictly between 0 and 1"),
    "non-empty output": ([], "out: folder is not empty; pass --overwrite to replace it"),
    "int8": (["--precision", "int8"], "precision: got 'int8', expected one of fp32, fp16"),
    # silently ignored flags, data loss, bad numbers: refused before torch is imported
    "K with text_only": (["--criterion", "text_only", "--K", "8", "16"], "K: criterion 'text_only' takes no K list"),
    "K with none": (["--criterion", "none", "--K", "5"], "K: criterion 'none' takes no K list"),
    "overwrite a user folder": (["--overwrite"], "out: not a feather export (no feather.json); --overwrite"),
    "output is the current folder": (["-o", ".", "--overwrite"], "is or contains the current folder"),
    "output is empty": (["-o", ""], "output: empty path; expected a folder name"),
    "output under /proc": (["-o", "/proc/self/out"], "/out: under /proc, a system folder"),
    "output is the checkpoint": (["-o", "{case}/ckpt", "--model", "{case}/ckpt", "--overwrite"],
                                 "overlaps the checkpoint folder"),
    "unknown flag": (["--bogus"], "unrecognized arguments: --bogus"),
    "max-seq": (["--max-seq", "-3"], "argument --max-seq: got -3, expected an integer in 16..262144"),
}
TORCH_FREE = ["K with text_only", "K with none", "overwrite a user folder", "output is the current folder",
              "output is empty", "output under /proc", "unknown flag", "max-seq"]


def _prepare(case, name: str, tiny_path) -> None:
    case.mkdir()
    if name == "not llava":
        (case / "llama").mkdir()
        (case / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    if name in ("non-empty output", "overwrite a user folder"):
        (case / "out").mkdir()
        (case / "out" / "mine.txt").write_text("keep me")
    if name in ("output is the current folder", "output is the checkpoint"):
        (case / "mine.txt").write_text("keep me")
        shutil.copytree(tiny_path, case / "ckpt")


@pytest.fixture(scope="module")
def bad_runs(tiny_path, tmp_path_factory):
    """Every bad case as its own ``python -m feather.export.cli`` process, all started at once
    (each pays the torch import) and awaited together: name -> (case folder, process result)."""
    root, procs = tmp_path_factory.mktemp("bad-cli"), {}
    for i, (name, (extra, _)) in enumerate(BAD.items()):
        case = root / f"case{i}"
        _prepare(case, name, tiny_path)
        args = [a.replace("{case}", str(case)) for a in ["--model", str(tiny_path), "-o", str(case / "out"), *extra]]
        procs[name] = (case, subprocess.Popen([sys.executable, "-m", "feather.export.cli", *args], cwd=case,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return {name: (case, proc.communicate(timeout=300), proc.returncode) for name, (case, proc) in procs.items()}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(bad_runs, name):
    case, (out, err), code = bad_runs[name]
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("feather-export: error: ") and BAD[name][1] in lines[0], lines[0]
    assert out == ""
    left = sorted(p.name for p in case.iterdir())
    assert not [n for n in left if "partial" in n], left
    if name in ("non-empty output", "overwrite a user folder"):
        assert [p.name for p in (case / "out").iterdir()] == ["mine.txt"]
        assert (case / "out" / "mine.txt").read_text() == "keep me"
    elif name in ("output is the current folder", "output is the checkpoint"):
        assert (case / "mine.txt").read_text() == "keep me" and (case / "ckpt" / "model.safetensors").is_file()
        assert sorted(p.name for p in case.iterdir()) == ["ckpt", "mine.txt"]
    else:
        assert not (case / "out").exists(), left


def test_bad_flags_and_outputs_fail_before_torch_is_imported(bad_runs, tmp_path):
    """Flag errors once cost 4 s and 226 MB of torch import; now they come first."""
    cases = [[a.replace("{case}", str(tmp_path)) for a in ["-o", str(bad_runs[n][0] / "out"), *BAD[n][0]]]
             for n in TORCH_FREE]
    code = ("import sys, contextlib, io\nfrom feather.export.cli import main\n"
            f"for args in {cases!r}:\n"
            "    with contextlib.redirect_stderr(io.StringIO()):\n"
            "        assert main(args) == 1, args\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_export_in_process_replaces_an_existing_export(tiny_path, export_feather, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(export_feather, out)  # a full K = 8 16 export, three segments
    (out / "stale.txt").write_text("from before")
    assert main(["--model", "tiny", "--K", "8", "--quiet", "-o", str(out), "--overwrite"]) == 0
    assert capsys.readouterr().out == ""
    m = load_manifest(out, verify=True)
    assert m.pruning.K == [8] and [s.layers for s in m.segments] == [[0, 8], [8, 24]]
    assert [s.n_image_in for s in m.segments] == [576, 236]
    assert sorted(p.name for p in out.iterdir()) == [
        "embed.onnx", "feather.json", "segment0.onnx", "segment1.onnx", "tokenizer.json", "vision.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial folder left beside it
