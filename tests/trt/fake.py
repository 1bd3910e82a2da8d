"""A fake ``tensorrt`` module and CUDA layer, so the TensorRT backend's own host-side logic
(engine lookup, contexts per profile, buffer sizing, binding, KV writes) runs in CI.

Only the calls feather makes exist, with TensorRT's documented names and rules:
- the builder records what it was asked (flags, profiles, workspace, timing cache) and
  "serializes" an engine as JSON naming the graph and the profiles;
- an engine reads the graph's I/O with ONNX Runtime; its contexts refuse input shapes outside
  the active profile (``set_input_shape`` returns False), a profile may belong to one context
  at a time, and ``execute_async_v3`` runs the graph with ONNX Runtime on the bound addresses,
  checking each lies inside a device allocation big enough for its shape, and that each
  output's shape equals what ``get_tensor_shape`` promised;
- device memory is host memory behind a registry (``FakeCuda``): every device pointer the
  backend hands to an engine or a copy is checked against it.
"""

from __future__ import annotations

import ctypes
import enum
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ORT_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
             "tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32)}


class FakeCuda:
    """Device memory as registered host arrays; copies check every device pointer's bounds."""

    def __init__(self, gpu: str = "Fake GPU", cc: str = "8.7"):
        self.gpu, self.cc = gpu, cc
        self.allocs: dict[int, np.ndarray] = {}
        self.copies: list[int] = []  # bytes per copy, in order
        self.freed = 0

    def device(self):
        return self.gpu, self.cc

    def stream(self) -> int:
        return 7

    def sync(self, stream: int) -> None:
        assert stream == 7

    def malloc(self, nbytes: int) -> int:
        arr = np.full(max(nbytes, 1), 0xAB, dtype=np.uint8)  # garbage until written: reads of it show
        self.allocs[arr.ctypes.data] = arr
        return arr.ctypes.data

    def free(self, ptr: int) -> None:
        self.allocs.pop(ptr)
        self.freed += 1

    def size_of(self, ptr: int) -> int:
        return self.allocs[ptr].nbytes

    def check(self, ptr: int, nbytes: int) -> bool:
        """True if [ptr, ptr + nbytes) lies in one allocation; False if ptr is in none (host)."""
        for base, arr in self.allocs.items():
            if base <= ptr < base + arr.nbytes:
                assert ptr + nbytes <= base + arr.nbytes, f"device access past its allocation ({nbytes} bytes)"
                return True
        return False

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        assert self.check(ptr, nbytes)
        ctypes.memset(ptr, 0, nbytes)

    def copy(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        assert self.check(dst, nbytes) or self.check(src, nbytes), "a copy with no device side"
        ctypes.memmove(dst, src, nbytes)
        self.copies.append(nbytes)

    def copy2d(self, dst, dpitch, src, spitch, width, height, stream) -> None:
        assert width <= dpitch and width <= spitch
        for row in range(height):
            self.check(dst + row * dpitch, width)
            self.check(src + row * spitch, width)
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        self.copies.append(width * height)

    # CUDA graphs: work enqueued while capturing is recorded, not run; a launch replays it with
    # the addresses and shapes bound at capture time (as a real graph's kernel arguments are).
    capturing: list | None = None
    launches = 0

    def begin_capture(self, stream: int) -> None:
        assert stream == 7 and self.capturing is None, "nested capture"
        self.capturing = []

    def end_capture(self, stream: int):
        graph, self.capturing = self.capturing, None
        return graph

    def instantiate(self, graph):
        return tuple(graph)

    def launch(self, graph_exec, stream: int) -> None:
        self.launches += 1
        for replay in graph_exec:
            replay()

    def destroy(self, graph_exec) -> None:
        pass

    def drop(self, graph) -> None:
        self.dropped = getattr(self, "dropped", 0) + 1

    def read(self, ptr: int, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        assert self.check(ptr, nbytes), "an engine tensor bound to host memory"
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr))[:nbytes]
        return raw.view(dtype).reshape(shape).copy()


class _Enum(enum.IntEnum):
    pass


def make_trt(cuda: FakeCuda, version: str = "10.3.0") -> SimpleNamespace:
    """A fake ``tensorrt`` module; version 11.x has no precision builder flags."""
    flags = {"OBEY_PRECISION_CONSTRAINTS": 2}
    if version.startswith("10."):
        flags.update(FP16=0, BF16=1)
    trt = SimpleNamespace(
        __version__=version, float32=np.dtype(np.float32),
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=2: None}),
        TensorIOMode=_Enum("TensorIOMode", "INPUT OUTPUT"),
        BuilderFlag=_Enum("BuilderFlag", flags), MemoryPoolType=_Enum("MemoryPoolType", "WORKSPACE"),
        NetworkDefinitionCreationFlag=_Enum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5}),
        LayerType=_Enum("LayerType", "REDUCE UNARY SOFTMAX NORMALIZATION ELEMENTWISE MATRIX_MULTIPLY"),
        ElementWiseOperation=_Enum("ElementWiseOperation", "SUM PROD DIV POW"),
        IElementWiseLayer=FakeLayer, nptype=lambda dtype: dtype, builds=[], runs=[],
    )
    trt.Builder = lambda logger: FakeBuilder(trt)
    trt.OnnxParser = FakeParser
    trt.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda blob: FakeEngine(trt, cuda, blob))
    return trt


