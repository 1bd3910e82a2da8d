"""The ONNX Runtime backend: one ``InferenceSession`` per graph, run through IOBinding.

On the CPU, KV caches are numpy buffers that ONNX Runtime reads in place
(``OrtValue.ortvalue_from_numpy`` wraps host memory without a copy), so a decode step binds
each layer's whole cache without allocating or copying anything proportional to the context;
the step's new rows come back as small outputs and are written into the buffer at their slot.

On the CUDA and TensorRT providers the caches live on the GPU (``OrtDeviceKVBuffer``: an
``OrtValue`` ONNX Runtime allocates on the device, zeroed once, its new rows written with one
strided device copy through cuda-python), and every output is bound on the device, so hidden
states pass from segment to segment without touching the host; only the logits come back.
Without cuda-python the caches fall back to host memory (with a warning), which ONNX Runtime
then copies to the device on every step.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from feather.errors import BackendError
from feather.manifest import GraphSpec, Manifest
from feather.manifest.graphs import CACHE, SEQ, role_shapes
from feather.runtime.backends import MAX_THREADS
from feather.text import first_line

EPS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
"""``backends.ORT_PROVIDERS`` -> the execution providers to ask for, in order."""


class OrtKVBuffer:
    """A host cache buffer [1, KV, C, hd]; ``value`` wraps the same memory for ONNX Runtime."""

    def __init__(self, shape: tuple[int, int, int, int], dtype):
        import onnxruntime as ort

        self.array = np.zeros(shape, dtype=dtype)
        self.value = ort.OrtValue.ortvalue_from_numpy(self.array)  # no copy on CPU
        self.nbytes = self.array.nbytes
        self.address = self.array.ctypes.data

    def write(self, rows, at: int) -> None:
        rows = rows.numpy() if not isinstance(rows, np.ndarray) else rows  # [1, KV, S, hd], small
        self.array[:, :, at : at + rows.shape[2]] = rows


class OrtDeviceKVBuffer:
    """A device cache buffer [1, KV, C, hd] that ONNX Runtime allocated (``value``), zeroed;
    ``write`` copies a step's rows [1, KV, S, hd] to rows ``at..at+S-1`` with one
    ``cudaMemcpy2DAsync`` (KV blocks of S*hd elements; pitch C*hd) on the backend's stream;
    the backend waits for the copies once, before its next session run, not once per layer."""

    def __init__(self, backend: OrtBackend, shape: tuple[int, int, int, int], dtype):
        import onnxruntime as ort

        self._backend, self._cuda, self._stream = backend, backend.cuda, backend.stream
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.value = ort.OrtValue.ortvalue_from_shape_and_type(list(self.shape), self.dtype.type,
                                                               backend.device, backend.device_id)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.address = self.value.data_ptr()
        self._cuda.memset(self.address, self.nbytes, self._stream)
        backend.pending()

    def write(self, rows, at: int) -> None:
        _, kv, cap, hd = self.shape
        host = isinstance(rows, np.ndarray)
        shape = tuple(rows.shape) if host else tuple(rows.shape())
        dtype = rows.dtype if host else _ORT_DTYPES.get(rows.data_type())
        fits = len(shape) == 4 and shape[1] == kv and shape[3] == hd and 0 <= at <= cap - shape[2]
        if not fits or dtype != self.dtype:
            raise BackendError(f"KV write: rows {shape} {dtype} at {at} do not fit buffer {self.shape} {self.dtype}")
        keep = np.ascontiguousarray(rows) if host else None
        src = keep.ctypes.data if host else rows.data_ptr()
        row = hd * self.dtype.itemsize
        self._cuda.copy2d(self.address + at * row, cap * row, src, shape[2] * row, shape[2] * row, kv, self._stream)
        self._backend.pending(keep)  # ONNX Runtime runs on its own stream: synced before its next run


_ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
               "tensor(bfloat16)": None}


class OrtSession:
    """One ``InferenceSession``; ``run`` binds inputs and outputs with IOBinding (safe to call
    from several threads at once: each call makes its own binding)."""

    def __init__(self, path: Path, providers: list, options, device: str | None = None, before_run=None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types; report them as ours
            raise BackendError(f"{path.name}: ONNX Runtime cannot load it ({first_line(err)})") from None
        self.name = path.name
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._as_value = ort.OrtValue.ortvalue_from_numpy
        gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(self.session.get_providers())
        self._device = device or ("cuda" if gpu else "cpu")  # where outputs are bound
        self._before_run = before_run

    def run(self, feeds: Mapping, outputs: Sequence[str]) -> dict:
        if self._before_run is not None:
            self._before_run()
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                value = self._as_value(np.ascontiguousarray(value))
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, self._device)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as err:
            raise BackendError(f"{self.name}: inference failed ({first_line(err)})") from None
        return dict(zip(outputs, binding.get_outputs()))

    def end_profiling(self) -> str:
        """The profile file (when the backend was made with ``profile_dir``)."""
        return self.session.end_profiling()


SESSION_CONFIG = {"session.force_spinning_stop": "1", "session.set_denormal_as_zero": "1"}
"""Every session the project opens on the CPU (the runtime's and the quantization report's):
see ``OrtBackend.__init__`` for why each entry. Not here: ``session.x64quantprecision`` (U8U8
kernels on x86 without VNNI): onnxruntime 1.32's rewrite for it fails at session creation on
our int8 graphs ("Attempt to replace the existing tensor"); int8 weights are quantized with
headroom instead (docs/quantization.md)."""


class OrtBackend:
    """ONNX Runtime with ``provider`` cpu, cuda or tensorrt (the TensorRT execution provider,
    with an engine cache in the export folder and a profile from the manifest's axes)."""

    def __init__(self, provider: str = "cpu", threads: int | None = None, profile_dir: Path | None = None,
                 session_config: dict[str, str] | None = None, kv_on_device: bool | None = None,
                 cuda=None, device: str | None = None, device_id: int = 0):
        """``kv_on_device``: KV caches in device memory (default: on the cuda and tensorrt
        providers when cuda-python is there). ``cuda`` (a ``backends.cuda.Cuda``) and ``device``
        ("cuda") exist for tests, which run the device-buffer path on the CPU with a host copier."""
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= MAX_THREADS):
            raise BackendError(f"threads: got {threads!r}, expected an integer in [1, {MAX_THREADS}]")
        self.name, self.provider, self.threads = f"onnxruntime-{provider}", provider, threads
        self.profile_dir = profile_dir
        # The chain runs its sessions one after another; a session's pool must not keep
        # spinning once its run ends, or it fights the next segment's pool for the cores
        # (profiled: the FEATHER chain decoded at 0.43x the unpruned one on 2 cores).
        # Denormals flush to zero: exp(s - max) of a far-off attention score is often below
        # fp32's normal range, and x86 multiplies denormals ~5-20x slower (profiled on the
        # bench geometry: the attention-weights @ V MatMul 55 -> 12 ms per prefill). Values
        # under 1.2e-38 next to a softmax sum >= 1 change nothing a float32 can show. ORT applies
        # it to the calling thread only for a process's FIRST session, so the graphs also floor
        # the softmax exponent (export/segments.py, EXP_FLOOR); this covers the pool threads.
        self.session_config = dict(SESSION_CONFIG) if session_config is None else session_config
        self._providers = _providers(provider)
        self.device, self.device_id = device or ("cpu" if provider == "cpu" else "cuda"), device_id
        self.cuda, self.stream = cuda, None
        if kv_on_device is None:
            kv_on_device = self.device != "cpu" or cuda is not None
            if kv_on_device and cuda is None:
                try:
                    from feather.runtime.backends.cuda import import_cudart

                    import_cudart(f"provider {provider}")
                except BackendError as err:
                    warnings.warn(f"{err}; KV caches stay in host memory and are copied to the GPU on every step",
                                  stacklevel=2)
                    kv_on_device = False
        if kv_on_device:
            if self.cuda is None:
                from feather.runtime.backends.cuda import Cuda

                self.cuda = Cuda(f"provider {provider}")
            self.stream = self.cuda.stream()
        self.kv_on_device = kv_on_device
        self._lock = threading.Lock()
        self._unsynced, self._hold = False, []  # KV copies enqueued since the last sync; their host sources

    def open(self, path: Path, graph: GraphSpec, manifest: Manifest) -> OrtSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        if self.profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(self.profile_dir) / Path(graph.file).stem)
        providers = list(self._providers)
        if self.provider == "tensorrt" and graph.axes:
            providers[0] = ("TensorrtExecutionProvider", tensorrt_options(manifest, graph, path.parent / "trt-cache"))
        return OrtSession(path, providers, options, self.device, self.sync if self.kv_on_device else None)

    def pending(self, host_source=None) -> None:
        """A KV copy was enqueued on ``stream`` (from ``host_source``, kept alive until the sync)."""
        with self._lock:
            self._unsynced = True
            if host_source is not None:
                self._hold.append(host_source)

    def sync(self) -> None:
        """Wait for the enqueued KV copies (before a session reads the caches)."""
        with self._lock:
            if self._unsynced:
                self.cuda.sync(self.stream)
                self._unsynced, self._hold = False, []

    def kv_buffer(self, shape, dtype) -> OrtKVBuffer | OrtDeviceKVBuffer:
        return OrtDeviceKVBuffer(self, shape, dtype) if self.kv_on_device else OrtKVBuffer(shape, dtype)

    def to_host(self, value) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()


