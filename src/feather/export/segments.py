"""The graphs of the chain, as small ``nn.Module``s over the HF model's own submodules.

Each module declares its ONNX input/output names and dynamic axes, taken from the graph I/O
contract (``feather.manifest.graphs``), which the manifest records too. Decoder segments
reimplement only the attention wiring (explicit past/present KV, a causal mask offset by
the past length) and reuse every weight-bearing submodule (norms, projections, MLP,
rotary embedding) from the HF layer; export validation compares them with the reference.

    vision:  pixel_values [1,3,H,W] -> image_features [1,N,d]
    embed:   input_ids [1,S] -> embeds [1,S,d]
    segment: hidden [1,S_in,d], keep_index [S], position_ids [1,S], past_len [1],
             cache.{i}.key/value [1,KV,C,hd] (a buffer of capacity C; rows >= past_len masked)
             -> hidden [1,S,d] | logits [1,V] (last segment), new.{i}.key/value [1,KV,S,hd],
                score [1,H,S] (when the next stage ranks by attention)

The cache is read, never rewritten: a segment returns only its new rows, which the runtime
writes into the buffer at ``past_len``. No Concat over the cache axis, no copy of the cache
inside the graph (GQA groups the queries instead of repeating the keys), and no aliasing
of an input and an output, so TensorRT 10.3 parses it as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from feather.hf.layers import apply_rope, score_logits, split_heads
from feather.manifest import AxisRange, graphs

EXP_FLOOR = -60.0  # softmax exponents below it are raised to it: e^-60 = 8.8e-27, no denormal weights

_STATIC = graphs.vision_spec("vision.onnx", "float32")  # the tensor names and axes only
_EMBED = graphs.embed_spec("embed.onnx", AxisRange(1, 1, 1), "float32")


class VisionGraph(nn.Module):
    """Vision tower at the checkpoint's feature layer + projector. ``default`` drops CLIP's CLS
    token, ``full`` keeps every token (SigLIP has no CLS); either way the output is the G x G
    patches (``feather.hf.checkpoint`` refuses any other combination)."""

    input_names = graphs.input_names(_STATIC)
    output_names = graphs.output_names(_STATIC)
    dynamic_axes = graphs.dynamic_axes(_STATIC)

    def __init__(self, llava):
        super().__init__()
        self.llava = llava
        self.drop = 1 if llava.config.vision_feature_select_strategy == "default" else 0

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cfg = self.llava.config
        out = self.llava.model.vision_tower(pixel_values, output_hidden_states=True)
        feats = out.hidden_states[cfg.vision_feature_layer][:, self.drop :]  # [1, N, d_v]
        return self.llava.model.multi_modal_projector(feats)  # [1, N, d]


class NextVisionGraph(nn.Module):
    """LLaVA-NeXT for one frame size (``TileSpec``): the base image and the tiles as one batch
    through the tower and projector, then transformers' packing with static shapes (the tiling
    is fixed, so the unpadding is a constant slice; tracing ``pack_image_features`` itself
    would turn its Python size arithmetic into tensors):

        pixel_values [1 + R*C, 3, S, S] -> features [1 + R*C, G*G, d]
          base: [0]                                                    -> [G*G, d]
          tiles: [1:] -> [R, C, G, G, d] -> [R*G, C*G, d] -> crop [h', w', d]
                 -> concat image_newline per row -> [h', w' + 1, d]    -> [h' * (w' + 1), d]
        image_features = concat(base, tiles)                           -> [1, N, d]
    """

    input_names = graphs.input_names(_STATIC)
    output_names = graphs.output_names(_STATIC)
    dynamic_axes = graphs.dynamic_axes(_STATIC)

    def __init__(self, llava, tiles):
        super().__init__()
        self.llava = llava
        self.rows, self.cols = tiles.grid
        self.g = llava.config.vision_config.image_size // llava.config.vision_config.patch_size
        self.fh, self.fw = tiles.features
        self.top = (self.rows * self.g - self.fh) // 2  # unpad_image's centred crop
        self.left = (self.cols * self.g - self.fw) // 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cfg, model, g = self.llava.config, self.llava.model, self.g
        out = model.vision_tower(pixel_values, output_hidden_states=True)
        feats = model.multi_modal_projector(out.hidden_states[cfg.vision_feature_layer][:, 1:])  # [T, G*G, d]
        d = feats.shape[-1]
        grid = feats[1:].reshape(self.rows, self.cols, g, g, d).permute(0, 2, 1, 3, 4)  # [R, G, C, G, d]
        grid = grid.reshape(self.rows * g, self.cols * g, d)  # [R*G, C*G, d]
        grid = grid[self.top : self.top + self.fh, self.left : self.left + self.fw]  # [h', w', d]
        newline = model.image_newline.to(feats.dtype)[None, None, :].expand(self.fh, 1, d)  # [h', 1, d]
        tiles = torch.cat([grid, newline], dim=1).reshape(self.fh * (self.fw + 1), d)
        return torch.cat([feats[0], tiles], dim=0)[None]  # [1, N, d]


class EmbedGraph(nn.Module):
    """Token embeddings; the runtime splices the image features into the image span."""

    input_names = graphs.input_names(_EMBED)
    output_names = graphs.output_names(_EMBED)
    dynamic_axes = graphs.dynamic_axes(_EMBED)

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
        self.heads = llava.config.text_config.num_attention_heads
        self.layers = nn.ModuleList(lm.layers[start:end])
        self.rotary = lm.rotary_emb
        self.norm = lm.norm if final else None
        self.lm_head = llava.lm_head if final else None
        spec = graphs.segment_spec("", (start, end), final, score_rope is not None, AxisRange(1, 1, 1), "float32")
        self.input_names = graphs.input_names(spec)  # forward()'s order
        self.output_names = graphs.output_names(spec)
        self.dynamic_axes = graphs.dynamic_axes(spec)

    def forward(self, hidden, keep_index, position_ids, past_len, *cache):
        h = hidden.index_select(1, keep_index)  # [1, S, d]: the kept tokens, original order
        cos, sin = self.rotary(h, position_ids)  # [1, S, hd] at ORIGINAL positions
        rep = self.heads // cache[0].shape[1]
        masks = _masks(h.shape[1], cache[0].shape[2], past_len, rep)  # biases [1,1,1,C], [1,1,rep*S,S]; live [1,1,1,C]
        presents, h_last_in = [], h
        for j, layer in enumerate(self.layers):
            h_last_in = h
            h, k, v = _layer(layer, h, cos, sin, cache[2 * j], cache[2 * j + 1], masks)
            presents += [k, v]
        first = self.lm_head(self.norm(h[:, -1:, :]))[:, 0] if self.final else h  # [1, V] | [1, S, d]
        outputs = [first, *presents]
        if self.score_rope is not None:
            outputs.append(score_logits(self.layers[-1], h_last_in, cos, sin, self.score_rope))
        return tuple(outputs)


def _masks(s: int, cap, past_len: torch.Tensor, rep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention biases (0 = may attend) for S new queries grouped ``rep`` per KV head, and
    the cache rows' live mask as 0/1 weights.

        arange(C) --Less(past_len)--> [1,1,1,C]          cache rows still live
        arange(rep*S) % S --Unsqueeze--> [rep*S,1] --+
                                                     +--GreaterOrEqual--> [1,1,rep*S,S]  causal
        arange(S) --Unsqueeze--> [1,S] --------------+
    """
    live = (torch.arange(cap) < past_len)[None, None, None, :]
    q = torch.arange(rep * s) % s
    causal = (q[:, None] >= torch.arange(s)[None, :])[None, None]
    # as additive biases (0 where allowed, float32's lowest where not), built once per segment:
    # each layer then pays a broadcast Add, which ONNX Runtime vectorizes, instead of a Where
    # (profiled on the bench geometry: Where took 19 ms of an INT8 prefill)
    low = torch.finfo(torch.float32).min
    zero = torch.zeros((), dtype=torch.float32)
    # live as 0/1 weights too: cache rows past the live length must weigh exactly 0 (their
    # contents are stale), which the exponent floor below would otherwise turn into e^-60
    return torch.where(live, zero, low), torch.where(causal, zero, low), live.to(torch.float32)


