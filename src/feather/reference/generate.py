"""The PyTorch reference: FEATHER pruning on a HF LLaVA, driving HF's own decoder layers.

Prefill runs the text model layer by layer. Before each stage's layer K it scores the
current image tokens from layer K-1's input, selects (``feather.selection``, shared with
the runtime), and gathers the kept tokens with their ORIGINAL position ids. Each layer's
KV cache keeps what that layer saw, so caches differ in length across layers. Decoding
continues positions from the full prompt length. No transformers code is patched.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from feather import layout as layout_mod
from feather import prompt as prompt_mod
from feather.config import PruneConfig
from feather.errors import InputError
from feather.hf import checkpoint as model_mod
from feather.hf.layers import causal_mask, score_logits
from feather.sampling import Sampling, next_token


@dataclass
class Result:
    """Generated tokens and text, per-step logits [V], and per stage the kept image indices."""

    tokens: list[int]
    text: str
    logits: list[np.ndarray]
    stages: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "text": self.text, "stages": self.stages}


@dataclass
class _State:
    cache: object
    next_pos: int


def user_text_as_text(processor, as_text, template: str, prompt: str, enc):
    """``enc`` (the processor's output) with the user's text tokenized as text, as the runtime
    does (``feather.prompt.encode_turn``; ``as_text`` as there): the processor reads ``</s>``
    typed in a prompt as the control id. A prompt without special-token strings keeps the
    processor's own ids."""
    tokenizer = processor.tokenizer
    specials = [t.content for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values() if t.special]
    if not any(s in prompt for s in specials):
        return enc
    image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    n_image = int((enc["input_ids"][0] == image_id).sum())
    ids = prompt_mod.encode_turn(tokenizer.backend_tokenizer, as_text, template, prompt, processor.image_token,
                                 n_image, add_special_tokens=True)
    if ids != enc["input_ids"][0].tolist():
        enc["input_ids"] = torch.tensor([ids], dtype=enc["input_ids"].dtype)
        enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    return enc


class Reference:
    """FEATHER on one HF ``LlavaForConditionalGeneration`` (batch 1)."""

    def __init__(self, model, processor, config: PruneConfig):
        self.model, self.processor, self.config = model, processor, config
        self.lm = model.model.language_model
        self.geom = model_mod.geometry(model.config)
        config.check_layers(self.geom.num_layers)
        self.template = prompt_mod.template_from_processor(processor)
        self._as_text = None  # prompt_mod.text_tokenizer of the processor's, made on first use
        self._cache_kw = "cache" if "cache" in inspect.signature(self.lm.layers[0].forward).parameters else (
            "past_key_values"
        )

    @classmethod
    def load(cls, model: str, config: PruneConfig, dtype=None) -> Reference:
        net, processor = model_mod.load(model, dtype)
        return cls(net, processor, config)

    def encode(self, image, prompt: str):
        """The checkpoint's processor on ``image`` and ``prompt`` in the template (a ``BatchFeature``
        of torch tensors: input_ids, pixel_values, and for LLaVA-NeXT image_sizes)."""
        from feather.image import load_image

        text = prompt_mod.render(self.template, prompt, self.processor.image_token)
        enc = self.processor(images=load_image(image), text=text, return_tensors="pt")
        return user_text_as_text(self.processor, self._text_tokenizer, self.template, prompt, enc)

    def _text_tokenizer(self):
        if self._as_text is None:
            self._as_text = prompt_mod.text_tokenizer(self.processor.tokenizer.backend_tokenizer)
        return self._as_text

    def inputs(self, image, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [1, S], pixel_values [1, 3, H, W])`` through the checkpoint's processor
        (LLaVA-NeXT: [1, 1 + tiles, 3, H, W])."""
        enc = self.encode(image, prompt)
        return enc["input_ids"], enc["pixel_values"].to(self.model.dtype)

    def layout(self, image_size=None) -> layout_mod.Layout:
        """The image block's layout: the G x G grid, or NeXT's for an image of ``(height, width)``."""
        tiles = None
        if image_size is not None and model_mod.is_next(self.model.config):
            height, width = (int(x) for x in image_size)
            tiles = model_mod.tiles(self.model.config, (width, height))
        return model_mod.layout_for(self.model.config, tiles, self.config.stride)

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor, image_sizes=None) -> torch.Tensor:
        """Projected image features [N, d] at the checkpoint's feature layer and strategy
        (LLaVA-NeXT: transformers' packed base + unpadded tiles + newlines, for ``image_sizes``)."""
        extra = {} if image_sizes is None else {"image_sizes": image_sizes}
        out = self.model.model.get_image_features(pixel_values=pixel_values, return_dict=True, **extra)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.cat(list(feats), dim=0) if isinstance(feats, (list, tuple)) else feats[0]

    def image_span(self, input_ids: torch.Tensor, n: int | None = None) -> int:
        """Offset of the single contiguous block of N image tokens; InputError otherwise."""
        ids = input_ids[0].tolist()
        image_id, n = self.model.config.image_token_id, n or self.geom.n_image
        where = [i for i, t in enumerate(ids) if t == image_id]
        if len(where) != n or where[-1] - where[0] != n - 1:
            raise InputError(f"prompt: expected one image ({n} image tokens in one block), found {len(where)}")
        return where[0]

    def _rope(self, hidden: torch.Tensor, pos: torch.Tensor):
        return self.lm.rotary_emb(hidden, pos[None])

    def _layer(self, i: int, hidden, pos, cache, mask):
        kwargs = {self._cache_kw: cache}
        out = self.lm.layers[i](
            hidden, attention_mask=mask, position_ids=pos[None], use_cache=True,
            position_embeddings=self._rope(hidden, pos), **kwargs,
        )
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, features: torch.Tensor,
                layout: layout_mod.Layout | None = None) -> tuple[np.ndarray, _State, list]:
        """Run the prompt with pruning. Returns last-position logits [V], the state, the stages."""
        from transformers import DynamicCache

        layout = layout or self.layout()
        offset, n_full = self.image_span(input_ids, layout.n), layout.n
        hidden = self.lm.embed_tokens(input_ids)  # [1, S, d]
        hidden[0, offset : offset + n_full] = features.to(hidden.dtype)
        pos = torch.arange(input_ids.shape[1])  # original positions, kept through pruning
        current = (layout, np.arange(len(layout.prunable)))  # live prunable tokens (into layout.prunable)
        stage_at = {s.layer: s for s in self.config.stages}
        cache, stages, prev = DynamicCache(), [], None
        mask = causal_mask(hidden.shape[1], hidden.dtype)
        for i in range(self.geom.num_layers):
            if i in stage_at:
                hidden, pos, current = self._prune(stage_at[i], hidden, pos, current, offset, prev, features)
                stages.append({"layer": i, "kept": layout.prunable[current[1]].tolist()})
                mask = causal_mask(hidden.shape[1], hidden.dtype)
            prev = (hidden, pos)
            hidden = self._layer(i, hidden, pos, cache, mask)
        return self._logits(hidden), _State(cache, int(input_ids.shape[1])), stages

    def _prune(self, stage, hidden, pos, current, offset, prev, features):
        layout, live = current
        score = None
        if stage.needs_score:
            h_in, p_in = prev  # layer K-1's input, the tensor that layer consumed
            cos, sin = self._rope(h_in, p_in)
            score = score_logits(self.lm.layers[stage.layer - 1], h_in, cos, sin, stage.rope)[0].float().numpy()
        feats = features.float().numpy() if stage.impl.needs_features else None
        keep, live = layout.apply_stage(stage.impl, live, pos.numpy(), offset, self.config.params, score, feats,
                                        stage.layer)
        keep = torch.from_numpy(keep)
        return hidden[:, keep], pos[keep], (layout, live)

    @torch.no_grad()
    def decode_step(self, token: int, state: _State) -> np.ndarray:
        """One new token through every layer; each layer attends to what it kept."""
        hidden = self.lm.embed_tokens(torch.tensor([[token]]))  # [1, 1, d]
        pos = torch.tensor([state.next_pos])
        for i in range(self.geom.num_layers):
            hidden = self._layer(i, hidden, pos, state.cache, None)
        state.next_pos += 1
        return self._logits(hidden)

    def _logits(self, hidden: torch.Tensor) -> np.ndarray:
        return self.model.lm_head(self.lm.norm(hidden[:, -1:]))[0, -1].float().numpy()  # [V]

    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])

    def generate(self, image, prompt: str, max_new_tokens: int = 32, sampling: Sampling = Sampling()) -> Result:
        """Answer ``prompt`` about ``image`` (path, PIL image or H x W x 3 uint8 array)."""
        enc = self.encode(image, prompt)
        sizes = enc.get("image_sizes")
        features = self.image_features(enc["pixel_values"].to(self.model.dtype), sizes)
        layout = self.layout(None if sizes is None else sizes[0].tolist())
        logits, state, stages = self.prefill(enc["input_ids"], features, layout)
        tokens, steps, rng, eos = [], [logits], sampling.rng(), self.eos_ids()
        while True:
            token = next_token(logits, sampling, rng)
            tokens.append(token)
            if token in eos or len(tokens) >= max_new_tokens:
                break
            logits = self.decode_step(token, state)
            steps.append(logits)
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        return Result(tokens, text, steps, stages)
