"""feather-vlm: FEATHER visual-token pruning for LLaVA, exported to segmented ONNX graphs.

Importing this package never imports torch: the runtime (``feather.runtime``) and the
torch-free pieces it shares (``feather.config``, ``feather.selection``, ``feather.manifest``,
``feather.flops``) must work on a device without the export stack.
"""

import os as _os

# onnxruntime (1.32 on Linux) writes a device id and a queue of telemetry events (OS, CPU, Python
# path) under ~/.cache/Microsoft/DeveloperTools/.onnxruntime when it is imported, unless this is
# set first. Every onnxruntime import of the project comes after this package's; a user's own
# setting wins. docs/hardening.md ("What the runtime writes").
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
