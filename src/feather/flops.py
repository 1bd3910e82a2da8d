"""FLOPs and KV-cache counts for FEATHER pruning, torch-free.

Two counts live here, and reports should give both:

* ``image_token_reduction``: the paper's number. FastV's per-layer count applied to the
  IMAGE tokens only, with two FFN matrices (LLaMA has three). It ignores text tokens, the
  vision tower and the LM head, so it overstates what a real prompt saves.
* ``prefill_flops``: a whole-prefill count for an actual prompt (text + image tokens,
  three FFN matrices, causal attention, GQA, vision tower, projector, LM head).

``stages`` is always ``[(K, n_kept), ...]`` with ascending K: decoder layers ``< K1`` see
every image token, layers ``[K1, K2)`` see ``n1`` of them, and so on. ``K = 0`` prunes
before the LLM. Every bad value raises ``ConfigError`` naming the argument.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields

from feather.errors import ConfigError

Stages = Sequence[tuple[int, int]]


def _check_int(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name}={value!r}: expected an int >= {minimum}")
    return int(value)


def _check_stage(i: int, stage: object, layers: int) -> tuple[int, int]:
    if not isinstance(stage, (tuple, list)) or len(stage) != 2:
        raise ConfigError(f"stages[{i}]={stage!r}: expected a pair (K, n_kept)")
    k = _check_int(f"stages[{i}] K", stage[0])
    n = _check_int(f"stages[{i}] n_kept", stage[1])
    if k > layers:
        raise ConfigError(f"stages[{i}] K={k}: expected 0 <= K <= layers={layers}")
    return k, n


def _image_counts(layers: int, n_image: int, stages: Stages) -> list[int]:
    """Image tokens that each decoder layer sees, after validating every input."""
    layers = _check_int("layers", layers, 1)
    n_image = _check_int("n_image", n_image)
    counts = [n_image] * layers
    prev_k, prev_n = -1, n_image
    for i, stage in enumerate(stages):
        k, n = _check_stage(i, stage, layers)
        if k <= prev_k:
            raise ConfigError(f"stages[{i}] K={k}: K must be ascending, > {prev_k} (the previous K)")
        if n > prev_n:
            raise ConfigError(
                f"stages[{i}] n_kept={n}: expected <= {prev_n}, the image tokens left before it"
            )
        counts[k:] = [n] * (layers - k)
        prev_k, prev_n = k, n
    return counts


def _fastv(n: int, d: int, m: int) -> int:
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def layer_flops(n: int, hidden: int, ffn: int) -> float:
    """FastV's count for one decoder layer over ``n`` tokens: ``4nd^2 + 2n^2d + 2ndm``.

    ``4nd^2`` are the q/k/v/o projections, ``2n^2d`` the attention (full, not causal) and
    ``2ndm`` the FFN with TWO matrices. One multiply-add counts as one here, as in FastV.
    """
    n = _check_int("n", n)
    return float(_fastv(n, _check_int("hidden", hidden, 1), _check_int("ffn", ffn, 1)))


def image_token_reduction(layers: int, hidden: int, ffn: int, n_image: int, stages: Stages) -> float:
    """The paper's FLOPs-reduction fraction (0..1), counting IMAGE tokens only.

    One stage: ``1 - [K*C(N) + (L-K)*C(n_kept)] / [L*C(N)]`` with ``C = layer_flops``;
    several stages extend it layer range by layer range. Text tokens, the vision tower and
    the LM head are ignored, and C counts two FFN matrices, as the paper does.
    Empty ``stages`` (or no image tokens) gives 0.0.
    """
    counts = _image_counts(layers, n_image, stages)
    d, m = _check_int("hidden", hidden, 1), _check_int("ffn", ffn, 1)
    if not stages or n_image == 0:
        return 0.0
    pruned = sum(_fastv(c, d, m) for c in counts)
    return 1.0 - pruned / (len(counts) * _fastv(n_image, d, m))


@dataclass(frozen=True)
class Geometry:
    """The shapes a FLOPs / KV-cache count needs: text decoder, vision tower, projector.

    The vision tower is a ViT with ``vision_hidden`` split evenly over its heads and a
    2-matrix MLP; ``n_patches`` counts every token it sees (CLS included). The projector
    is LLaVA's 2-layer MLP ``projector_in -> projector_out -> projector_out``.
    """

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_layers: int
    vision_hidden: int
    vision_ffn: int
    n_patches: int
    projector_in: int
    projector_out: int

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_int(f"Geometry.{f.name}", getattr(self, f.name), 1)
        if self.heads % self.kv_heads:
            raise ConfigError(f"Geometry.kv_heads={self.kv_heads}: expected a divisor of heads={self.heads}")

    @classmethod
    def llava_1_5_7b(cls) -> Geometry:
        """LLaVA-1.5-7B: Llama-2-7B decoder, CLIP ViT-L/14 at 336 px (577 tokens). CLIP has 24
        layers, but LLaVA reads layer -2, so 23 run (the exported vision graph drops the last)."""
        return cls(
            layers=32, hidden=4096, ffn=11008, heads=32, kv_heads=32, head_dim=128, vocab=32064,
            vision_layers=23, vision_hidden=1024, vision_ffn=4096, n_patches=577,
            projector_in=1024, projector_out=4096,
        )  # fmt: skip


def _text_layer(g: Geometry, n: int) -> int:
    """FLOPs of one decoder layer over ``n`` tokens (multiply-add = 2)."""
    qo = 2 * n * g.hidden * (g.heads * g.head_dim) * 2
    kv = 2 * n * g.hidden * (g.kv_heads * g.head_dim) * 2
    context = n * (n + 1) // 2  # causal: query i attends to i + 1 keys
    attn = g.heads * context * g.head_dim * 2 * 2  # scores and weighted sum
    return qo + kv + attn + 3 * 2 * n * g.hidden * g.ffn


def _vision(g: Geometry, n_image: int) -> int:
    """FLOPs of the vision tower over ``n_patches`` tokens plus the projector on ``n_image``."""
    n, dv = g.n_patches, g.vision_hidden
    layer = 4 * 2 * n * dv * dv + 2 * 2 * n * n * dv + 2 * 2 * n * dv * g.vision_ffn
    projector = 2 * n_image * (g.projector_in * g.projector_out + g.projector_out * g.projector_out)
    return g.vision_layers * layer + projector


def prefill_flops(
    geom: Geometry, n_text: int, n_image: int, stages: Stages, include_vision: bool = True
) -> dict[str, float]:
    """Whole-prefill FLOPs of one prompt (multiply-add = 2), split by part.

    Returns ``{"vision", "llm", "lm_head", "total"}``. ``llm`` sums every decoder layer
    over text + that layer's image tokens: q/k/v/o projections (GQA-aware), causal
    attention, and the real THREE FFN matrices. ``lm_head`` covers the last position
    only. ``vision`` is the ViT (non-causal attention, 2-matrix MLP) plus the projector,
    or 0 when ``include_vision`` is False. Unlike ``image_token_reduction`` this counts
    text tokens too. Patch embedding, norms, softmax and activations are left out.
    """
    n_text = _check_int("n_text", n_text)
    counts = _image_counts(geom.layers, n_image, stages)
    parts = {
        "vision": _vision(geom, n_image) if include_vision else 0,
        "llm": sum(_text_layer(geom, n_text + c) for c in counts),
        "lm_head": 2 * geom.hidden * geom.vocab,
    }
    parts["total"] = sum(parts.values())
    return {k: float(v) for k, v in parts.items()}


def prefill_speedup(geom: Geometry, n_text: int, n_image: int, stages: Stages) -> float:
    """Decoder-layer FLOPs unpruned / pruned: the ideal speed-up of the "LLM prefill" time.

    Vision tower, projector and LM head are excluded (pruning does not change them).
    """
    pruned = prefill_flops(geom, n_text, n_image, stages, include_vision=False)["llm"]
    full = prefill_flops(geom, n_text, n_image, [], include_vision=False)["llm"]
    return full / pruned


def kv_cache_bytes(
    geom: Geometry, n_text: int, n_image: int, stages: Stages, new_tokens: int = 0, bytes_per_value: int = 4
) -> int:
    """Bytes of the KV cache after prefill plus ``new_tokens`` decoded tokens.

    Each layer holds keys and values (``2 * kv_heads * head_dim`` values per token) for
    text + its image tokens + ``new_tokens``: layers ``< K1`` hold all N image tokens,
    layers ``[K1, K2)`` hold n1, and so on.
    """
    n_text = _check_int("n_text", n_text)
    new_tokens = _check_int("new_tokens", new_tokens)
    bytes_per_value = _check_int("bytes_per_value", bytes_per_value, 1)
    counts = _image_counts(geom.layers, n_image, stages)
    per_token = 2 * geom.kv_heads * geom.head_dim * bytes_per_value
    return sum(per_token * (n_text + c + new_tokens) for c in counts)


def decode_flops(geom: Geometry, n_text: int, n_image: int, stages: Stages, new_tokens: int = 1) -> float:
    """Mean FLOPs of one decode step over ``new_tokens`` steps after a prompt of ``n_text``
    text and ``n_image`` image tokens: every layer's projections and FFN on one token, its
    attention over what that layer holds (text + its image tokens + the tokens decoded so
    far, ``(new_tokens - 1) / 2`` on average), and the LM head. What attention's extra work
    predicts when only the context changes: ``decode_flops(short) / decode_flops(long)``."""
    n_text = _check_int("n_text", n_text)
    new_tokens = _check_int("new_tokens", new_tokens, 1)
    counts = _image_counts(geom.layers, n_image, stages)
    weights = 2 * geom.hidden * (2 * geom.heads * geom.head_dim + 2 * geom.kv_heads * geom.head_dim + 3 * geom.ffn)
    attention = sum(2 * 2 * geom.heads * geom.head_dim * (n_text + c + (new_tokens + 1) / 2) for c in counts)
    return float(geom.layers * weights + attention + 2 * geom.hidden * geom.vocab)
