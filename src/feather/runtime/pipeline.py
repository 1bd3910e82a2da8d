"""The chain at run time: vision -> embed + splice -> segment 0 -> host selection ->
segment 1 -> ... -> logits, then decode steps through every segment, each with its own KV
cache (segments hold different token counts). Torch-free.

    pipe = Pipeline.load("feather-export")
    result = pipe.generate("photo.jpg", "What is on the table?", max_new_tokens=32)
    result = pipe.generate(image, prompt, prune={"ratio": 0.5, "stride": 2})  # another operating point
    for piece in pipe.stream(image, prompt): print(piece, end="")

Everything comes from feather.json: tensor names, KV templates, the pruning stages (each a
``feather.rules`` object), dtypes. Graphs run behind the backend seam
(``feather.runtime.backends``): this loop never touches a backend's own types.

A ``Pipeline`` holds only read-only state (manifest, tokenizer, sessions); each call keeps
its KV caches in its own ``_Run``, so one Pipeline may serve several threads at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feather import layout as layout_mod
from feather import points, rules
from feather.errors import InputError, ManifestError
from feather.manifest import DTYPES as DTYPE_NAMES
from feather.manifest import GraphSpec, Manifest, graphs, load_manifest
from feather.manifest.graphs import EMBEDS, IMAGE_FEATURES, INPUT_IDS, PIXEL_VALUES, SEGMENT_INPUTS
from feather.runtime import backends
from feather.runtime.preprocess import PromptEncoder, model_pixel_values
from feather.sampling import Sampling, next_token

DTYPES = {name: np.dtype(name).type for name in DTYPE_NAMES}  # "float32" -> np.float32


@dataclass
class Result:
    """Tokens, text, kept image indices per stage, per-step logits [V], timings (s), and the
    bytes the call's KV caches held (allocated once, at their capacity)."""

    tokens: list[int]
    text: str
    stages: list[dict]
    timings: dict
    logits: list[np.ndarray] = field(default_factory=list, repr=False)
    kv_bytes: int = 0
    prompt_tokens: int = 0
    finish_reason: str = "length"  # "stop" (end-of-sequence), "length" (max_new_tokens), "cancelled"
    point: dict | None = None  # the operating point that ran: ratio, stride, mode (``feather.points``)

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "text": self.text, "stages": self.stages, "timings": self.timings,
                "prompt_tokens": self.prompt_tokens, "kv_bytes": self.kv_bytes, "finish_reason": self.finish_reason,
                "point": self.point}


@dataclass(frozen=True)
class _Segment:
    """One segment's session and every tensor name it needs, formatted once at load."""

    spec: GraphSpec
    session: backends.Session
    dtype: type
    feeds: list[str]  # input names in graphs.SEGMENT_INPUTS' order: hidden, keep_index, position_ids, past_len
    out: str  # the hidden or logits output
    score: str | None
    cache: list[str]  # cache input names, (key, value) per layer
    new: list[str]  # new-row output names, same order
    stage: tuple[rules.Rule, int] | None  # the stage applied before this segment: (rule, layer)
    decode: backends.Session  # the session decode steps run (spec.decode_file's, else ``session``)


