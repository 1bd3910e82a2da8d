"""The OpenVINO peer row, run by path with a Python that has optimum-intel (a venv of its
own: optimum-intel pins transformers < 5.6 and must not share the project's venv).

    python openvino_row.py SPEC OUT     SPEC["phase"]: "export" or "time"

Stand-alone on purpose (no feather imports): that venv has optimum-intel, not feather.

* export: copy the checkpoint with the vision tower's weights renamed to the layout of the
  hub's llava-hf checkpoints (``vision_tower.vision_model.*``; transformers >= 5.6 saves
  ``vision_tower.*``, which transformers 5.5 would silently re-initialize), then
  ``OVModelForVisualCausalLM.from_pretrained(export=True)`` and ``save_pretrained``.
* time: load the IR (fp32 inference precision, so it is compared with the fp32 chain),
  warm up once, then per repeat ``generate`` with ``max_new_tokens=1`` (TTFT) and
  ``1 + new_tokens`` timed from its first new token to its last (decode, measured within one
  run: a difference of two runs went negative on a busy machine), as the torch eager row does. The
  vision and LLM-prefill times come from wrapping the two sub-models' ``forward`` on the
  instance (timing only). KV bytes: the language model's state tensors after generate.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path


def export(spec: dict) -> dict:
    from optimum.intel import OVModelForVisualCausalLM
    from safetensors.torch import load_file, save_file

    src, work = Path(spec["model"]), Path(spec["work"])
    legacy = work / "ov-source"
    shutil.copytree(src, legacy, dirs_exist_ok=True)
    weights = load_file(str(src / "model.safetensors"))
    renamed = {legacy_key(k): v for k, v in weights.items()}
    save_file(renamed, str(legacy / "model.safetensors"), metadata={"format": "pt"})
    model = OVModelForVisualCausalLM.from_pretrained(str(legacy), export=True, load_in_8bit=False,
                                                     **_weights(spec.get("weights", "fp32")))
    model.save_pretrained(spec["ir"])
    shutil.rmtree(legacy)
    return {"renamed": sum(k != legacy_key(k) for k in weights)}


def _weights(kind: str) -> dict:
    """optimum-intel's weight compression of the language model (NNCF, data-free): ``int8``
    per-channel INT8 weights, ``int4`` symmetric INT4 weights in groups of 128 (as
    feather-quantize's MatMulNBits; a channel that 128 does not divide, e.g. the bench FFN's
    1376, gets an adjusted group size); ``fp32`` none. Activations stay float either way."""
    if kind == "fp32":
        return {}
    from optimum.intel import OVWeightQuantizationConfig

    bits = {"int8": 8, "int4": 4}[kind]
    grouped = {"group_size": 128, "ratio": 1.0, "group_size_fallback": "adjust"} if bits == 4 else {}
    config = OVWeightQuantizationConfig(bits=bits, sym=True, **grouped)
    return {"quantization_config": config}


def legacy_key(key: str) -> str:
    prefix = "vision_tower."
    if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
        return prefix + "vision_model." + key[len(prefix):]
    return key


class _Timer:
    """Wraps one sub-model's ``forward`` (instance attribute) and records each call's time."""

    def __init__(self, part):
        self.calls: list[float] = []
        inner = part.forward

        def forward(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.calls.append(time.perf_counter() - t0)
            return out

        part.forward = forward


def _load(spec: dict):
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    # denormals flushed to zero as in the feather chains' ONNX Runtime sessions
    # (session.set_denormal_as_zero), so neither side pays for them and the other does not
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(spec["threads"]),
              "PERFORMANCE_HINT": "LATENCY", "CPU_DENORMALS_OPTIMIZATION": "YES"}
    model = OVModelForVisualCausalLM.from_pretrained(spec["ir"], ov_config=config)
    return model, AutoProcessor.from_pretrained(spec["model"])


def time_rows(spec: dict) -> dict:
    import torch
    from PIL import Image

    model, processor = _load(spec)
    vision, llm = _Timer(model.vision_embeddings), _Timer(model.language_model)
    text = spec["prompt_text"]
    image = Image.open(spec["image"]).convert("RGB")

    def once(n: int):
        vision.calls.clear(), llm.calls.clear()
        first = _FirstToken()
        t0 = time.perf_counter()
        enc = processor(images=image, text=text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, streamer=first)
        t1 = time.perf_counter()
        return t1 - t0, t1 - (first.at or t1), out[0, enc["input_ids"].shape[1]:].tolist(), enc["input_ids"].shape[1]

    samples: dict[str, list] = {}
    for i in range(spec["repeats"] + 1):
        ttft, _, _, seq_len = once(1)
        times = {"vision_s": vision.calls[0], "llm_prefill_s": llm.calls[0], "ttft_s": ttft}
        _, decode, tokens, _ = once(1 + spec["new_tokens"])
        times.update(decode_s=decode, decode_tokens_per_s=(len(tokens) - 1) / decode if decode > 0 else None)
        for key, value in times.items():
            if i:
                samples.setdefault(key, []).append(value)
    states = model.language_model.request.query_state()
    kv = sum(s.state.data.nbytes for s in states if "beam" not in s.name)
    return {"samples": samples, "kv_cache_bytes": int(kv), "seq_len": seq_len, "kept": [], "tokens": tokens}


class _FirstToken:
    """A ``generate`` streamer that notes when the first new token arrives: HF calls ``put``
    once with the prompt, then once per generated token (feather.bench.rows has the same; this
    file imports nothing from feather)."""

    def __init__(self):
        self.calls, self.at = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def _peak_rss_bytes() -> int:
    """VmHWM of this process (see feather.bench.rows.peak_rss_bytes for why not ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    spec_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    result = export(spec) if spec["phase"] == "export" else time_rows(spec)
    result["peak_rss_bytes"] = _peak_rss_bytes()
    result["torch_loaded"] = "torch" in sys.modules
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