def _layer(layer, h, cos, sin, cache_k, cache_v, masks):
    """One Llama-shaped decoder layer reading a fixed-capacity cache: returns (hidden, k, v)
    where k, v [1, KV, S, hd] are only this step's new rows.

    GQA without repeating the cache: the H = KV * rep query heads are grouped per KV head,
    q [1, H, S, hd] -> [1, KV, rep*S, hd], so every matmul reads the cache as it is. The
    softmax runs over two key blocks (cache rows, new rows) without concatenating them:

        s_c = q.cache_k^T, s_n = q.k^T (masked) -> m = max(max s_c, max s_n)
        o = (exp(s_c - m) @ cache_v + exp(s_n - m) @ v) / (sum exp(s_c - m) + sum exp(s_n - m))

    The cache always has at least one row (a prefill binds one masked dummy row), so every
    reduction is over a non-empty axis. A masked score is the score plus float32's lowest
    (-3.4e38, which absorbs any score), raised to the exponent floor: a cache row past the
    live length then weighs exactly 0 (multiplied by the live mask), a causally masked new
    row at most e^-60 = 8.8e-27 (next to a weight sum >= 1: nothing float32 can show).
    """
    attn = layer.self_attn
    # sizes from the config as Python ints, not from tensor shapes: the traced graph gets
    # constant shapes (-1 for the sequence) instead of per-layer Shape/Gather/Concat chains
    hd, heads, kvh = attn.head_dim, attn.config.num_attention_heads, attn.config.num_key_value_heads
    x = layer.input_layernorm(h)
    q = apply_rope(split_heads(attn.q_proj(x), hd, heads), cos, sin, hd // 2)  # [1, H, S, hd]
    k = apply_rope(split_heads(attn.k_proj(x), hd, kvh), cos, sin, hd // 2)  # [1, KV, S, hd]
    v = split_heads(attn.v_proj(x), hd, kvh)
    qg = q.reshape(1, kvh, -1, hd)  # [1, KV, rep*S, hd]: heads kv*rep .. kv*rep+rep-1
    bias_c, bias_n, live_c = masks
    s_c = (qg @ cache_k.transpose(2, 3)).float() * attn.scaling + bias_c  # [1, KV, rep*S, C]
    s_n = (qg @ k.transpose(2, 3)).float() * attn.scaling + bias_n  # [1, KV, rep*S, S]
    m = torch.maximum(s_c.amax(-1, keepdim=True), s_n.amax(-1, keepdim=True))  # fp32: fp16 overflows here
    # exp of a far-off score falls below float32's normal range (< 1.2e-38), and x86 multiplies
    # such denormals many times slower; the floor keeps every weight normal (>= e^-60 / C,
    # far above that range) and changes no weight float32 can tell from 0 beside a sum >= 1
    e_c = torch.exp(torch.clamp(s_c - m, min=EXP_FLOOR)) * live_c  # stale rows: exactly 0
    e_n = torch.exp(torch.clamp(s_n - m, min=EXP_FLOOR))  # causally masked: <= e^-60 of a finite row
    denom = e_c.sum(-1, keepdim=True) + e_n.sum(-1, keepdim=True)
    o = (e_c / denom).to(q.dtype) @ cache_v + (e_n / denom).to(q.dtype) @ v  # [1, KV, rep*S, hd]
    o = o.reshape(1, heads, -1, hd).transpose(1, 2).reshape(1, -1, heads * hd)  # [1, S, H*hd]
    h = h + attn.o_proj(o)
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h, k, v
