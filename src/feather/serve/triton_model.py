"""Triton Inference Server Python-backend model for a FEATHER export folder.

``feather-serve EXPORT --triton-repo DIR`` copies this file to ``DIR/<name>/1/model.py``
beside a ``config.pbtxt``. Triton starts one stub process per model instance; each
instance owns one ``Pipeline`` (loaded in ``initialize``), and every request gets its own
generation state (KV caches) inside ``Pipeline.generate``.

Inputs: ``PROMPT`` (BYTES [1]) and ``IMAGE_BYTES`` (BYTES [1], an encoded PNG/JPEG file,
decoded here with a pixel bound; camera frames are encoded by the client); optional ``MAX_TOKENS``
(INT32), ``TEMPERATURE`` and ``TOP_P`` (FP32), ``SEED`` (INT64), ``POINT`` (BYTES [1]: JSON,
the operating point, as feather-serve's ``feather`` field: ``{"ratio": 0.5, "stride": 2}``).
Outputs: ``TEXT`` (BYTES [1]), ``TOKENS`` (INT64 [n]), ``FEATHER`` (BYTES [1]: JSON with the
kept image indices per stage, the timings and the operating point that ran). Needs
feather-vlm (the base install) in the Python that Triton's stub runs. The stub ignores
PYTHONPATH and finds its Python through PATH: start tritonserver with a venv's ``bin`` first
on PATH to run the stub in that venv (its numpy must be the one the stub was built against:
< 2 for nvidia-pytriton 0.7.0's). The ``site_packages``
parameter adds a venv's site-packages instead, after the stub's own numpy is loaded.
``triton_python_backend_utils`` is provided by Triton itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class _Bad(Exception):
    """A request Triton should answer with an error (not a server failure)."""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        _add_site_packages(params.get("site_packages", ""))
        _drop_working_directory()
        from feather.runtime import Pipeline

        folder = Path(params["export_dir"])
        if not folder.is_absolute():  # --triton-copy: the export sits inside the version folder
            folder = Path(args["model_repository"]) / args["model_version"] / folder
        provider = params.get("provider") or "cpu"
        if args.get("model_instance_kind") == "GPU":
            # one stub process per instance: pin it to the GPU Triton placed it on
            os.environ["CUDA_VISIBLE_DEVICES"] = str(args["model_instance_device_id"])
            provider = provider if provider != "cpu" else "cuda"
        threads = int(params["threads"]) if params.get("threads") else None
        self.max_pixels = int(params.get("max_image_pixels") or 4096 * 4096)
        self.default_max_tokens = int(params.get("default_max_tokens") or 128)
        self.pipe = Pipeline.load(folder, provider=provider, threads=threads)

    def execute(self, requests: list) -> list:
        from feather.errors import ConfigError, InputError

        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except (_Bad, InputError, ConfigError) as err:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(" ".join(str(err).split()))))
        return responses

    def _answer(self, request):
        from feather.sampling import Sampling

        prompt = _scalar(request, "PROMPT")
        if prompt is None:
            raise _Bad("PROMPT: required")
        prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        image = self._image(request)
        max_tokens = int(_scalar(request, "MAX_TOKENS", self.default_max_tokens))
        sampling = Sampling(temperature=float(_scalar(request, "TEMPERATURE", 0.0)),
                            top_p=float(_scalar(request, "TOP_P", 1.0)), seed=int(_scalar(request, "SEED", 0)))
        point = self._point(request)
        result = self.pipe.generate(image, prompt, max_tokens, sampling, on_token=_stop_if_cancelled(request),
                                    prune=point)
        extra = json.dumps({"stages": result.stages, "timings": result.timings, "point": result.point})
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("TEXT", np.array([result.text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("TOKENS", np.asarray(result.tokens, dtype=np.int64)),
            pb_utils.Tensor("FEATHER", np.array([extra.encode("utf-8")], dtype=np.object_)),
        ])

    def _image(self, request):
        from feather.serve.protocol import RequestError, open_image_bytes

        encoded = _scalar(request, "IMAGE_BYTES")
        if encoded is None:
            raise _Bad("IMAGE_BYTES: required (an encoded PNG or JPEG file)")
        try:
            return open_image_bytes(bytes(encoded), self.max_pixels)
        except RequestError as err:
            raise _Bad(f"IMAGE_BYTES: {err.message}") from None

    def _point(self, request):
        """``POINT``'s JSON, checked against the export's range (``feather.points.resolve``), or None."""
        from feather import jsonread, points

        text = _scalar(request, "POINT")
        if text is None:
            return None
        value = jsonread.loads(bytes(text) if not isinstance(text, str) else text, "POINT", max_bytes=4096)
        return points.resolve(self.pipe.manifest, value, "POINT")

    def finalize(self) -> None:
        self.pipe = None


def _add_site_packages(dirs: str) -> None:
    """Put a virtual environment's site-packages (``os.pathsep``-separated) first on sys.path,
    .pth files included: Triton's stub ignores PYTHONPATH and sees only its base Python's."""
    import site
    import sys

    for folder in filter(None, dirs.split(os.pathsep)):
        before = list(sys.path)
        site.addsitedir(folder)
        sys.path[:] = [p for p in sys.path if p not in before] + before


def _drop_working_directory() -> None:
    """The stub's sys.path starts with '' (the server's working directory): a server started
    inside a feather-vlm checkout would import its sources instead of the installed package."""
    import sys

    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]


def _scalar(request, name: str, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    values = tensor.as_numpy().reshape(-1)
    if len(values) != 1:
        raise _Bad(f"{name}: expected one value, got {len(values)}")
    return values[0]


def _stop_if_cancelled(request):
    """Stop generating when the client cancelled the request (Triton >= 23.10 reports it)."""
    if not hasattr(request, "is_cancelled"):
        return None

    def on_token(token: int, piece: str) -> None:
        if request.is_cancelled():
            raise _Bad("request cancelled by the client")

    return on_token
