"""Inference backends. Each graph of the chain is one ``Session``: named numpy arrays in,
named numpy arrays out. Everything else in the runtime is shared by all backends, so the
CPU tests exercise the whole chain whatever runs the graphs on a device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feather.errors import BackendError
from feather.manifest import GraphSpec, Manifest

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OrtSession:
    """One ONNX Runtime ``InferenceSession``, created once and reused across calls.
    ``InferenceSession.run`` is safe to call from several threads at once."""

    def __init__(self, path: Path, provider: str = "cpu", threads: int | None = None, trt: dict | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # The chain runs its sessions one after another; a session's pool must not keep
        # spinning once its run ends, or it fights the next segment's pool for the cores
        # (profiled: the FEATHER chain decoded at 0.43x the unpruned one on 2 cores).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        providers = _providers(provider, trt)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types; report them as ours
            raise BackendError(f"{path.name}: ONNX Runtime cannot load it ({_first_line(err)})") from None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.name = path.name

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.outputs
        try:
            return dict(zip(names, self.session.run(names, feeds)))
        except Exception as err:
            raise BackendError(f"{self.name}: inference failed ({_first_line(err)})") from None

    def run_values(self, feeds: dict) -> dict:
        """Like ``run`` but inputs may be ``OrtValue``s and every output stays an ``OrtValue``:
        KV caches pass from one step to the next without a copy into numpy."""
        import onnxruntime as ort

        as_value = ort.OrtValue.ortvalue_from_numpy
        values = {k: v if isinstance(v, ort.OrtValue) else as_value(v) for k, v in feeds.items()}
        try:
            return dict(zip(self.outputs, self.session.run_with_ort_values(self.outputs, values)))
        except Exception as err:
            raise BackendError(f"{self.name}: inference failed ({_first_line(err)})") from None


def _providers(provider: str, trt: dict | None) -> list:
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise BackendError(f"provider: got {provider!r}, expected one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider][0]
    available = ort.get_available_providers()
    if wanted not in available:
        hint = "install onnxruntime-gpu built with TensorRT" if provider == "tensorrt" else "install onnxruntime-gpu"
        raise BackendError(
            f"provider {provider}: this onnxruntime has no {wanted} (available: {', '.join(available)}); {hint}"
        )
    chosen = [p for p in PROVIDERS[provider] if p in available]
    if provider == "tensorrt" and trt:
        chosen[0] = ("TensorrtExecutionProvider", trt)
    return chosen


def tensorrt_options(manifest: Manifest, graph: GraphSpec, cache_dir: Path) -> dict:
    """TensorRT EP options for one graph: an engine cache in the export folder and an
    optimization profile from the manifest's axis ranges (min / opt / max)."""
    shapes = {k: _profile(manifest, graph, k) for k in ("min", "opt", "max")}
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_fp16_enable": "True" if manifest.precision == "fp16" else "False",
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }


def _profile(manifest: Manifest, graph: GraphSpec, which: str) -> str:
    d, kv, hd = manifest.dims.hidden, manifest.dims.kv_heads, manifest.dims.head_dim
    seq = getattr(graph.axes["seq"], which) if "seq" in graph.axes else 1
    past = getattr(graph.axes["past"], which) if "past" in graph.axes else 0
    if graph.layers is None:  # embed graph
        return f"input_ids:1x{seq}"
    dims = [f"hidden:1x{seq}x{d}", f"keep_index:{seq}", f"position_ids:1x{seq}"]
    for layer in range(*graph.layers):
        dims += [f"{graph.kv.past_key % layer}:1x{kv}x{past}x{hd}", f"{graph.kv.past_value % layer}:1x{kv}x{past}x{hd}"]
    return ",".join(dims)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
