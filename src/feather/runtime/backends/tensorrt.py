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
  (feather/build/engines.py); each run picks the first profile whose ranges hold every input
  shape, on that profile's own execution context (one context per profile, created at open,
  since a profile may be used by one context at a time).
- **One generation at a time per Pipeline.** Outputs live in the session's buffers until its
  next run, so concurrent generations on one Pipeline would overwrite each other's; runs are
  serialized by a lock, and threads that generate at once need a Pipeline each.
- **CUDA graphs for decode.** A decode step binds the same shapes and addresses every time
  within one generation (KV buffers at capacity, inputs copied into the profile's buffers),
  so the ``decode`` profile's enqueue is captured into a CUDA graph on its second identical
  call (TensorRT wants one plain run first) and replayed with one ``cudaGraphLaunch``
  afterwards; any change of a shape or address (the next generation's buffers) captures
  again. Engines with host shape inputs are never captured (their values would be baked in),
  and a failed capture falls back to plain enqueues for that profile.
  ``TrtBackend(cuda_graphs=False)`` turns it off.
- **Versions.** TensorRT 10.3 (JetPack 6) and 11.x share this code: the runtime calls used
  here exist in both; the one version branch is at build time (``export.engines.precision_mode``).
- **Not run here.** TensorRT and CUDA cannot be installed on this project's CI machines; the
  host-side logic, CUDA-graph capture and replay included, runs in CI against a fake
  ``tensorrt`` and a fake CUDA layer that execute each engine's graph with ONNX Runtime
  (tests/trt).
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
from feather.runtime.backends.cuda import Cuda

__all__ = ["Cuda", "DeviceTensor", "TrtBackend", "TrtKVBuffer", "TrtSession", "check_engine", "find_engine"]

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
        # CUDA graphs: per profile, the bindings seen last and the graph captured for them
        self._seen: dict[int, tuple] = {}
        self._graphs: dict[int, _Graph] = {}
        self._no_capture: set[int] = set()
        self.graph_launches = 0  # decode steps replayed from a graph (tests and benchmarks read it)
        weakref.finalize(self, _destroy_graphs, backend.cuda, self._graphs)

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

    def _capturable(self, profile: _Profile) -> bool:
        return (self._backend.cuda_graphs and profile.name == "decode" and not self._host_inputs
                and profile.index not in self._no_capture)

    def _execute(self, context) -> None:
        if not context.execute_async_v3(self._backend.stream):
            raise BackendError(f"{self.name}: TensorRT execution failed (see TensorRT's log)")

    def _execute_graphed(self, profile: _Profile, key: tuple) -> None:
        """Replay the profile's graph if it was captured for these bindings; capture it on the
        second call with the same bindings; run plainly otherwise."""
        cuda, stream, index = self._backend.cuda, self._backend.stream, profile.index
        graph = self._graphs.get(index)
        if graph is not None and graph.key == key:
            cuda.launch(graph.exec, stream)
            self.graph_launches += 1
            return
        if self._seen.get(index) != key:  # first time with these bindings: a plain run warms them up
            self._seen[index] = key
            self._execute(profile.context)
            return
        captured = self._capture(profile.context)
        if captured is None:  # this engine cannot be captured: plain enqueues from now on
            self._no_capture.add(index)
            self._execute(profile.context)
            return
        if graph is not None:
            cuda.destroy(graph.exec)
        self._graphs[index] = _Graph(key, captured)
        cuda.launch(captured, stream)
        self.graph_launches += 1

    def _capture(self, context):
        """A graph of one enqueue of ``context``, or None if TensorRT or CUDA refused it."""
        cuda, stream = self._backend.cuda, self._backend.stream
        try:
            cuda.begin_capture(stream)
        except BackendError:
            return None
        try:
            ok = context.execute_async_v3(stream)
        except BaseException:
            cuda.end_capture(stream)  # leave capture mode before the error goes up
            raise
        try:
            graph = cuda.end_capture(stream)
        except BackendError:
            return None
        if not ok:
            cuda.drop(graph)
            return None
        try:
            return cuda.instantiate(graph)
        except BackendError:
            return None

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
        bound = []  # (name, shape, address) of every tensor: what a captured graph depends on
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
            bound.append((name, tuple(value.shape), ptr))
        result = {}
        for name in self.output_names:  # every output is bound, asked for or not
            buf, shape = profile.buffers[name], tuple(context.get_tensor_shape(name))
            context.set_tensor_address(name, buf.ptr)
            bound.append((name, shape, buf.ptr))
            if name in outputs:
                result[name] = DeviceTensor(buf.ptr, shape, self.dtypes[name], buf)
        unknown = [n for n in outputs if n not in result]
        if unknown:
            raise BackendError(f"{self.name}: no output {unknown[0]!r}")
        if self._capturable(profile):
            self._execute_graphed(profile, tuple(sorted(bound)))
        else:
            self._execute(context)
        if hold:
            cuda.sync(stream)  # pageable host sources: the copies must finish before they go
        return result


class TrtBackend:
    """Native TensorRT with the engines recorded in feather.json. ``trt`` and ``cuda`` default
    to the real ``tensorrt`` module and ``Cuda()``; tests pass fakes."""

    name = "tensorrt-native"

    def __init__(self, trt=None, cuda=None, verify: bool = True, cuda_graphs: bool = True):
        self.trt = trt or import_tensorrt()
        self.cuda = cuda or Cuda("provider tensorrt-native")
        self.verify, self.cuda_graphs = verify, cuda_graphs
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


@dataclass
class _Graph:
    key: tuple  # every bound tensor's (name, shape, address) when it was captured
    exec: object  # cudaGraphExec_t


def _destroy_graphs(cuda, graphs: dict) -> None:
    for graph in graphs.values():
        cuda.destroy(graph.exec)
    graphs.clear()


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
