"""The native TensorRT backend: the engines ``feather-build`` wrote, run with
``execute_async_v3`` on one CUDA stream, behind the same seam as ONNX Runtime (``base``).

    pipe = Pipeline.load("feather-export", provider="tensorrt-native")

- **Engines for this machine only.** Each graph's engine is looked up in ``feather.json``
  (``engines``); one built for another GPU or TensorRT version is refused in one line with
  the command that rebuilds it, and so is one whose sha256 or graph changed since the build.
- **Memory allocated once.** KV caches are device buffers at their capacity (``kv_buffer``);
  a step's new rows are written at their slot with one strided device copy
  (``cudaMemcpy2DAsync``: KV heads rows of S x hd each), nothing else moves. Every other
  input and every output has a device buffer per optimization profile, sized at that
  profile's maximum when the session opens. Outputs are handed out as ``DeviceTensor``
  views of those buffers and fed, without a copy, to the next engine.
- **Profiles per phase.** A decoder engine has a ``prefill`` and a ``decode`` profile
  (export/engines.py); each run picks the first profile whose ranges hold every input
  shape, on that profile's own execution context (one context per profile, created at open,
  since a profile may be used by one context at a time).
- **One generation at a time per Pipeline.** Outputs live in the session's buffers until its
  next run, so concurrent generations on one Pipeline would overwrite each other's; runs are
  serialized by a lock, and threads that generate at once need a Pipeline each.
- **Versions.** TensorRT 10.3 (JetPack 6) and 11.x share this code: the runtime calls used
  here exist in both; the one version branch is at build time (``export.engines.precision_mode``).
- **Not run here.** TensorRT and CUDA cannot be installed on this project's CI machines; the
  host-side logic runs in CI against a fake ``tensorrt`` and a fake CUDA layer that execute
  each engine's graph with ONNX Runtime (tests/trt). CUDA-graph capture is not implemented.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feather.errors import BackendError
from feather.manifest import GraphSpec, Manifest, sha256_file
from feather.manifest.schema import EngineSpec

REBUILD = "rebuild: feather-build {folder}"


def import_tensorrt():
    """The ``tensorrt`` module, or one line on how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendError("provider tensorrt-native: the tensorrt Python package is missing (desktop: "
                           "pip install 'feather-vlm[trt]'; Jetson: apt's python3-libnvinfer in a venv made "
                           "with --system-site-packages; see docs/tensorrt.md)") from None
    return tensorrt


class Cuda:
    """The few CUDA runtime calls the backend makes, through cuda-python (``cuda.bindings``
    in cuda-python >= 12.6, ``cuda.cudart`` before). Tests substitute a fake with the same methods."""

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart
            except ImportError:
                raise BackendError("provider tensorrt-native: cuda-python is missing (pip install cuda-python, "
                                   "matching the CUDA major version of your driver)") from None
        self.rt = cudart
        self._default = cudart.cudaMemcpyKind.cudaMemcpyDefault  # direction from the pointers (UVA)

    def _call(self, what: str, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {what} failed ({err})")
        return rest[0] if len(rest) == 1 else rest

    def device(self) -> tuple[str, str]:
        """(GPU name, compute capability "major.minor") of the current device."""
        index = self._call("cudaGetDevice", self.rt.cudaGetDevice())
        props = self._call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(index))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\0").strip(), f"{props.major}.{props.minor}"

    def stream(self) -> int:
        return int(self._call("cudaStreamCreate", self.rt.cudaStreamCreate()))

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)  # at teardown: nothing to report to

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        self._call("cudaMemsetAsync", self.rt.cudaMemsetAsync(ptr, 0, nbytes, stream))

    def copy(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src, nbytes, self._default, stream))

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, stream: int) -> None:
        self._call("cudaMemcpy2DAsync",
                   self.rt.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, self._default, stream))

    def sync(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))