@dataclass
class _Run:
    """Per-call state: each segment's cache buffers and live length, the next position id."""

    caches: list[list[backends.KVBuffer]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    next_pos: int = 0
    stages: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    finish_reason: str = "length"
    point: points.Point | None = None  # None: the export's own


class Pipeline:
    """A loaded export folder. Create with ``Pipeline.load``."""

    def __init__(self, folder: Path, manifest: Manifest, backend: backends.Backend, encoder: PromptEncoder):
        self.folder, self.manifest, self.backend, self.encoder = folder, manifest, backend, encoder
        m = manifest
        self.vision = _open(backend, folder, m, m.vision)
        self.embed = _open(backend, folder, m, m.embed)
        p = m.pruning
        self.point = points.default(m)  # the export's operating point, what a call runs unless it asks another
        stage_at = {s.layer: (rules.get(s.rule), s.layer) for s in p.stages}
        self.segments = [_segment(backend, folder, m, spec, stage_at.get(spec.layers[0])) for spec in m.segments]
        self.eos = set(m.tokens.eos)
        self.layout = layout_mod.for_manifest(m)  # which image tokens stages may prune (NeXT: not newlines)
        self._layouts = {self.point.stride: self.layout}  # per stride (NeXT's virtual grid moves with it)

    @classmethod
    def load(cls, folder: str | Path, provider: str = "cpu", verify: bool = True, threads: int | None = None,
             backend: backends.Backend | None = None) -> Pipeline:
        """Read ``folder/feather.json`` (checking every file's sha256 unless ``verify`` is
        False) and open one session per graph on ``backend`` (default: ONNX Runtime with
        ``provider`` cpu, cuda or tensorrt)."""
        if not isinstance(folder, (str, os.PathLike)) or not str(folder).strip():
            raise InputError(f"folder: got {folder!r:.40}; expected an export folder's path (str or os.PathLike)")
        folder = Path(folder)
        manifest = load_manifest(folder, verify=verify)
        backend = backend or backends.get(provider, threads)
        encoder = PromptEncoder(folder / manifest.tokenizer, manifest.prompt, manifest.max_seq)
        return cls(folder, manifest, backend, encoder)

    # -- the hot path ---------------------------------------------------------------------
    def generate(self, image, prompt: str, max_new_tokens: int = 32, sampling: Sampling = Sampling(),
                 on_token: Callable[[int, str], None] | None = None,
                 cancel: threading.Event | None = None, prune=None) -> Result:
        """Answer ``prompt`` about ``image`` (path, PIL image or H x W x 3 uint8 array).

        ``prune``: the operating point, a ``feather.points.Point`` or a mapping with any of
        ratio, stride, mode (the rest from the export); None runs the export's own. A point
        outside the range the export accepts is refused (``InputError``, naming the range).

        ``on_token(id, piece)`` sees each token and the text it adds (from ``encoder.stream()``,
        O(1) work per token): "" while a multi-byte character is incomplete, and the last
        token's piece holds whatever was left, so the pieces join to the result's ``text``. A
        set ``cancel`` stops before the next step (the pieces then may lack a last, cut-short
        character)."""
        run, tokens, steps = _Run(point=self.resolve(prune)), [], []
        text = self.encoder.stream() if on_token is not None else None
        for token, logits, last in self._tokens(image, prompt, max_new_tokens, sampling, run, cancel):
            tokens.append(token)
            steps.append(logits)
            if text is not None:
                piece = text.put(token)
                on_token(token, piece + text.flush() if last else piece)
        return self._result(run, tokens, steps)

    def stream(self, image, prompt: str, max_new_tokens: int = 32, sampling: Sampling = Sampling(),
               cancel: threading.Event | None = None, prune=None) -> Iterator[str]:
        """Yield the answer's text as it grows (the pieces join to ``generate``'s text). Runs
        in the caller's thread: leaving the loop early (break, an exception, Ctrl-C) stops
        the generation at once, and nothing is left running. ``prune`` as in ``generate``."""
        text = self.encoder.stream()
        run = _Run(point=self.resolve(prune))
        for token, _, _ in self._tokens(image, prompt, max_new_tokens, sampling, run, cancel):
            if piece := text.put(token):
                yield piece
        if rest := text.flush():
            yield rest

    def resolve(self, prune=None) -> points.Point:
        """The operating point ``prune`` asks for, checked against this export's range."""
        return points.resolve(self.manifest, prune)

    def _layout(self, stride: int) -> layout_mod.Layout:
        if stride not in self._layouts:
            self._layouts[stride] = points.layout(self.manifest, points.Point(stride=stride))
        return self._layouts[stride]

    def _tokens(self, image, prompt, max_new_tokens, sampling, run: _Run,
                cancel) -> Iterator[tuple[int, np.ndarray, bool]]:
        """(token, the logits it was picked from, whether it is the last) for each new token,
        prefill then decode. A set ``cancel`` also ends the loop, after the token it sees."""
        t0 = time.perf_counter()
        ids, offset = self._inputs(prompt, max_new_tokens)
        rng = sampling.rng()
        logits = self.prefill(image, ids, offset, run, max_new_tokens)
        for n in range(1, max_new_tokens + 1):
            token = next_token(logits, sampling, rng)
            if n == 1:
                run.timings["ttft_s"] = time.perf_counter() - t0
                t_decode = time.perf_counter()
            run.timings["tokens"] = n
            last = token in self.eos or n == max_new_tokens
            run.finish_reason = "stop" if token in self.eos else "length"
            yield token, logits, last
            if last or (cancel is not None and cancel.is_set()):
                if not last:
                    run.finish_reason = "cancelled"
                break
            logits = self.decode_step(token, run)
        run.timings["decode_s"] = time.perf_counter() - t_decode

    def _inputs(self, prompt: str, max_new_tokens: int) -> tuple[np.ndarray, int]:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens: got {max_new_tokens!r}, expected an integer >= 1")
        ids, offset = self.encoder.encode(prompt)
        limit = self.manifest.max_seq
        if len(ids) + max_new_tokens > limit:
            raise InputError(
                f"prompt: {len(ids)} tokens + {max_new_tokens} new exceed the export's max_seq {limit}; "
                "shorten the prompt or re-export with a larger --max-seq"
            )
        return ids, offset

    def prefill(self, image, ids: np.ndarray, offset: int, run: _Run, max_new_tokens: int) -> np.ndarray:
        """Vision, embeddings and every segment with pruning between them -> logits [V].
        Allocates each segment's caches once, at that segment's length + ``max_new_tokens``."""
        t = time.perf_counter()
        pixels = model_pixel_values(image, self.manifest).astype(DTYPES[self.manifest.vision.dtype])  # [T,3,H,W]
        vision = self.manifest.vision
        out = self.vision.run({vision.inputs[PIXEL_VALUES]: pixels}, [vision.outputs[IMAGE_FEATURES]])
        feats = self.backend.to_host(out[vision.outputs[IMAGE_FEATURES]])[0]  # [N, d]
        run.timings["vision_s"] = time.perf_counter() - t
        t = time.perf_counter()
        embed = self.manifest.embed
        out = self.embed.run({embed.inputs[INPUT_IDS]: ids[None]}, [embed.outputs[EMBEDS]])
        hidden = self.backend.to_host(out[embed.outputs[EMBEDS]]).copy()  # [1, S, d]
        hidden[0, offset : offset + len(feats)] = feats  # splice the image in
        run.timings["embed_s"] = time.perf_counter() - t
        run.next_pos = len(ids)
        return self._prefill_segments(hidden, offset, feats, run, max_new_tokens)

    def _prefill_segments(self, hidden, offset: int, feats: np.ndarray, run: _Run, max_new_tokens: int):
        pos = np.arange(hidden.shape[1], dtype=np.int64)  # original positions, kept through pruning
        point = run.point or self.point
        lay, params = self._layout(point.stride), point.params
        live = np.arange(len(lay.prunable))  # the prunable image tokens still alive (into lay.prunable)
        score, seg_times = None, []
        for seg in self.segments:
            t = time.perf_counter()
            keep = np.arange(len(pos), dtype=np.int64)
            if seg.stage is not None:
                rule, layer = seg.stage
                keep, live = lay.apply_stage(rule, live, pos, offset, params, None if score is None else score[0],
                                             feats, layer)
                run.stages.append({"layer": layer, "kept": lay.prunable[live].tolist()})
            pos = pos[keep]
            caches = self._allocate(seg, len(keep) + max_new_tokens - 1)
            dummy = self._allocate(seg, 1)  # a prefill attends to no cache row; one masked row keeps shapes valid
            out = self._run_segment(seg, hidden, keep, pos, 0, dummy)
            for buf, name in zip(caches, seg.new):
                buf.write(out[name], 0)
            run.caches.append(caches)
            run.lengths.append(len(keep))
            hidden = out[seg.out]
            score = self.backend.to_host(out[seg.score]) if seg.score else None
            seg_times.append(time.perf_counter() - t)
        run.timings["segments_s"] = seg_times
        run.timings["llm_prefill_s"] = sum(seg_times)
        return self.backend.to_host(hidden)[0].astype(np.float32)  # the last segment's logits [V]

    def decode_step(self, token: int, run: _Run) -> np.ndarray:
        """One new token through every segment; each reads its own cache buffers in place
        and returns one new row per layer, written at that segment's live length."""
        embed = self.manifest.embed
        ids = np.array([[token]], dtype=np.int64)  # [1, 1]
        out = self.embed.run({embed.inputs[INPUT_IDS]: ids}, [embed.outputs[EMBEDS]])
        hidden = out[embed.outputs[EMBEDS]]  # [1, 1, d], stays a backend value between graphs
        keep, pos = np.zeros(1, dtype=np.int64), np.array([run.next_pos], dtype=np.int64)
        for i, seg in enumerate(self.segments):
            out = self._run_segment(seg, hidden, keep, pos, run.lengths[i], run.caches[i], seg.decode)
            for buf, name in zip(run.caches[i], seg.new):
                buf.write(out[name], run.lengths[i])
            run.lengths[i] += 1
            hidden = out[seg.out]
        run.next_pos += 1
        return self.backend.to_host(hidden)[0].astype(np.float32)  # [V]

    def _run_segment(self, seg: _Segment, hidden, keep, pos, past_len: int, caches, session=None) -> dict:
        if isinstance(hidden, np.ndarray) and hidden.dtype != seg.dtype:
            hidden = hidden.astype(seg.dtype)
        feeds = dict(zip(seg.feeds, (hidden, keep, pos[None], np.array([past_len], dtype=np.int64))))
        feeds.update((name, buf.value) for name, buf in zip(seg.cache, caches))
        outputs = [seg.out, *seg.new] + ([seg.score] if seg.score else [])
        return (session or seg.session).run(feeds, outputs)

    def _allocate(self, seg: _Segment, capacity: int) -> list[backends.KVBuffer]:
        d = self.manifest.dims
        return [self.backend.kv_buffer((1, d.kv_heads, capacity, d.head_dim), seg.dtype) for _ in seg.cache]

    def _result(self, run: _Run, tokens: list[int], steps: list[np.ndarray]) -> Result:
        t = run.timings
        n = t.pop("tokens", len(tokens))
        t["decode_tokens_per_s"] = (n - 1) / t["decode_s"] if n > 1 and t.get("decode_s", 0) > 0 else None
        kv = sum(buf.nbytes for caches in run.caches for buf in caches)
        point = (run.point or self.point).to_json() if self.manifest.pruning.stages else None
        return Result(tokens, self.encoder.decode(tokens), run.stages, t, steps, kv, run.next_pos - len(tokens) + 1,
                      run.finish_reason, point)


def _open(backend: backends.Backend, folder: Path, manifest: Manifest, spec: GraphSpec,
          file: str | None = None) -> backends.Session:
    """A session whose graph has every tensor the manifest names; one line otherwise."""
    file = file or spec.file
    session = backend.open(manifest.path(folder, file), spec, manifest)
    names = list(spec.inputs.values()) + list(spec.outputs.values())
    if spec.kv is not None:
        names += [n for layer in range(*spec.layers) for n in spec.kv.names(layer)]
    missing = [n for n in names if n not in session.input_names and n not in session.output_names]
    if missing:
        raise ManifestError(f"{file}: the graph has no tensor {missing[0]!r} that feather.json names "
                            f"({len(missing)} missing); the manifest does not describe this graph")
    return session


def _segment(backend, folder: Path, manifest: Manifest, spec: GraphSpec, stage) -> _Segment:
    session = _open(backend, folder, manifest, spec)
    decode = _open(backend, folder, manifest, spec, spec.decode_file) if spec.decode_file else session
    return _Segment(
        spec=spec, session=session, decode=decode, dtype=DTYPES[spec.dtype],
        feeds=[spec.inputs[role] for role in SEGMENT_INPUTS],
        out=spec.outputs.get(graphs.HIDDEN) or spec.outputs[graphs.LOGITS], score=spec.outputs.get(graphs.SCORE),
        cache=graphs.kv_names(spec, "cache"), new=graphs.kv_names(spec, "new"),
        stage=stage,
    )
