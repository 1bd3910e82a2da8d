"""One benchmark row, measured in a process of its own: ``python -m feather.bench.rows SPEC OUT``.

Each row runs in a fresh child process so that its peak RSS (the kernel's high-water
mark of the child's own address space, ``VmHWM``, read as the child ends) belongs to
that row alone: the model, its runtime and the imports it needs. Chain rows never
import torch, as a deployment would not. Every row does one untimed warm-up and then
``repeats`` timed runs; the child writes every sample, the parent takes the medians.

SPEC is a JSON file: ``{"kind", "model", "export", "prune", "prompt", "image",
"new_tokens", "repeats", "threads"}`` (kind ``chain_points`` adds ``"points"``, see there).
OUT receives ``{"samples": {name: [s, ...]},
"kv_cache_bytes", "seq_len", "kept", "tokens", "peak_rss_bytes", "torch_loaded"}``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def _image(spec: dict):
    from feather.image import load_image

    return load_image(spec["image"])


def _cache_bytes(cache) -> int:
    """Bytes of a transformers cache's key and value tensors, every layer (any length)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(t.nbytes for layer in layers for t in (layer.keys, layer.values) if t is not None)
    return sum(t.nbytes for kv in cache for t in kv)  # legacy tuple of (key, value) per layer


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark: ``VmHWM`` of /proc/self/status, which
    belongs to the process's own address space. Not ``ru_maxrss``: Linux carries the
    pre-exec address space's peak into it, so a child of a 2 GB parent would report 2 GB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: KiB (macOS: bytes)


def _collect(samples: dict, **values) -> None:
    for key, value in values.items():
        samples.setdefault(key, []).append(value)


# -- (a) transformers' eager generate, unpruned --------------------------------------------
class _Clock:
    """Forward hooks (no patched forwards) that time the vision tower + projector and the
    language model's FIRST forward (the prefill) inside ``model.generate``."""

    def __init__(self, model):
        inner = model.model
        self.marks: dict[str, float] = {}
        inner.vision_tower.register_forward_pre_hook(self._stamp("vision0"))
        inner.multi_modal_projector.register_forward_hook(self._stamp("vision1"))
        inner.language_model.register_forward_pre_hook(self._stamp("llm0"))
        inner.language_model.register_forward_hook(self._stamp("llm1"))

    def _stamp(self, key: str):
        def hook(*_) -> None:  # must return None: a hook's return value replaces inputs / outputs
            self.marks.setdefault(key, time.perf_counter())  # first call only: the prefill

        return hook

    def take(self) -> tuple[float, float]:
        m, self.marks = self.marks, {}
        return m["vision1"] - m["vision0"], m["llm1"] - m["llm0"]


def _eager_load(spec: dict):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(spec["threads"])
    model = LlavaForConditionalGeneration.from_pretrained(
        spec["model"], attn_implementation="eager", dtype=torch.float32
    ).eval()
    return model, AutoProcessor.from_pretrained(spec["model"])


class _FirstToken:
    """A ``generate`` streamer that notes when the first new token arrives: HF calls ``put``
    once with the prompt, then once per generated token."""

    def __init__(self):
        self.calls, self.at = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def _eager_once(model, processor, text: str, image, n: int) -> tuple[float, float, object, int]:
    """One ``generate`` of ``n`` tokens -> (seconds from the processor call to the last token,
    seconds from the first new token to the last, output, prompt length)."""
    import torch

    first = _FirstToken()
    t0 = time.perf_counter()
    enc = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, return_dict_in_generate=True,
                             streamer=first)
    t1 = time.perf_counter()
    return t1 - t0, t1 - (first.at or t1), out, enc["input_ids"].shape[1]


def torch_eager(spec: dict) -> dict:
    """HF ``generate`` (eager attention): TTFT from a ``max_new_tokens=1`` run (processor call
    included), decode from a ``1 + new_tokens`` run timed from its first new token to its last
    (measured within one run: a difference of two runs goes negative on a busy machine)."""
    from feather import prompt as prompt_mod

    model, processor = _eager_load(spec)
    text = prompt_mod.render(prompt_mod.template_from_processor(processor), spec["prompt"], processor.image_token)
    image, clock, samples = _image(spec), _Clock(model), {}
    for i in range(spec["repeats"] + 1):  # i == 0: warm-up
        ttft, _, _, seq_len = _eager_once(model, processor, text, image, 1)
        vision, llm = clock.take()
        _, decode, out, _ = _eager_once(model, processor, text, image, 1 + spec["new_tokens"])
        clock.take()
        n_new = out.sequences.shape[1] - seq_len
        if i:
            _collect(samples, vision_s=vision, llm_prefill_s=llm, ttft_s=ttft, decode_s=decode,
                     decode_tokens_per_s=(n_new - 1) / decode)
    return {"samples": samples, "kv_cache_bytes": _cache_bytes(out.past_key_values), "seq_len": seq_len,
            "kept": [], "tokens": out.sequences[0, seq_len:].tolist()}


