"""The tracebacks issue 21 (class 8, 9) and issue 22 (item 1) found: each is now one line and
exit 1 (or a normal run), and the hub is tried online unless the user says offline."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from feather.errors import FeatherError, InputError, ModelError

PY = sys.executable


def _one_line_error(proc, prog: str, needle: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and needle in lines[0], lines
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- feather-run
def test_run_json_with_stdout_closed_from_the_start(export_feather):
    """`feather-run --json >&-`: Python has no sys.stdout; the answer is discarded, exit 0."""
    cmd = f'exec "{PY}" -m feather.runtime.cli "{export_feather}" --json --max-new-tokens 2 >&-'
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("digits", [4301, 5000, 100_000])
def test_manifest_integer_with_thousands_of_digits(export_feather, tmp_path, capsys, digits):
    from feather.runtime.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(export_feather, copy)
    text = (copy / "feather.json").read_text()
    (copy / "feather.json").write_text(re.sub(r'"max_seq": \d+', f'"max_seq": {"7" * digits}', text, count=1))
    assert main([str(copy), "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("feather-run: error: ") and "feather.json" in err, err


@pytest.mark.parametrize("name", [b"a\nb.png", b"a\xffb.png", b"\xe9t\xe9 \n\t.png"])
def test_viz_output_names_that_are_not_plain(export_feather, tmp_path, name):
    """Newlines and bytes that are not UTF-8 in the output name: the file is written under that
    exact name and the status line stays one line."""
    out = os.path.join(os.fsencode(tmp_path), name)
    proc = subprocess.run([PY, "-m", "feather.runtime.cli", str(export_feather), "--max-new-tokens", "2",
                           "--viz", out], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(out) and os.listdir(os.fsencode(tmp_path)) == [name]
    overlay = [line for line in proc.stderr.splitlines() if line.startswith(b"overlay: ")]
    assert len(overlay) == 1 and b"\n" not in overlay[0]


@pytest.mark.parametrize("folder", [None, 3, "", "  ", b"bytes", 1.5])
def test_pipeline_load_of_not_a_path(folder):
    from feather.runtime import Pipeline

    with pytest.raises(InputError, match=r"^folder: got .*; expected an export folder's path") as err:
        Pipeline.load(folder)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- pickled weights
class _Bomb:
    """Unpickling this writes a marker file: proof that nothing unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_pickle_only_checkpoint_is_one_line_and_never_unpickled(tiny_path, tmp_path, name):
    from feather.hf.checkpoint import load_config

    folder, marker = tmp_path / "ckpt", tmp_path / "UNPICKLED"
    folder.mkdir()
    for f in tiny_path.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, folder / f.name)
    (folder / name).write_bytes(pickle.dumps({"weight": _Bomb(str(marker))}))
    with pytest.raises(ModelError, match=f"{re.escape(name)} holds pickled weights.*convert it to "
                                         "model.safetensors") as err:
        load_config(str(folder))
    assert "\n" not in str(err.value) and not marker.exists()


