"""One exception tree for everything a user can get wrong.

CLIs catch ``FeatherError`` and print its message on one line (exit 1); any other
exception is a bug and keeps its traceback.
"""


class FeatherError(Exception):
    """Base of every user-facing error in feather-vlm."""


class ConfigError(FeatherError, ValueError):
    """A pruning or export option has a value outside what is allowed."""


class ModelError(FeatherError):
    """The checkpoint is missing, unreadable, or not a supported LLaVA."""


class InputError(FeatherError, ValueError):
    """A bad image, prompt or other run-time input."""


class ManifestError(FeatherError):
    """feather.json is missing, malformed, from a newer schema, or its files changed."""


class BackendError(FeatherError):
    """An inference backend (ONNX Runtime, TensorRT) is missing or failed to load."""


class ValidationError(FeatherError):
    """An exported graph disagrees with its PyTorch segment beyond tolerance."""


class OutputError(FeatherError):
    """The output folder cannot be written (exists and is not empty, not writable)."""
