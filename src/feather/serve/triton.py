"""Write a Triton Inference Server model repository for an export folder.

    write_repository("feather-export", "model_repository", instances=2)
    # tritonserver --model-repository model_repository

Layout (what ``tritonserver --model-repository`` reads as it is)::

    DIR/<name>/config.pbtxt      backend "python", inputs/outputs, instance_group, parameters
    DIR/<name>/1/model.py        feather.serve.triton_model: one Pipeline per instance
    DIR/<name>/1/export/         only with copy=True (else config.pbtxt names the folder)

Scaling: ``instances`` stub processes per device (``instance_group { count }``), each with
its own Pipeline; ``kind="gpu"`` places that many on every visible GPU; several servers
sharing one repository sit behind any HTTP/gRPC load balancer (docs/serving.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from feather.errors import ConfigError, OutputError

_MODEL_PY = Path(__file__).with_name("triton_model.py")

_IO = """\
input [
  { name: "PROMPT", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "IMAGE_BYTES", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "MAX_TOKENS", data_type: TYPE_INT32, dims: [ 1 ], optional: true },
  { name: "TEMPERATURE", data_type: TYPE_FP32, dims: [ 1 ], optional: true },
  { name: "TOP_P", data_type: TYPE_FP32, dims: [ 1 ], optional: true },
  { name: "SEED", data_type: TYPE_INT64, dims: [ 1 ], optional: true },
  { name: "POINT", data_type: TYPE_STRING, dims: [ 1 ], optional: true }
]
output [
  { name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "TOKENS", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "FEATHER", data_type: TYPE_STRING, dims: [ 1 ] }
]
"""


def config_pbtxt(name: str, export_dir: str, instances: int = 1, kind: str = "cpu", provider: str | None = None,
                 threads: int | None = None, max_image_pixels: int = 4096 * 4096,
                 default_max_tokens: int = 128, site_packages: str = "") -> str:
    """The model's ``config.pbtxt`` (protobuf text format)."""
    if kind not in ("cpu", "gpu"):
        raise ConfigError(f"kind: got {kind!r}, expected cpu or gpu")
    if instances < 1:
        raise ConfigError(f"instances: got {instances}, expected an integer >= 1")
    provider = provider or ("cuda" if kind == "gpu" else "cpu")
    params = {"export_dir": export_dir, "provider": provider, "threads": "" if threads is None else str(threads),
              "max_image_pixels": str(max_image_pixels), "default_max_tokens": str(default_max_tokens),
              "site_packages": site_packages}
    lines = [f'name: "{name}"', 'backend: "python"',
             "max_batch_size: 0  # one request = one image and one prompt; the chain runs batch 1", _IO,
             f"instance_group [ {{ count: {instances}, kind: KIND_{kind.upper()} }} ]"]
    lines += [f'parameters {{ key: "{k}", value: {{ string_value: "{_escape(v)}" }} }}' for k, v in params.items()]
    return "\n".join(lines) + "\n"


def write_repository(export_dir, repo, name: str = "feather", instances: int = 1, kind: str = "cpu",
                     provider: str | None = None, threads: int | None = None, copy: bool = False,
                     site_packages: str = "") -> Path:
    """Write ``repo/name`` for ``export_dir``; -> that model folder. Refuses to overwrite.
    ``site_packages``: a venv's site-packages that Triton's Python stub should import
    feather-vlm from (empty: the stub's own Python has it installed)."""
    export = Path(export_dir).resolve()
    if not (export / "feather.json").is_file():
        raise ConfigError(f"{export_dir}: no feather.json; expected a folder written by feather-export")
    if provider == "cpu" and kind == "gpu":
        raise ConfigError("--triton-kind gpu needs --provider cuda or tensorrt")
    model = Path(repo) / name
    if model.exists() and any(model.iterdir()):
        raise OutputError(f"{model}: exists and is not empty; choose another --triton-repo or --triton-name")
    text = config_pbtxt(name, "export" if copy else str(export), instances, kind, provider, threads,
                        site_packages=site_packages)
    version = model / "1"
    try:
        version.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_MODEL_PY, version / "model.py")
        if copy:
            shutil.copytree(export, version / "export")
        (model / "config.pbtxt").write_text(text)
    except OSError as err:
        shutil.rmtree(model, ignore_errors=True)
        raise OutputError(f"{model}: cannot write ({err})") from None
    return model


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