@dataclass
class DeviceTensor:
    """A backend value: ``shape`` elements of ``dtype`` at device address ``ptr``; ``owner``
    keeps the memory alive."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    owner: object = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class _Device:
    """One device allocation, freed when the last reference goes."""

    def __init__(self, cuda, nbytes: int):
        self.ptr, self.nbytes = cuda.malloc(nbytes), nbytes
        weakref.finalize(self, cuda.free, self.ptr)


class TrtKVBuffer:
    """A device cache buffer [1, KV, C, hd], zeroed; ``write`` copies a step's rows in place."""

    def __init__(self, backend: TrtBackend, shape: tuple[int, int, int, int], dtype):
        self._backend, self.shape, self.dtype = backend, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._mem = _Device(backend.cuda, self.nbytes)
        backend.cuda.memset(self._mem.ptr, self.nbytes, backend.stream)
        self.address = self._mem.ptr
        self.value = DeviceTensor(self._mem.ptr, self.shape, self.dtype, self._mem)

    def write(self, rows, at: int) -> None:
        # rows [1, KV, S, hd] -> buffer[:, :, at:at+S]: KV blocks of S*hd contiguous elements each
        _, kv, cap, hd = self.shape
        shape, dtype = tuple(rows.shape), np.dtype(rows.dtype)
        fits = len(shape) == 4 and shape[1] == kv and shape[3] == hd and 0 <= at <= cap - shape[2]
        if not fits or dtype != self.dtype:
            raise BackendError(f"KV write: rows {shape} {dtype} at {at} do not fit buffer {self.shape} {self.dtype}")
        keep = None
        if isinstance(rows, np.ndarray):
            keep = np.ascontiguousarray(rows)
            src = keep.ctypes.data
        else:
            src = rows.ptr
        row = hd * self.dtype.itemsize
        self._backend.cuda.copy2d(self.address + at * row, cap * row, src, shape[2] * row, shape[2] * row, kv,
                                  self._backend.stream)
        if keep is not None:  # pageable host memory: wait before numpy may free it
            self._backend.cuda.sync(self._backend.stream)


@dataclass
class _Profile:
    """One optimization profile: its execution context, input ranges, and device buffers
    at the profile's maximum shapes."""

    index: int
    name: str
    context: object
    ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # input -> (min shape, max shape)
    buffers: dict[str, _Device]

    def admits(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        for name, shape in shapes.items():
            lo, hi = self.ranges[name]
            if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return False
        return True


class TrtSession:
    """One engine: a context and buffers per profile; ``run`` binds and enqueues."""

    def __init__(self, backend: TrtBackend, engine, spec: EngineSpec, graph: GraphSpec):
        trt, self._backend, self.engine, self.name = backend.trt, backend, engine, spec.file
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._host_inputs = {n for n in self.input_names if engine.is_shape_inference_io(n)}
        fed = set()  # inputs the runtime always feeds as device values: the KV cache buffers
        if graph.kv is not None:
            fed = {n for layer in range(*graph.layers) for n in graph.kv.names(layer)[:2]}
        names_by_index = [p.name for p in spec.profiles]
        count = max(engine.num_optimization_profiles, 1)
        self.profiles = [self._profile(i, names_by_index[i] if i < len(names_by_index) else str(i), fed)
                         for i in range(count)]
        self._lock = threading.Lock()

    def _profile(self, index: int, label: str, fed: set[str]) -> _Profile:
        engine, cuda = self.engine, self._backend.cuda
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"{self.name}: TensorRT cannot create an execution context (out of GPU memory?)")
        context.set_optimization_profile_async(index, self._backend.stream)
        ranges = {}
        for tensor in self.input_names:
            static = tuple(engine.get_tensor_shape(tensor))
            if all(d >= 0 for d in static):
                ranges[tensor] = (static, static)
            else:
                lo, _, hi = engine.get_tensor_profile_shape(tensor, index)
                ranges[tensor] = (tuple(lo), tuple(hi))
        buffers = {}
        for tensor in self.input_names:  # at the profile's max; the context learns the max shapes too
            self._set_shape(context, tensor, ranges[tensor][1])
            if tensor not in fed and tensor not in self._host_inputs:
                buffers[tensor] = _Device(cuda, _nbytes(ranges[tensor][1], self.dtypes[tensor]))
        for tensor in self.output_names:
            buffers[tensor] = _Device(cuda, _nbytes(tuple(context.get_tensor_shape(tensor)), self.dtypes[tensor]))
        return _Profile(index, label, context, ranges, buffers)

    def _set_shape(self, context, name: str, shape) -> None:
        if not context.set_input_shape(name, tuple(shape)):
            raise BackendError(f"{self.name}: input {name} shape {tuple(shape)} refused by the engine")

    def run(self, feeds: Mapping, outputs: Sequence[str]) -> dict:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"{self.name}: input {missing[0]!r} not fed ({len(missing)} missing)")
        shapes = {name: tuple(value.shape) for name, value in feeds.items()}
        profile = next((p for p in self.profiles if p.admits(shapes)), None)
        if profile is None:
            got = ", ".join(f"{n} {s}" for n, s in shapes.items() if len(s) > 1 and n in self.input_names[:3])
            raise BackendError(f"{self.name}: shapes ({got}) lie outside every optimization profile "
                               f"({', '.join(p.name for p in self.profiles)}); rebuild for a larger range "
                               "(feather-export --max-seq, then feather-build)")
        with self._lock:
            return self._enqueue(profile, feeds, outputs)

    def _enqueue(self, profile: _Profile, feeds: Mapping, outputs: Sequence[str]) -> dict:
        cuda, stream, context = self._backend.cuda, self._backend.stream, profile.context
        hold = []  # host arrays whose memory must live until the copies are done
        for name, value in feeds.items():
            dtype = np.dtype(value.dtype)
            if dtype != self.dtypes[name]:
                raise BackendError(f"{self.name}: input {name} is {dtype}, the engine takes {self.dtypes[name]}")
            self._set_shape(context, name, value.shape)
            if isinstance(value, np.ndarray):
                host = np.ascontiguousarray(value)
                hold.append(host)
                if name in self._host_inputs:  # shape tensors stay on the host
                    ptr = host.ctypes.data
                else:
                    ptr = profile.buffers[name].ptr
                    cuda.copy(ptr, host.ctypes.data, host.nbytes, stream)
            else:
                ptr = value.ptr
            context.set_tensor_address(name, ptr)
        result = {}
        for name in self.output_names:  # every output is bound, asked for or not
            buf = profile.buffers[name]
            context.set_tensor_address(name, buf.ptr)
            if name in outputs:
                result[name] = DeviceTensor(buf.ptr, tuple(context.get_tensor_shape(name)), self.dtypes[name], buf)
        unknown = [n for n in outputs if n not in result]
        if unknown:
            raise BackendError(f"{self.name}: no output {unknown[0]!r}")
        if not context.execute_async_v3(stream):
            raise BackendError(f"{self.name}: TensorRT execution failed (see TensorRT's log)")
        if hold:
            cuda.sync(stream)  # pageable host sources: the copies must finish before they go
        return result


