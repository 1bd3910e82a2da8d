"""Capture every graph's inputs by running the floating-point chain, pruning included.

A ``RecordingBackend`` wraps the ONNX Runtime backend behind the runtime's seam
(``Pipeline.load(folder, backend=...)``), so it sees each graph's feeds by tensor name exactly
as the chain makes them: segment 1 gets the hidden states after the first selection (text +
kept image tokens), at prefill and at each decode step. The cache inputs are buffers the
runtime writes in place, so every feed is copied; a decode step's cache is cut to its live
rows (``past_len``; the rows beyond it are masked by the graph and change nothing), which
keeps a 32-layer capture small.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feather.calibration.data import Sample
from feather.manifest import GraphSpec, Manifest, graphs


@dataclass
class Record:
    """One run of one graph: ``phase`` (prefill or decode) and its feeds (host copies)."""

    phase: str
    feeds: dict[str, np.ndarray]


@dataclass
class Capture:
    """What the floating-point chain saw and produced on a calibration set."""

    records: dict[str, list[Record]] = field(default_factory=dict)  # graph file -> runs, in order
    results: list = field(default_factory=list)  # the chain's Result per sample (tokens, logits, stages)
    samples: list[Sample] = field(default_factory=list)
    max_new_tokens: int = 0


class RecordingSession:
    """A session that copies its feeds into ``records`` before running the real one."""

    def __init__(self, inner, graph: GraphSpec, backend: RecordingBackend, records: list[Record]):
        self.inner, self.graph, self.backend, self.records = inner, graph, backend, records
        self.name, self.input_names, self.output_names = inner.name, inner.input_names, inner.output_names

    def run(self, feeds: Mapping, outputs: Sequence[str]) -> dict:
        if self.backend.recording:
            self.records.append(self._record(feeds))
        return self.inner.run(feeds, outputs)

    def _record(self, feeds: Mapping) -> Record:
        host = {name: np.array(self.backend.to_host(v), copy=True) for name, v in feeds.items()}
        past = self.graph.inputs.get(graphs.PAST_LEN)
        if past is None or int(host[past][0]) == 0:
            return Record("prefill", host)
        live = int(host[past][0])
        for layer in range(*self.graph.layers):
            for name in self.graph.kv.names(layer)[:2]:  # cache key, cache value [1, KV, C, hd]
                host[name] = np.ascontiguousarray(host[name][:, :, :live])
        return Record("decode", host)


class RecordingBackend:
    """Any backend, recording each graph's feeds by its manifest file name."""

    def __init__(self, inner):
        self.inner, self.name, self.recording = inner, f"recording-{inner.name}", True
        self.records: dict[str, list[Record]] = defaultdict(list)

    def open(self, path: Path, graph: GraphSpec, manifest: Manifest) -> RecordingSession:
        return RecordingSession(self.inner.open(path, graph, manifest), graph, self, self.records[path.name])

    def kv_buffer(self, shape, dtype):
        return self.inner.kv_buffer(shape, dtype)

    def to_host(self, value) -> np.ndarray:
        return self.inner.to_host(value)


def record(folder: str | Path, samples: list[Sample], max_new_tokens: int = 8, decode_records: int = 2,
            threads: int | None = None, on_sample: Callable[[int], None] | None = None) -> Capture:
    """Run the chain in ``folder`` greedily on each sample for ``max_new_tokens`` tokens and
    record every graph's feeds: the prefill and the first ``decode_records`` decode steps
    (the later steps only add tokens for the chain comparison); ``on_sample(i)`` after each."""
    from feather.runtime import Pipeline
    from feather.runtime.backends.onnxruntime import OrtBackend

    backend = RecordingBackend(OrtBackend("cpu", threads))
    pipe = Pipeline.load(folder, backend=backend)
    out = Capture(samples=list(samples), max_new_tokens=max_new_tokens)
    for i, sample in enumerate(samples):
        backend.recording, count = True, iter(range(1, max_new_tokens + 1))

        def on_token(_token, _piece, count=count):  # before decode step n runs
            backend.recording = next(count) <= decode_records

        out.results.append(pipe.generate(str(sample.image), sample.prompt, max_new_tokens, on_token=on_token))
        if on_sample is not None:
            on_sample(i)
    out.records = dict(backend.records)
    return out
