"""Where a chain runs: the provider names and the thread bound, one table each. Torch-free and
import-free, so the core's CLI helpers (``feather.cli``) and the runtime's backends
(``feather.runtime.backends``, which maps each name to a backend) read the same tables."""

ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")
"""ONNX Runtime's execution providers (``runtime/backends/onnxruntime.py``)."""
PROVIDERS = (*ORT_PROVIDERS, "tensorrt-native")
"""``provider`` names ``Pipeline.load`` (and every CLI's ``--provider``) takes; each maps to a
backend: ``tensorrt-native`` runs feather-build's engines (``runtime/backends/tensorrt.py``)."""
MAX_THREADS = 256
"""The most intra-op threads per graph a backend (and every CLI's ``--threads``) takes."""