class TrtBackend:
    """Native TensorRT with the engines recorded in feather.json. ``trt`` and ``cuda`` default
    to the real ``tensorrt`` module and ``Cuda()``; tests pass fakes."""

    name = "tensorrt-native"

    def __init__(self, trt=None, cuda=None, verify: bool = True):
        self.trt = trt or import_tensorrt()
        self.cuda = cuda or Cuda()
        self.verify = verify
        self.stream = self.cuda.stream()
        self.gpu, self.compute_capability = self.cuda.device()
        self._runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self._engines = []  # keep every engine alive as long as its sessions

    def open(self, path: Path, graph: GraphSpec, manifest: Manifest) -> TrtSession:
        folder, spec = find_engine(path, manifest)
        check_engine(spec, self.trt.__version__, self.gpu, self.compute_capability, folder)
        if manifest.files.get(spec.graph) != spec.graph_sha256:
            raise BackendError(f"{spec.file}: built from another version of {spec.graph}; "
                               f"{REBUILD.format(folder=folder)}")
        file = folder / spec.file
        if not file.is_file() or file.is_symlink():
            raise BackendError(f"{file}: missing or not a plain file; {REBUILD.format(folder=folder)}")
        if self.verify and sha256_file(file) != spec.sha256:
            raise BackendError(f"{file}: sha256 mismatch (changed after feather-build); "
                               f"{REBUILD.format(folder=folder)}")
        engine = self._runtime.deserialize_cuda_engine(file.read_bytes())
        if engine is None:
            raise BackendError(f"{file}: TensorRT cannot deserialize it; {REBUILD.format(folder=folder)}")
        self._engines.append(engine)
        return TrtSession(self, engine, spec, graph)

    def kv_buffer(self, shape, dtype) -> TrtKVBuffer:
        return TrtKVBuffer(self, shape, dtype)

    def to_host(self, value) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        out = np.empty(value.shape, dtype=value.dtype)
        self.cuda.copy(out.ctypes.data, value.ptr, out.nbytes, self.stream)
        self.cuda.sync(self.stream)
        return out


def find_engine(path: Path, manifest: Manifest) -> tuple[Path, EngineSpec]:
    """(export folder, the engine recorded for the graph at ``path``); one line if none."""
    path = Path(path)
    for spec in manifest.engines:
        parts = Path(spec.graph).parts
        if path.parts[-len(parts):] == parts:
            return path.parents[len(parts) - 1], spec
    folder = path.parent
    raise BackendError(f"{path.name}: no TensorRT engine recorded in feather.json; build them on this machine: "
                       f"feather-build {folder}")


def check_engine(spec: EngineSpec, tensorrt: str, gpu: str, compute_capability: str, folder) -> None:
    """Refuse, in one line with the rebuild command, an engine built for another TensorRT
    version, GPU model or compute capability (TensorRT engines are not portable)."""
    built = (spec.tensorrt, spec.gpu, spec.compute_capability)
    if built != (tensorrt, gpu, compute_capability):
        raise BackendError(
            f"{spec.file}: built for {spec.gpu} (compute {spec.compute_capability}) with TensorRT {spec.tensorrt}; "
            f"this machine has {gpu} (compute {compute_capability}) with TensorRT {tensorrt}; "
            f"{REBUILD.format(folder=folder)}")


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