def test_pickle_only_checkpoint_cli(tiny_path, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(tiny_path / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    out = tmp_path / "out"
    proc = subprocess.run([PY, "-m", "feather.export.cli", "--model", str(folder), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    _one_line_error(proc, "feather-export", "convert it to model.safetensors")
    assert not out.exists()


# ---------------------------------------------------------------- the hub (issue 22, item 1)
class _Hub(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's names)
        _Hub.seen.append(self.path)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


def _hub_env(tmp_path, endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"))
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        env.pop(k, None)
    return env


def test_a_hub_id_is_fetched_online_by_default(tmp_path):
    """HF_HUB_OFFLINE unset: feather-export asks the hub (a local stand-in at HF_ENDPOINT) for the
    id's config.json; the stand-in's 404 is one line."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hub.seen.clear()
    try:
        env = _hub_env(tmp_path, f"http://127.0.0.1:{server.server_port}")
        proc = subprocess.run([PY, "-m", "feather.export.cli", "--model", "someorg/some-llava", "-o",
                               str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=env)
    finally:
        server.shutdown()
    assert any("someorg/some-llava" in p and "config.json" in p for p in _Hub.seen), _Hub.seen
    _one_line_error(proc, "feather-export", "someorg/some-llava: cannot load the checkpoint")


def test_without_a_network_the_error_says_so(tmp_path):
    """Nothing listens at the hub's address: one line naming the missing network, in seconds
    (no five retries), and the user's HF_HUB_OFFLINE=1 still means cache only."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _hub_env(tmp_path, f"http://127.0.0.1:{port}")
    cmd = [PY, "-m", "feather.export.cli", "--model", "someorg/some-llava", "-o", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    _one_line_error(proc, "feather-export", "no network")
    assert "not in the local Hugging Face cache" in proc.stderr
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "HF_HUB_OFFLINE": "1"})
    _one_line_error(proc, "feather-export", "someorg/some-llava: cannot load the checkpoint")


def test_cli_leaves_hf_hub_offline_alone(monkeypatch):
    from feather import cli

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cli._quiet_transformers()
    assert "HF_HUB_OFFLINE" not in os.environ


# ---------------------------------------------------------------- feather-build, feather-eval (class 9)
@pytest.mark.parametrize("flags,needle", [
    (["--workspace-gb", "-1"], "expected a number in (0, 1024]"),
    (["--workspace-gb", "0"], "expected a number in (0, 1024]"),
    (["--workspace-gb", "inf"], "expected a finite number"),
    (["--timing-cache", "."], "is a folder or empty"),
    (["--timing-cache", ""], "is a folder or empty"),
])
def test_build_dry_run_checks_its_flags(export_feather, capsys, flags, needle):
    from feather.build.cli import main

    assert main([str(export_feather), "--dry-run", *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("feather-build: error: ") and needle in err, err


@pytest.mark.parametrize("plot,needle", [(".", "is a folder"), ("out.nosuchformat", "expected a file name ending"),
                                         ("missing/out.png", "does not exist")])
def test_eval_plot_path_is_refused_before_the_evaluation(export_feather, tmp_path, capsys, monkeypatch, plot, needle):
    from feather.eval.cli import main

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"image": "none.png", "expression": "x", "bbox": [0, 0, 1, 1]}) + "\n")
    assert main([str(export_feather), "--data", str(data), "--plot", plot, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "feather-eval: error: --plot" in err and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_eval_plot_of_all_zero_scores_has_an_accuracy_axis(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from feather.eval.report import plot

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    run = {"summary": {"acc@0.5": 0.0, "stages": []}, "dims": {"grid": 24}}
    out = plot({"runs": {"a": run, "b": run}}, tmp_path / "p.png")
    assert out.is_file() and out.stat().st_size > 1000
    assert figures[-1].axes[0].get_xlim() == (0.0, 100.0)


# ---------------------------------------------------------------- an interrupted final rename
@pytest.mark.parametrize("existing", [False, True])
def test_sigterm_during_the_final_rename(tmp_path, monkeypatch, existing):
    """SIGTERM as the work folder is renamed into place is held until the swap is done: the new
    export is then in place and whole, the old one gone, no work folder left, and the command
    still reports the interrupt (feather-export exits 143)."""
    from feather import cli
    from feather.folder import staged_output

    out = tmp_path / "a" / "b" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "feather.json").write_text("old")
    real = os.rename

    def rename(src, dst):
        if ".partial-" in str(src):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    old = cli.install_signal_handlers()
    try:
        with pytest.raises(cli.Interrupted):
            with staged_output(out, overwrite=True) as work:
                (work / "feather.json").write_text("new")
                (work / "graph.onnx").write_bytes(b"x" * 100)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    assert (out / "feather.json").read_text() == "new" and (out / "graph.onnx").stat().st_size == 100
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_feather_error_is_the_base(export_feather):
    """Every refusal above is a FeatherError: the CLIs' one-line path."""
    assert issubclass(InputError, FeatherError) and issubclass(ModelError, FeatherError)


@pytest.mark.parametrize("quiet", [False, True])
def test_eval_says_it_is_loading_the_model(export_feather, sample_image, tmp_path, capsys, quiet):
    """feather-eval prints a status line around the model load (issue 22, item 4); none with
    --no-progress."""
    from feather.eval.cli import main

    sample_image.save(tmp_path / "sample.png")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"image": "sample.png", "expression": "x", "bbox": [0, 0, 50, 50]}) + "\n")
    flags = ["--no-progress"] if quiet else []
    assert main([str(export_feather), "--data", str(data), "--max-new-tokens", "2", *flags]) == 0
    err = capsys.readouterr().err
    status = [line for line in err.splitlines() if line.startswith(f"loading {export_feather}")]
    if quiet:
        assert status == []
    else:
        assert status[0] == f"loading {export_feather} ..." and re.fullmatch(r".*: \d+\.\d s", status[1]), status
