"""feather-export: FEATHER-pruned LLaVA as a chain of ONNX graphs (``export()``)."""

from feather.export.api import export

__all__ = ["export"]
