"""The Triton model repository: its files, model.py driven through a stand-in for Triton's
``triton_python_backend_utils`` (CI has no Triton), and, where FEATHER_TRITON_PYTHON names
a venv with nvidia-pytriton + tritonclient + feather-vlm, a real tritonserver."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from feather.errors import ConfigError, OutputError
from feather.serve.cli import main as serve_main
from tests.serve.conftest import PROMPT, free_port


@pytest.fixture(scope="module")
def repo(export_feather, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton") / "repo"
    assert serve_main([str(export_feather), "--triton-repo", str(root), "--triton-instances", "2"]) == 0
    return root


def test_repository_files(repo, export_feather):
    config = (repo / "feather" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 0" in config
    assert "instance_group [ { count: 2, kind: KIND_CPU } ]" in config
    assert f'key: "export_dir", value: {{ string_value: "{Path(export_feather).resolve()}" }}' in config
    for name in ("PROMPT", "IMAGE_BYTES", "MAX_TOKENS", "POINT", "TEXT", "TOKENS", "FEATHER"):
        assert f'name: "{name}"' in config
    model_py = (repo / "feather" / "1" / "model.py").read_text()
    assert "class TritonPythonModel" in model_py
    with pytest.raises(OutputError, match="not empty"):  # never overwrites
        from feather.serve.triton import write_repository

        write_repository(export_feather, repo)
    with pytest.raises(ConfigError, match="feather.json"):
        write_repository(repo, repo / "other")


def test_gpu_config_and_copy(export_feather, tmp_path):
    from feather.serve.triton import config_pbtxt, write_repository

    text = config_pbtxt("m", "/x", instances=3, kind="gpu")
    assert "count: 3, kind: KIND_GPU" in text and 'string_value: "cuda"' in text
    model = write_repository(export_feather, tmp_path / "r", name="m", copy=True)
    assert 'key: "export_dir", value: { string_value: "export" }' in (model / "config.pbtxt").read_text()
    assert (model / "1" / "export" / "feather.json").is_file()


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


def _fake_pb_utils() -> types.ModuleType:
    """What model.py uses of Triton's module, with Triton's calling conventions."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor
    pb.TritonError = lambda message: types.SimpleNamespace(message=lambda: message)
    pb.InferenceResponse = lambda output_tensors=(), error=None: types.SimpleNamespace(
        outputs={t.name: t.array for t in output_tensors}, error=error)
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    return pb