def _providers(provider: str) -> list:
    import onnxruntime as ort

    if provider not in EPS:
        raise BackendError(f"provider: got {provider!r}, expected one of {', '.join(EPS)}")
    wanted = EPS[provider][0]
    available = ort.get_available_providers()
    if wanted not in available:
        hint = "install onnxruntime-gpu built with TensorRT" if provider == "tensorrt" else "install onnxruntime-gpu"
        raise BackendError(
            f"provider {provider}: this onnxruntime has no {wanted} (available: {', '.join(available)}); {hint}"
        )
    return [p for p in EPS[provider] if p in available]


def tensorrt_options(manifest: Manifest, graph: GraphSpec, cache_dir: Path) -> dict:
    """TensorRT EP options for one graph: an engine cache in the export folder and an
    optimization profile from the manifest's axis ranges (min / opt / max)."""
    shapes = {k: _profile(manifest, graph, k) for k in ("min", "opt", "max")}
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": os.fspath(cache_dir),
        "trt_fp16_enable": "True" if graph.dtype == "float16" else "False",
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }


def _profile(manifest: Manifest, graph: GraphSpec, which: str) -> str:
    """One TensorRT profile string (``name:1x640x4096,...``) from the graph I/O contract's shapes."""
    seq = getattr(graph.axes[SEQ], which) if SEQ in graph.axes else 1
    cap = getattr(graph.axes[CACHE], which) if CACHE in graph.axes else 1
    shapes = role_shapes(graph, manifest.dims, seq, cap)
    return ",".join(f"{name}:{'x'.join(str(n) for n in shape)}" for name, shape in shapes.items())
