"""The seam between the generate loop and whatever runs the graphs.

Modelled on Polygraphy's runner (a session per graph: run named inputs to named outputs) and
onnxruntime-genai's Model/State split (the backend owns device memory; the loop owns the
per-call state). The loop in ``feather.runtime.pipeline`` sees only these three protocols:
it never imports a backend's own types, and a new backend is a new file in this folder.

Values: a session's outputs are backend-owned ``Value``s (an ``OrtValue``, a device
pointer...) that may be fed straight back to any session of the same backend; the loop turns
one into numpy only with ``Backend.to_host`` (logits, scores, the embeddings it splices).
Inputs may be numpy arrays or such values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from feather.manifest import GraphSpec, Manifest

Value = Any
"""A backend-owned tensor: an output of ``Session.run`` or ``KVBuffer.value``."""


class Session(Protocol):
    """One graph, loaded once, run many times (from several threads at once)."""

    name: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray | Value], outputs: Sequence[str]) -> dict[str, Value]:
        """Run the graph on ``feeds`` (by tensor name); return the named ``outputs``."""
        ...


class KVBuffer(Protocol):
    """One layer's K or V cache for one call: [1, KV, capacity, hd], allocated once, written
    in place. Rows at and beyond the live length are stale and masked by the graph."""

    value: Value  # what to feed as the graph's cache input
    nbytes: int
    address: int  # where its memory starts (constant for the buffer's life; tests check it)

    def write(self, rows: Value, at: int) -> None:
        """Copy ``rows`` [1, KV, S, hd] (a session output) into rows ``at .. at+S-1``."""
        ...


class Backend(Protocol):
    """Opens sessions and owns device memory. One per ``Pipeline``; read-only after load."""

    name: str

    def open(self, path: Path, graph: GraphSpec, manifest: Manifest) -> Session:
        """A session for the graph file ``path`` described by ``graph``."""
        ...

    def kv_buffer(self, shape: tuple[int, int, int, int], dtype: np.dtype) -> KVBuffer:
        """A zeroed cache buffer of ``shape`` [1, KV, capacity, hd]."""
        ...

    def to_host(self, value: np.ndarray | Value) -> np.ndarray:
        """``value`` as a numpy array on the host."""
        ...
