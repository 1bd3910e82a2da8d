"""The chain at run time: vision -> embed + splice -> segment 0 -> host selection ->
segment 1 -> ... -> logits, then decode steps through every segment, each with its own KV
cache (segments hold different token counts). Torch-free.

    pipe = Pipeline.load("feather-export")
    result = pipe.generate("photo.jpg", "What is on the table?", max_new_tokens=32)
    for piece in pipe.stream(image, prompt): print(piece, end="")

A ``Pipeline`` holds only read-only state (manifest, tokenizer, ONNX Runtime sessions);
each ``generate`` keeps its KV caches in its own ``_Run``, so one Pipeline may serve
several threads at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feather.config import PruneConfig, Stage
from feather.errors import InputError
from feather.manifest import GraphSpec, Manifest, load_manifest
from feather.runtime.backend import OrtSession, tensorrt_options
from feather.runtime.preprocess import PromptEncoder, load_image, pixel_values
from feather.sampling import Sampling, next_token
from feather.selection import select_stage, sequence_keep_index


@dataclass
class Result:
    """Tokens, text, kept image indices per stage, per-step logits [V] and timings (s)."""

    tokens: list[int]
    text: str
    stages: list[dict]
    timings: dict
    logits: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "text": self.text, "stages": self.stages, "timings": self.timings}


@dataclass
class _Run:
    """Per-call state: each segment's KV cache and the next position id."""

    kv: list[dict[str, np.ndarray]]
    next_pos: int
    stages: list[dict]
    timings: dict


