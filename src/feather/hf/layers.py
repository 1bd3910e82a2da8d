"""Torch pieces shared by the reference loop and the exported segments: RoPE, the
pruning score, masks. They reuse the HF layer's own submodules and weights."""

from __future__ import annotations

import math

import torch


def rotate_half(x: torch.Tensor, half: int | None = None) -> torch.Tensor:
    """Exported graphs are traced: a size read from ``x.shape`` becomes Shape / Gather / Div
    nodes computed at run time in every layer. Callers that know ``half`` (or, below, ``heads``)
    from the config pass a Python int, so the graph gets constant shapes."""
    half = x.shape[-1] // 2 if half is None else half
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int | None = None) -> torch.Tensor:
    """Rotate-half RoPE (Llama, Mistral, Qwen2). x [1, h, S, hd]; cos, sin [1, S, hd]."""
    return x * cos.unsqueeze(1) + rotate_half(x, half) * sin.unsqueeze(1)


def split_heads(x: torch.Tensor, head_dim: int, heads: int | None = None) -> torch.Tensor:
    """[1, S, h * hd] -> [1, h, S, hd]."""
    if heads is not None:  # batch 1, sequence -1: no shape arithmetic in a traced graph
        return x.view(1, -1, heads, head_dim).transpose(1, 2)
    b, s, _ = x.shape
    return x.view(b, s, -1, head_dim).transpose(1, 2)


def repeat_kv(x: torch.Tensor, rep: int) -> torch.Tensor:
    """GQA: [1, KV, S, hd] -> [1, KV * rep, S, hd] (Expand + Reshape; repeat_interleave
    exports to If / OneHot, which static engines refuse)."""
    if rep == 1:
        return x
    b, kv, s, hd = x.shape
    return x[:, :, None].expand(b, kv, rep, s, hd).reshape(b, kv * rep, s, hd)


def score_logits(layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope: bool) -> torch.Tensor:
    """FEATHER's score logits from layer K-1's INPUT ``hidden`` [1, S, d], with that layer's
    own weights: the last position's query against every key -> [1, H, S].

        hidden -> input_layernorm -> q_proj -> q[:, :, -1:]  --(RoPE if rope)--+
                                  -> k_proj -> k (GQA repeat) --(RoPE if rope)--+-> q.k^T / sqrt(hd)

    The host slices the image span, then takes the softmax and the head mean.
    """
    attn = layer.self_attn
    head_dim = attn.head_dim
    x = layer.input_layernorm(hidden)
    q = split_heads(attn.q_proj(x), head_dim)  # [1, H, S, hd]
    k = split_heads(attn.k_proj(x), head_dim)  # [1, KV, S, hd]
    if rope:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k = repeat_kv(k, q.shape[1] // k.shape[1])  # [1, H, S, hd]
    q_last = q[:, :, -1:, :]  # [1, H, 1, hd]
    return (q_last @ k.transpose(2, 3))[:, :, 0, :] / math.sqrt(head_dim)  # [1, H, S] (no Squeeze: it exports to If)


def causal_mask(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal mask [1, 1, n, n] for a prefill with no past."""
    mask = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return mask[None, None]