# ---------------------------------------------------------------- building
class FakeLayer:
    """A network layer (for ``pin_fp32``): type, op, named inputs and outputs."""

    def __init__(self, name, type, inputs=(), outputs=(), op=None):
        self.name, self.type, self.op = name, type, op
        self._in = [SimpleNamespace(name=n) for n in inputs]
        self._out = [SimpleNamespace(name=n) for n in outputs]
        self.precision, self.output_types = None, {}

    num_inputs = property(lambda self: len(self._in))
    num_outputs = property(lambda self: len(self._out))

    def get_input(self, i):
        return self._in[i]

    def get_output(self, i):
        return self._out[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class FakeNetwork:
    def __init__(self, flags: int, layers=()):
        self.flags, self.layers, self.path = flags, list(layers), None

    num_layers = property(lambda self: len(self.layers))

    def get_layer(self, i):
        return self.layers[i]


class FakeParser:
    def __init__(self, network: FakeNetwork, logger):
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        if not Path(path).is_file():
            self.num_errors = 1
            return False
        self.network.path = path
        return True

    def get_error(self, i):
        return "file not found"


class FakeConfig:
    def __init__(self):
        self.flags, self.profiles, self.pool, self.cache = set(), [], {}, None

    def set_memory_pool_limit(self, pool, nbytes):
        self.pool[pool.name] = nbytes

    def set_flag(self, flag):
        self.flags.add(flag.name)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile.shapes)

    def create_timing_cache(self, blob: bytes):
        return SimpleNamespace(blob=bytes(blob), serialize=None)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache

    def get_timing_cache(self):
        return SimpleNamespace(serialize=lambda: self.cache.blob + b"|tactics")


class FakeBuilder:
    def __init__(self, trt):
        self.trt = trt

    def create_network(self, flags: int) -> FakeNetwork:
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig()

    def create_optimization_profile(self):
        profile = SimpleNamespace(shapes={})
        profile.set_shape = lambda name, lo, opt, hi: profile.shapes.__setitem__(name, [list(lo), list(opt),
                                                                                         list(hi)])
        return profile

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes:
        self.trt.builds.append({"graph": Path(network.path).name, "network_flags": network.flags,
                                "flags": sorted(config.flags), "pool": dict(config.pool),
                                "cache_in": config.cache.blob, "profiles": config.profiles})
        return json.dumps({"onnx": network.path, "profiles": config.profiles}).encode()


# ---------------------------------------------------------------- running
class FakeEngine:
    def __init__(self, trt, cuda: FakeCuda, blob: bytes):
        import onnxruntime as ort

        data = json.loads(blob)
        self.trt, self.cuda, self.profiles = trt, cuda, data["profiles"]
        self.name = Path(data["onnx"]).name
        self.session = ort.InferenceSession(data["onnx"], providers=["CPUExecutionProvider"])
        io = [(v, trt.TensorIOMode.INPUT) for v in self.session.get_inputs()]
        io += [(v, trt.TensorIOMode.OUTPUT) for v in self.session.get_outputs()]
        self.io = {v.name: (mode, ORT_TYPES[v.type], list(v.shape)) for v, mode in io}
        self.names = list(self.io)
        self.owners: dict[int, object] = {}  # profile -> the context using it

    num_io_tensors = property(lambda self: len(self.names))
    num_optimization_profiles = property(lambda self: len(self.profiles))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.io[name][0]

    def get_tensor_dtype(self, name):
        return self.io[name][1]

    def get_tensor_shape(self, name):
        return [d if isinstance(d, int) else -1 for d in self.io[name][2]]

    def is_shape_inference_io(self, name):
        return False

    def get_tensor_profile_shape(self, name, index):
        return self.profiles[index][name]  # KeyError: a dynamic input missing from a profile

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.profile = engine, 0 if not engine.profiles else None
        self.shapes, self.addresses = {}, {}

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        owner = self.engine.owners.get(index)
        assert owner is None or owner is self, "a profile may be used by one context at a time"
        self.engine.owners[index], self.profile = self, index
        return True

    def set_input_shape(self, name, shape) -> bool:
        mode, _, dims = self.engine.io[name]
        assert mode == self.engine.trt.TensorIOMode.INPUT
        shape = tuple(shape)
        if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
            return False
        if any(not isinstance(d, int) for d in dims):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
            if any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name, ptr) -> bool:
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name):
        mode, _, dims = self.engine.io[name]
        if mode == self.engine.trt.TensorIOMode.INPUT:
            return list(self.shapes[name])
        bound = {}
        for n, s in self.shapes.items():
            bound.update({d: v for d, v in zip(self.engine.io[n][2], s) if not isinstance(d, int)})
        return [d if isinstance(d, int) else bound.get(d, -1) for d in dims]

    def execute_async_v3(self, stream: int) -> bool:
        addresses, shapes = dict(self.addresses), dict(self.shapes)
        if self.engine.cuda.capturing is not None:
            self.engine.cuda.capturing.append(lambda: self._execute(addresses, shapes))
            return True
        self._execute(addresses, shapes)
        return True

    def _execute(self, addresses: dict, shapes: dict) -> None:
        engine, cuda = self.engine, self.engine.cuda
        feeds = {}
        for name, (mode, dtype, _) in engine.io.items():
            if mode == engine.trt.TensorIOMode.INPUT:
                feeds[name] = cuda.read(addresses[name], shapes[name], dtype)
        outs = engine.session.run(None, feeds)
        for value, out in zip(outs, engine.session.get_outputs()):
            assert list(value.shape) == self.get_tensor_shape(out.name), (out.name, value.shape)
            ptr = addresses[out.name]
            assert cuda.check(ptr, value.nbytes), f"{out.name} bound to host memory"
            ctypes.memmove(ptr, np.ascontiguousarray(value).ctypes.data, value.nbytes)
        engine.trt.runs.append((engine.name, self.profile, shapes))
