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

import gc
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


class OneAtATime:
    """A backend that keeps one graph's session open at a time, for a floating-point chain whose
    weights do not fit in memory beside everything else (a 7B fp32 export is 27 GB): each
    session is opened when it runs and closed when another one runs, so peak memory is about
    the largest graph; every decode step reopens each segment (slow, but it finishes)."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self._current: tuple | None = None  # (LazySession, the open session)

    def open(self, path: Path, graph: GraphSpec, manifest: Manifest) -> LazySession:
        return LazySession(self, path, graph, manifest)

    def session(self, lazy: LazySession):
        if self._current is not None and self._current[0] is lazy:
            return self._current[1]
        self._current = None
        gc.collect()  # the last session's weights go before the next one's arrive
        self._current = (lazy, self.inner.open(lazy.path, lazy.graph, lazy.manifest))
        return self._current[1]

    def kv_buffer(self, shape, dtype):
        return self.inner.kv_buffer(shape, dtype)

    def to_host(self, value) -> np.ndarray:
        return self.inner.to_host(value)


class LazySession:
    """One graph's session under ``OneAtATime``: opened once here for its names, then on each run."""

    def __init__(self, owner: OneAtATime, path: Path, graph: GraphSpec, manifest: Manifest):
        self.owner, self.path, self.graph, self.manifest = owner, path, graph, manifest
        real = owner.session(self)
        self.name, self.input_names, self.output_names = real.name, real.input_names, real.output_names

    def run(self, feeds: Mapping, outputs: Sequence[str]) -> dict:
        return self.owner.session(self).run(feeds, outputs)


FIT = 0.5
"""The float chain runs with every session open when its graph files take at most this share of
the memory available now (``one_at_a_time``); above it, one session at a time."""


def one_at_a_time(folder: str | Path) -> tuple[bool, int, int | None]:
    """``(too large to hold whole, the chain's bytes, bytes available)`` for the chain in
    ``folder``: its graphs (an int8-int4 chain's decode graphs too) and their external data
    against ``FIT`` of MemAvailable (never too large where that cannot be read)."""
    from feather.manifest import load_manifest

    folder = Path(folder)
    manifest = load_manifest(folder)
    files = {manifest.path(folder, f) for _, g in manifest.graphs_with_paths() for f in (g.file, g.decode_file) if f}
    size = sum(f.stat().st_size + _data_size(f) for f in files)
    available = _available_bytes()
    return available is not None and size > FIT * available, size, available


def _data_size(graph: Path) -> int:
    data = graph.with_name(graph.name + ".data")
    return data.stat().st_size if data.is_file() else 0


def _available_bytes() -> int | None:
    from feather.runtime.cpu import available_memory

    return available_memory()


def record(folder: str | Path, samples: list[Sample], max_new_tokens: int = 8, decode_records: int = 2,
           threads: int | None = None, on_sample: Callable[[int], None] | None = None,
           low_memory: bool | None = None) -> Capture:
    """Run the chain in ``folder`` greedily on each sample for ``max_new_tokens`` tokens and
    record every graph's feeds: the prefill and the first ``decode_records`` decode steps
    (the later steps only add tokens for the chain comparison); ``on_sample(i)`` after each.
    ``low_memory``: one session open at a time (``OneAtATime``); None decides by size
    (``one_at_a_time``)."""
    from feather.runtime import Pipeline
    from feather.runtime.backends.onnxruntime import OrtBackend

    inner = OrtBackend("cpu", threads)
    if low_memory if low_memory is not None else one_at_a_time(folder)[0]:
        inner = OneAtATime(inner)
    backend = RecordingBackend(inner)
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