class Pipeline:
    """A loaded export folder. Create with ``Pipeline.load``."""

    def __init__(self, folder: Path, manifest: Manifest, sessions: dict[str, OrtSession], encoder: PromptEncoder):
        self.folder, self.manifest, self.encoder = folder, manifest, encoder
        self.vision, self.embed = sessions["vision"], sessions["embed"]
        self.segments = [sessions[s.file] for s in manifest.segments]
        p = manifest.pruning
        self.config = PruneConfig(criterion=p.criterion, K=tuple(p.K), ratio=p.ratio, stride=p.stride, mode=p.mode)
        self.stage_at: dict[int, Stage] = {s.layer: s for s in self.config.stages}
        self.eos = set(manifest.tokens.eos)
        # (past input, present output) names per segment, formatted once, not per step
        self.kv_names = [[(t_past % layer, t_present % layer) for layer in range(*spec.layers)
                          for t_past, t_present in ((spec.kv.past_key, spec.kv.present_key),
                                                    (spec.kv.past_value, spec.kv.present_value))]
                         for spec in manifest.segments]
        self.dtype = np.float16 if manifest.precision == "fp16" else np.float32  # the graphs' float type
        self._kv_bytes = 0

    @classmethod
    def load(cls, folder: str | Path, provider: str = "cpu", verify: bool = True,
             threads: int | None = None) -> Pipeline:
        """Read ``folder/feather.json`` (checking every file's sha256 unless ``verify`` is
        False) and open one session per graph. ``provider``: cpu, cuda or tensorrt."""
        folder = Path(folder)
        manifest = load_manifest(folder, verify=verify)
        graphs = {"vision": manifest.vision, "embed": manifest.embed, **{s.file: s for s in manifest.segments}}
        sessions = {key: _session(folder, manifest, g, provider, threads) for key, g in graphs.items()}
        encoder = PromptEncoder(folder / manifest.tokenizer, manifest.prompt)
        return cls(folder, manifest, sessions, encoder)

    # -- the hot path ---------------------------------------------------------------------
    def generate(self, image, prompt: str, max_new_tokens: int = 32, sampling: Sampling = Sampling(),
                 on_token: Callable[[int, str], None] | None = None) -> Result:
        """Answer ``prompt`` about ``image`` (path, PIL image or H x W x 3 uint8 array)."""
        t0 = time.perf_counter()
        ids, offset = self._inputs(prompt, max_new_tokens)
        logits, run = self.prefill(image, ids, offset)
        tokens, steps, rng = [], [logits], sampling.rng()
        while True:
            token = next_token(logits, sampling, rng)
            tokens.append(token)
            if len(tokens) == 1:
                run.timings["ttft_s"] = time.perf_counter() - t0
                t_decode = time.perf_counter()
            if on_token is not None:
                on_token(token, self.encoder.decode([token]))
            if token in self.eos or len(tokens) >= max_new_tokens:
                break
            logits = self.decode_step(token, run)
            steps.append(logits)
        self._finish_timings(run.timings, t_decode, len(tokens))
        self._kv_bytes = kv_bytes(run.kv)
        return Result(tokens, self.encoder.decode(tokens), run.stages, run.timings, steps)

    def stream(self, image, prompt: str, max_new_tokens: int = 32, sampling: Sampling = Sampling()) -> Iterator[str]:
        """Yield the answer's text as it grows, one decoded piece per new token (runs
        ``generate`` in a worker thread; the pieces join to ``generate``'s text)."""
        import queue
        import threading

        pieces: queue.Queue = queue.Queue()
        done = object()
        error: list[BaseException] = []

        def work() -> None:
            try:
                self._stream_into(pieces, image, prompt, max_new_tokens, sampling)
            except BaseException as err:  # handed to the consumer, re-raised there
                error.append(err)
            finally:
                pieces.put(done)

        threading.Thread(target=work, daemon=True).start()
        while (item := pieces.get()) is not done:
            yield item
        if error:
            raise error[0]

    def _stream_into(self, pieces, image, prompt, max_new_tokens, sampling) -> None:
        tokens: list[int] = []
        sent = ""

        def on_token(token: int, _: str) -> None:
            nonlocal sent
            tokens.append(token)
            text = self.encoder.decode(tokens)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                pieces.put(text[len(sent):])
                sent = text

        result = self.generate(image, prompt, max_new_tokens, sampling, on_token)
        if result.text != sent:
            pieces.put(result.text[len(sent):])

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

    def prefill(self, image, ids: np.ndarray, offset: int) -> tuple[np.ndarray, _Run]:
        """Vision, embeddings and every segment with pruning between them. -> logits [V], state."""
        timings: dict = {}
        t = time.perf_counter()
        pixels = pixel_values(load_image(image), self.manifest.image).astype(self.dtype)  # [1, 3, H, W]
        feats = self.vision.run({"pixel_values": pixels})["image_features"][0]  # [N, d]
        timings["vision_s"] = time.perf_counter() - t
        t = time.perf_counter()
        hidden = self.embed.run({"input_ids": ids[None]})["embeds"]  # [1, S, d]
        hidden[0, offset : offset + len(feats)] = feats  # splice the image in
        timings["embed_s"] = time.perf_counter() - t
        run = _Run(kv=[], next_pos=len(ids), stages=[], timings=timings)
        logits = self._prefill_segments(hidden, offset, feats, run)
        return logits, run

    def _prefill_segments(self, hidden: np.ndarray, offset: int, feats: np.ndarray, run: _Run) -> np.ndarray:
        pos = np.arange(hidden.shape[1], dtype=np.int64)  # original positions, kept through pruning
        current = np.arange(len(feats))  # original indices of the live image tokens
        score, seg_times = None, []
        for i, (spec, session) in enumerate(zip(self.manifest.segments, self.segments)):
            t = time.perf_counter()
            keep = np.arange(hidden.shape[1], dtype=np.int64)
            stage = self.stage_at.get(spec.layers[0])
            if stage is not None:
                logits = None if score is None else score[0, :, offset : offset + len(current)]  # [H, n]
                keep_local = select_stage(stage, self.config, current, self.manifest.dims.grid, logits, feats)
                keep = sequence_keep_index(offset, len(current), keep_local, hidden.shape[1])
                current = current[keep_local]
                run.stages.append({"layer": stage.layer, "kept": current.tolist()})
            pos = pos[keep]
            out = session.run_values(self._feeds(i, hidden, keep, pos, None))
            run.kv.append({present: out[present] for _, present in self.kv_names[i]})
            hidden = out[spec.outputs.get("hidden", "logits")].numpy()
            score = out["score"].numpy() if "score" in out else None
            seg_times.append(time.perf_counter() - t)
        run.timings["segments_s"] = seg_times
        run.timings["llm_prefill_s"] = sum(seg_times)
        return hidden[0]  # the last segment's logits [V]

    def decode_step(self, token: int, run: _Run) -> np.ndarray:
        """One new token through every segment; each attends to its own KV cache."""
        hidden = self.embed.run({"input_ids": np.array([[token]], dtype=np.int64)})["embeds"]  # [1, 1, d]
        keep, pos = np.zeros(1, dtype=np.int64), np.array([run.next_pos], dtype=np.int64)
        for i, (spec, session) in enumerate(zip(self.manifest.segments, self.segments)):
            out = session.run_values(self._feeds(i, hidden, keep, pos, run.kv[i]))
            run.kv[i] = {present: out[present] for _, present in self.kv_names[i]}
            hidden = out[spec.outputs.get("hidden", "logits")]  # stays an OrtValue between segments
        run.next_pos += 1
        return hidden.numpy()[0]  # [V]

    def _feeds(self, i: int, hidden, keep, pos, kv: dict | None) -> dict:
        """Inputs of segment ``i``: its past KV from ``kv``, or empty pasts for the prefill."""
        feeds = {"hidden": hidden, "keep_index": keep, "position_ids": pos[None]}
        if kv is None:
            d = self.manifest.dims
            empty = np.zeros((1, d.kv_heads, 0, d.head_dim), dtype=self.dtype)
            feeds.update((past, empty) for past, _ in self.kv_names[i])
        else:
            feeds.update((past, kv[present]) for past, present in self.kv_names[i])
        return feeds

    @staticmethod
    def _finish_timings(timings: dict, t_decode: float, n_tokens: int) -> None:
        timings["decode_s"] = time.perf_counter() - t_decode
        steps = n_tokens - 1
        timings["decode_tokens_per_s"] = steps / timings["decode_s"] if steps and timings["decode_s"] > 0 else None

    def kv_cache_bytes(self) -> int:
        """Bytes the KV caches held at the end of the last ``generate``."""
        return self._kv_bytes


_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2}


def kv_bytes(kv: list[dict]) -> int:
    """Bytes held by per-segment KV caches (``OrtValue``s or numpy arrays)."""
    total = 0
    for cache in kv:
        for v in cache.values():
            total += v.nbytes if isinstance(v, np.ndarray) else int(np.prod(v.shape())) * _ITEMSIZE[v.data_type()]
    return total


def _session(folder: Path, manifest: Manifest, graph: GraphSpec, provider: str, threads) -> OrtSession:
    trt = tensorrt_options(manifest, graph, folder / "trt-cache") if provider == "tensorrt" and graph.axes else None
    return OrtSession(folder / graph.file, provider, threads, trt)