# -- (b) the PyTorch FEATHER reference -----------------------------------------------------
def reference(spec: dict) -> dict:
    """``Reference``'s own steps (inputs, image_features, prefill, decode_step), timed one
    by one; greedy, ``new_tokens`` decode steps after the first token."""
    import torch

    from feather.config import PruneConfig
    from feather.reference import Reference

    torch.set_num_threads(spec["threads"])
    ref = Reference.load(spec["model"], PruneConfig(**spec["prune"]))
    image, samples = _image(spec), {}
    for i in range(spec["repeats"] + 1):
        t0 = time.perf_counter()
        ids, pixels = ref.inputs(image, spec["prompt"])
        t1 = time.perf_counter()
        feats = ref.image_features(pixels)
        t2 = time.perf_counter()
        logits, state, stages = ref.prefill(ids, feats)
        tokens = [int(logits.argmax())]
        t3 = time.perf_counter()
        for _ in range(spec["new_tokens"]):
            tokens.append(int(ref.decode_step(tokens[-1], state).argmax()))
        t4 = time.perf_counter()
        if i:
            _collect(samples, vision_s=t2 - t1, llm_prefill_s=t3 - t2, ttft_s=t3 - t0, decode_s=t4 - t3,
                     decode_tokens_per_s=spec["new_tokens"] / (t4 - t3))
    return {"samples": samples, "kv_cache_bytes": _cache_bytes(state.cache), "seq_len": int(ids.shape[1]),
            "kept": [len(s["kept"]) for s in stages], "tokens": tokens}


# -- (c), (d), (e) the ONNX Runtime chain ---------------------------------------------------
def chain(spec: dict) -> dict:
    """``feather.runtime.Pipeline.generate`` on an export folder; its own timings."""
    from feather.runtime import Pipeline

    pipe = Pipeline.load(spec["export"], threads=spec["threads"])
    image, samples = _image(spec), {}
    for i in range(spec["repeats"] + 1):
        res = pipe.generate(image, spec["prompt"], max_new_tokens=1 + spec["new_tokens"])
        if i:
            _chain_sample(samples, res.timings)
    seq_len, _ = pipe.encoder.encode(spec["prompt"])
    return {"samples": samples, "kv_cache_bytes": res.kv_bytes, "seq_len": len(seq_len),
            "kept": [len(s["kept"]) for s in res.stages], "tokens": list(res.tokens)}


def _chain_sample(samples: dict, t: dict) -> None:
    _collect(samples, vision_s=t["vision_s"], llm_prefill_s=t["llm_prefill_s"], ttft_s=t["ttft_s"],
             decode_s=t["decode_s"], decode_tokens_per_s=t["decode_tokens_per_s"])


# -- feather-bench --points: one export at several operating points -------------------------
def chain_points(spec: dict) -> dict:
    """One ``Pipeline`` over a FEATHER export, run at each of ``spec["points"]`` (mappings of
    ratio, stride, mode: ``Pipeline.generate(prune=...)``). One untimed warm-up per point, then
    ``repeats`` rounds that each run every point once, in order (interleaved, so a drift in
    the machine's load touches every point alike). OUT: ``{"points": [{"point", "samples",
    "kept", "kv_cache_bytes", "tokens"}, ...], "seq_len"}``."""
    from feather.runtime import Pipeline

    pipe = Pipeline.load(spec["export"], threads=spec["threads"])
    image, pts, n = _image(spec), spec["points"], 1 + spec["new_tokens"]
    last = [pipe.generate(image, spec["prompt"], max_new_tokens=n, prune=p) for p in pts]  # warm-up
    samples: list[dict] = [{} for _ in pts]
    for _ in range(spec["repeats"]):
        for i, p in enumerate(pts):
            last[i] = pipe.generate(image, spec["prompt"], max_new_tokens=n, prune=p)
            _chain_sample(samples[i], last[i].timings)
    seq_len, _ = pipe.encoder.encode(spec["prompt"])
    return {"points": [{"point": r.point, "samples": s, "kv_cache_bytes": r.kv_bytes,
                        "kept": [len(st["kept"]) for st in r.stages], "tokens": list(r.tokens)}
                       for r, s in zip(last, samples)],
            "seq_len": len(seq_len)}


KINDS = {"torch_eager": torch_eager, "reference": reference, "chain": chain, "chain_points": chain_points}


def main(argv: list[str] | None = None) -> int:
    spec_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    result = KINDS[spec["kind"]](spec)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["torch_loaded"] = "torch" in sys.modules
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