def _load_model(repo: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    monkeypatch.setattr(sys, "path", ["", *sys.path])  # model.py edits sys.path: restore it afterwards
    spec = importlib.util.spec_from_file_location("feather_triton_model", repo / "feather" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json.loads(json.dumps({"parameters": _parameters(repo / "feather" / "config.pbtxt")}))
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repo / "feather"),
                      "model_version": "1", "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    return model


def _parameters(config: Path) -> dict:
    """The parameters of a config.pbtxt as Triton hands them to model.py (JSON)."""
    import re

    return {m[1]: {"string_value": m[2]} for m in re.finditer(r'key: "(\w+)", value: \{ string_value: "([^"]*)" \}',
                                                              config.read_text())}


def _request(image_bytes: bytes, prompt: str = PROMPT, max_tokens: int = 8) -> dict:
    return {"PROMPT": _Tensor("PROMPT", np.array([prompt.encode()], dtype=np.object_)),
            "IMAGE_BYTES": _Tensor("IMAGE_BYTES", np.array([image_bytes], dtype=np.object_)),
            "MAX_TOKENS": _Tensor("MAX_TOKENS", np.array([max_tokens], dtype=np.int32))}


def test_model_py_answers_like_the_pipeline(repo, image_png, pipe, monkeypatch):
    model = _load_model(repo, monkeypatch)
    assert "" not in sys.path and os.getcwd() not in sys.path  # a checkout in the cwd cannot shadow feather
    expected = pipe.generate(str(image_png), PROMPT, max_new_tokens=8)
    good = _request(image_png.read_bytes())
    no_image = {k: v for k, v in good.items() if k != "IMAGE_BYTES"}
    junk = _request(b"not an image")
    replies = model.execute([good, no_image, junk])  # one response per request, in order
    assert replies[0].error is None
    assert replies[0].outputs["TOKENS"].tolist() == expected.tokens
    assert replies[0].outputs["TEXT"][0].decode() == expected.text
    assert json.loads(replies[0].outputs["FEATHER"][0])["stages"] == expected.stages
    assert "IMAGE_BYTES: required" in replies[1].error.message()
    assert "cannot read image" in replies[2].error.message()


def test_model_py_takes_an_operating_point(repo, image_png, pipe, monkeypatch):
    """POINT: the JSON of feather-serve's ``feather`` field, checked against the export's range."""
    model = _load_model(repo, monkeypatch)
    point = {"ratio": 0.5, "stride": 2}
    expected = pipe.generate(str(image_png), PROMPT, max_new_tokens=8, prune=point)

    def asking(value) -> dict:
        text = value if isinstance(value, bytes) else json.dumps(value).encode()
        return {**_request(image_png.read_bytes()), "POINT": _Tensor("POINT", np.array([text], dtype=np.object_))}

    good, plain, out, junk = model.execute([asking(point), _request(image_png.read_bytes()),
                                            asking({"ratio": 0.99}), asking(b"{ratio")])
    assert good.error is None and good.outputs["TOKENS"].tolist() == expected.tokens
    extra = json.loads(good.outputs["FEATHER"][0])
    assert extra["point"] == {"ratio": 0.5, "stride": 2, "mode": "static"} and extra["stages"] == expected.stages
    assert json.loads(plain.outputs["FEATHER"][0])["point"] == {"ratio": 0.7, "stride": 3, "mode": "static"}
    assert out.error.message() == ("POINT.ratio: 0.99 is outside the range this export accepts (ratio 0.05..0.95, "
                                   "stride 1..24, modes static, paper)")
    assert junk.error.message().startswith("POINT: invalid JSON")


@pytest.mark.skipif(not os.environ.get("FEATHER_TRITON_PYTHON"),
                    reason="set FEATHER_TRITON_PYTHON to a venv's python with nvidia-pytriton, tritonclient[http] "
                           "and feather-vlm (see docs/serving.md) to run a real tritonserver")
def test_real_tritonserver_answers_like_feather_run(repo, image_png, pipe, tmp_path):
    python = Path(os.environ["FEATHER_TRITON_PYTHON"])
    probe = ("import pytriton, sys; from pathlib import Path; "
             "print(Path(pytriton.__file__).parent); print(sys.base_prefix)")
    pytriton_dir, prefix = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                                          check=True).stdout.split()
    triton = Path(pytriton_dir) / "tritonserver"
    backends = tmp_path / "backends" / "python"  # Triton's python backend with the stub for this Python
    backends.mkdir(parents=True)
    for f in (triton / "backends" / "python").iterdir():
        if f.is_file():
            (backends / f.name).symlink_to(f)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    (backends / "triton_python_backend_stub").symlink_to(triton / "python_backend_stubs" / version /
                                                         "triton_python_backend_stub")
    libs = Path(pytriton_dir).parent / "nvidia_pytriton.libs"
    # The stub's embedded Python finds its home through PATH: with the venv first it runs in the
    # venv (numpy < 2, which the stub is built against; under numpy 2 it misreads every input).
    env = {**os.environ, "LD_LIBRARY_PATH": f"{prefix}/lib:{libs}", "PATH": f"{python.parent}:{os.environ['PATH']}"}
    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [str(triton / "bin" / "tritonserver"), "--model-repository", str(repo),
           "--backend-directory", str(backends.parent), "--http-address", "127.0.0.1", "--grpc-address",
           "127.0.0.1", "--metrics-address", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(metrics)]
    log = tmp_path / "triton.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        client = Path(__file__).parents[2] / "examples" / "triton_client.py"
        deadline, reply = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            run = subprocess.run([str(python), str(client), str(image_png), PROMPT, "--url", f"127.0.0.1:{http}",
                                  "--max-tokens", "12", "--json"], capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                reply = json.loads(run.stdout)
                break
            time.sleep(1)
        assert reply is not None, log.read_text(errors="replace")[-3000:]
        expected = pipe.generate(str(image_png), PROMPT, max_new_tokens=12)
        assert reply["tokens"] == expected.tokens
        assert reply["text"] == expected.text
        assert reply["stages"] == expected.stages
        for _ in range(4):  # the stub stays healthy: every later request gets the same answer
            again = subprocess.run([str(python), str(client), str(image_png), PROMPT, "--url", f"127.0.0.1:{http}",
                                    "--max-tokens", "12", "--json"], capture_output=True, text=True, timeout=120)
            assert again.returncode == 0, again.stderr[-2000:]
            assert json.loads(again.stdout)["tokens"] == expected.tokens
    finally:
        server.terminate()
        server.wait(timeout=60)
