"""The few CUDA runtime calls the GPU backends make, through cuda-python.

Shared by the native TensorRT backend (device buffers, copies, CUDA-graph capture of a
decode step) and ONNX Runtime's CUDA provider (device-resident KV caches written in place).
``cuda.bindings.runtime`` is cuda-python >= 12.6's module, ``cuda.cudart`` the one before;
where the two APIs differ (``cudaGraphInstantiate``'s arguments) the branch is here.
Tests substitute a fake with the same methods (tests/trt/fake.py).
"""

from __future__ import annotations

from feather.errors import BackendError


def import_cudart(who: str):
    """cuda-python's runtime module, or one line on how to get it."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendError(f"{who}: cuda-python is missing (pip install cuda-python, "
                               "matching the CUDA major version of your driver)") from None
    return cudart


class Cuda:
    """One process's CUDA runtime, reached through cuda-python; every failure is one line."""

    def __init__(self, who: str = "provider tensorrt-native", cudart=None):
        self.rt = cudart or import_cudart(who)
        self._default = self.rt.cudaMemcpyKind.cudaMemcpyDefault  # direction from the pointers (UVA)

    def _call(self, what: str, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {what} failed ({err})")
        return None if not rest else rest[0] if len(rest) == 1 else rest

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

    # CUDA graphs: capture what one stream enqueues, replay it with one launch.
    def begin_capture(self, stream: int) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal  # other threads' CUDA calls go on
        self._call("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(stream, mode))

    def end_capture(self, stream: int):
        return self._call("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream))

    def instantiate(self, graph):
        """An executable graph; the captured graph itself is freed."""
        try:
            result = self.rt.cudaGraphInstantiate(graph, 0)  # cuda-python 12: (graph, flags)
        except TypeError:
            result = self.rt.cudaGraphInstantiate(graph, b"", 0)  # cuda-python 11: (graph, log buffer, size)
        exec_ = self._call("cudaGraphInstantiate", result)
        exec_ = exec_[0] if isinstance(exec_, list) else exec_
        self.rt.cudaGraphDestroy(graph)
        return exec_

    def drop(self, graph) -> None:
        """Free a captured graph that will not be instantiated."""
        self.rt.cudaGraphDestroy(graph)

    def launch(self, graph_exec, stream: int) -> None:
        self._call("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph_exec, stream))

    def destroy(self, graph_exec) -> None:
        self.rt.cudaGraphExecDestroy(graph_exec)  # at teardown or replacement: nothing to report to
