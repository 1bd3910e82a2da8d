"""Backends behind the runtime's seam (``base``): ONNX Runtime today (CPU, CUDA and TensorRT
execution providers); a new backend is a new module here plus a line in ``BACKENDS``."""

from __future__ import annotations

from feather.errors import BackendError
from feather.runtime.backends.base import Backend, KVBuffer, Session, Value

PROVIDERS = ("cpu", "cuda", "tensorrt", "tensorrt-native")
"""``provider`` names ``Pipeline.load`` takes; each maps to a backend below."""


def get(provider: str = "cpu", threads: int | None = None) -> Backend:
    """The backend for ``provider``; ``BackendError`` in one line for an unknown one."""
    if provider == "tensorrt-native":  # feather-build's engines (runtime/backends/tensorrt.py)
        from feather.runtime.backends.tensorrt import TrtBackend

        return TrtBackend()
    if provider in PROVIDERS:
        from feather.runtime.backends.onnxruntime import OrtBackend

        return OrtBackend(provider, threads)
    raise BackendError(f"provider: got {provider!r}, expected one of {', '.join(PROVIDERS)}")


__all__ = ["PROVIDERS", "Backend", "KVBuffer", "Session", "Value", "get"]
