"""The PyTorch reference of FEATHER on HF LLaVA: ``Reference.load(model, PruneConfig(...)).generate(...)``."""

from feather.reference.generate import Reference, Result

__all__ = ["Reference", "Result"]
