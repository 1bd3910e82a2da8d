"""transformers' own ``generate``: what the parity tests compare the chain and the reference with."""

from __future__ import annotations

from feather.config import PruneConfig
from feather.reference import Reference


def hf_generate(ref: Reference, image, prompt: str, n: int) -> list[int]:
    """Greedy tokens from the checkpoint's own ``LlavaForConditionalGeneration.generate`` on
    the processor's inputs (``image_sizes`` included for LLaVA-NeXT)."""
    enc = ref.encode(image, prompt)
    enc["pixel_values"] = enc["pixel_values"].to(ref.model.dtype)
    out = ref.model.generate(**enc, max_new_tokens=n, do_sample=False)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def hf_tokens(path, image, prompt: str, n: int) -> list[int]:
    """``hf_generate`` on the checkpoint at ``path``, loaded unpruned."""
    return hf_generate(Reference.load(str(path), PruneConfig(criterion="none")), image, prompt, n)
