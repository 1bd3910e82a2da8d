"""The graphs of the chain, as small ``nn.Module``s over the HF model's own submodules.

Each module declares its ONNX input/output names and dynamic axes. Decoder segments
reimplement only the attention wiring (explicit past/present KV, a causal mask offset by
the past length) and reuse every weight-bearing submodule (norms, projections, MLP,
rotary embedding) from the HF layer; export validation compares them with the reference.

    vision:  pixel_values [1,3,H,W] -> image_features [1,N,d]
    embed:   input_ids [1,S] -> embeds [1,S,d]
    segment: hidden [1,S_in,d], keep_index [S], position_ids [1,S], past.{i}.key/value [1,KV,P,hd]
             -> hidden [1,S,d] | logits [1,V] (last segment), present.{i}.key/value [1,KV,P+S,hd],
                score [1,H,S] (when the next stage ranks by attention)
"""

from __future__ import annotations

import torch
from torch import nn

from feather.hf.layers import apply_rope, repeat_kv, score_logits, split_heads

KV_NAMES = {"past_key": "past.%d.key", "past_value": "past.%d.value",
            "present_key": "present.%d.key", "present_value": "present.%d.value"}


class VisionGraph(nn.Module):
    """Vision tower at the checkpoint's feature layer (CLS dropped) + projector."""

    input_names = ["pixel_values"]
    output_names = ["image_features"]
    dynamic_axes: dict = {}

    def __init__(self, llava):
        super().__init__()
        self.llava = llava

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cfg = self.llava.config
        out = self.llava.model.vision_tower(pixel_values, output_hidden_states=True)
        feats = out.hidden_states[cfg.vision_feature_layer][:, 1:]  # [1, N, d_v], CLS dropped
        return self.llava.model.multi_modal_projector(feats)  # [1, N, d]


class EmbedGraph(nn.Module):
    """Token embeddings; the runtime splices the image features into the image span."""

    input_names = ["input_ids"]
    output_names = ["embeds"]
    dynamic_axes = {"input_ids": {1: "seq"}, "embeds": {1: "seq"}}

    def __init__(self, llava):
        super().__init__()
        self.embed = llava.model.language_model.embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class DecoderSegment(nn.Module):
    """Decoder layers ``[start, end)``. ``score_rope``: None for no score output, else
    whether the score applies RoPE. ``final``: end in norm + LM head on the last position."""

    def __init__(self, llava, start: int, end: int, score_rope: bool | None, final: bool):
        super().__init__()
        lm = llava.model.language_model
        self.start, self.end, self.score_rope, self.final = start, end, score_rope, final
        self.layers = nn.ModuleList(lm.layers[start:end])
        self.rotary = lm.rotary_emb
        self.norm = lm.norm if final else None
        self.lm_head = llava.lm_head if final else None
        self.input_names = ["hidden", "keep_index", "position_ids"] + self._kv("past")
        self.output_names = (["logits"] if final else ["hidden_out"]) + self._kv("present")
        if score_rope is not None:
            self.output_names.append("score")
        self.dynamic_axes = self._axes()

    def _kv(self, kind: str) -> list[str]:
        names = []
        for i in range(self.start, self.end):
            names += [KV_NAMES[f"{kind}_key"] % i, KV_NAMES[f"{kind}_value"] % i]
        return names

    def _axes(self) -> dict:
        axes = {"hidden": {1: "seq_in"}, "keep_index": {0: "seq"}, "position_ids": {1: "seq"}}
        axes.update({n: {2: "past"} for n in self._kv("past")})
        axes.update({n: {2: "total"} for n in self._kv("present")})
        if not self.final:
            axes["hidden_out"] = {1: "seq"}
        if self.score_rope is not None:
            axes["score"] = {2: "seq"}
        return axes

    def forward(self, hidden, keep_index, position_ids, *past):
        h = hidden.index_select(1, keep_index)  # [1, S, d]: the kept tokens, original order
        cos, sin = self.rotary(h, position_ids)  # [1, S, hd] at ORIGINAL positions
        mask = _causal_mask(h.shape[1], past[0].shape[2], h.dtype)  # [1, 1, S, P+S]
        presents, h_last_in = [], h
        for j, layer in enumerate(self.layers):
            h_last_in = h
            h, k, v = _layer(layer, h, cos, sin, past[2 * j], past[2 * j + 1], mask)
            presents += [k, v]
        first = self.lm_head(self.norm(h[:, -1:, :]))[:, 0] if self.final else h  # [1, V] | [1, S, d]
        outputs = [first, *presents]
        if self.score_rope is not None:
            outputs.append(score_logits(self.layers[-1], h_last_in, cos, sin, self.score_rope))
        return tuple(outputs)


def _causal_mask(s: int, p, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [1, 1, S, P+S]: query i (at absolute P+i) sees keys 0..P+i.

        arange(S)+P --Unsqueeze--> [S,1] --+
                                           +--LessOrEqual--> Where(0, min) --> [1,1,S,P+S]
        arange(P+S) --Unsqueeze--> [1,P+S] +
    """
    q = torch.arange(s) + p
    k = torch.arange(p + s)
    allowed = k[None, :] <= q[:, None]
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype))[None, None]


def _layer(layer, h, cos, sin, past_k, past_v, mask):
    """One Llama-shaped decoder layer with explicit KV: returns (hidden, present_k, present_v)."""
    attn = layer.self_attn
    hd = attn.head_dim
    x = layer.input_layernorm(h)
    q = apply_rope(split_heads(attn.q_proj(x), hd), cos, sin)  # [1, H, S, hd]
    k = apply_rope(split_heads(attn.k_proj(x), hd), cos, sin)  # [1, KV, S, hd]
    v = split_heads(attn.v_proj(x), hd)
    k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # [1, KV, P+S, hd]
    rep = q.shape[1] // k.shape[1]
    kr, vr = repeat_kv(k, rep), repeat_kv(v, rep)
    w = (q @ kr.transpose(2, 3)) * attn.scaling + mask  # [1, H, S, P+S]
    w = torch.softmax(w.float(), dim=-1).to(q.dtype)  # fp32 softmax: fp16 overflows there
    o = (w @ vr).transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)  # [1, S, H*hd]
    h = h + attn.o_proj(o)
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h, k, v
