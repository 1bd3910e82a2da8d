"""Backends behind the runtime's seam (``base``): ONNX Runtime (CPU, CUDA and TensorRT execution
providers) and native TensorRT engines; a new backend is a new module here plus a branch in ``get``."""

from __future__ import annotations

from feather.errors import BackendError
from feather.providers import MAX_THREADS, ORT_PROVIDERS, PROVIDERS  # the tables (core: the CLIs read them too)
from feather.runtime.backends.base import Backend, KVBuffer, Session, Value


def get(provider: str = "cpu", threads: int | None = None) -> Backend:
    """The backend for ``provider``; ``BackendError`` in one line for an unknown one."""
    if provider == "tensorrt-native":  # feather-build's engines (runtime/backends/tensorrt.py)
        from feather.runtime.backends.tensorrt import TrtBackend

        return TrtBackend()
    if provider in ORT_PROVIDERS:
        from feather.runtime.backends.onnxruntime import OrtBackend

        return OrtBackend(provider, threads)
    raise BackendError(f"provider: got {provider!r}, expected one of {', '.join(PROVIDERS)}")


__all__ = ["MAX_THREADS", "ORT_PROVIDERS", "PROVIDERS", "Backend", "KVBuffer", "Session", "Value", "get"]
