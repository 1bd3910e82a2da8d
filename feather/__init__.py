"""feather-vlm: FEATHER visual-token pruning for LLaVA, exported to segmented ONNX graphs.

Importing this package never imports torch: the runtime (``feather.runtime``) and the
torch-free pieces it shares (``feather.config``, ``feather.selection``, ``feather.manifest``,
``feather.flops``) must work on a device without the export stack.
"""

__version__ = "0.1.0"
