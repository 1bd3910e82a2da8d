"""feather.flops: the paper's image-token count against the poster, and the whole-prefill
count against hand sums on a toy geometry."""

from __future__ import annotations

import itertools
import math

import pytest

from feather.errors import ConfigError
from feather.flops import (
    Geometry,
    image_token_reduction,
    kv_cache_bytes,
    layer_flops,
    prefill_flops,
    prefill_speedup,
)

# Prismatic 7B, as the poster counts it.
L, D, M, N, G = 32, 4096, 11008, 729, 27

TOY = Geometry(
    layers=2, hidden=8, ffn=12, heads=2, kv_heads=1, head_dim=4, vocab=10,
    vision_layers=1, vision_hidden=6, vision_ffn=10, n_patches=5, projector_in=6, projector_out=8,
)  # fmt: skip


def percent(stages):
    return 100 * image_token_reduction(L, D, M, N, stages)


# ---- the paper's count, against the poster -------------------------------------------


def test_layer_flops_is_fastv_formula():
    assert layer_flops(1, 2, 3) == 4 * 1 * 4 + 2 * 1 * 2 + 2 * 1 * 2 * 3 == 32.0
    assert layer_flops(0, 4096, 11008) == 0.0


@pytest.mark.parametrize(
    ("k", "kept", "value", "poster"),
    [
        (3, math.floor(N * 0.25), 68.6, 68),  # FastV R = 0.75: 182 kept
        (3, math.ceil(G / 2) ** 2, 66.9, 66),  # uniform stride 2: 14 x 14 = 196 kept
        (8, math.floor(N * 0.25), 56.8, 56),
        (8, math.ceil(G / 2) ** 2, 55.4, 55),
    ],
)
def test_single_stage_matches_poster(k, kept, value, poster):
    got = percent([(k, kept)])
    assert round(got, 1) == value
    assert math.floor(got) == poster  # the poster truncates to whole percent


def test_feather_two_stages_matches_spec():
    n1 = 280
    n2 = math.floor(n1 * 0.09)  # rho^2 with R = 0.7
    assert n2 == 25
    got = percent([(8, n1), (16, n2)])
    assert round(got, 1) == 64.0  # 63.96: rounds to 64.0, but truncates to 63


def test_two_stages_equal_layer_ranges_written_out():
    def c(n):
        return 4 * n * D * D + 2 * n * n * D + 2 * n * D * M

    want = 1 - (8 * c(N) + 8 * c(280) + 16 * c(25)) / (L * c(N))
    assert image_token_reduction(L, D, M, N, [(8, 280), (16, 25)]) == pytest.approx(want, rel=1e-12)


def test_no_stages_is_zero():
    assert image_token_reduction(L, D, M, N, []) == 0.0
    assert image_token_reduction(L, D, M, 0, []) == 0.0


def test_keeping_everything_is_zero():
    assert image_token_reduction(L, D, M, N, [(3, N)]) == pytest.approx(0.0, abs=1e-15)


def test_more_pruning_more_reduction():
    got = [image_token_reduction(L, D, M, N, [(3, n)]) for n in range(0, N + 1, 7)]
    assert all(a > b for a, b in itertools.pairwise(got))
    deeper = [image_token_reduction(L, D, M, N, [(k, 182)]) for k in range(L + 1)]
    assert all(a > b for a, b in itertools.pairwise(deeper))
    assert deeper[-1] == 0.0  # pruning after the last layer saves nothing


def test_pruning_before_the_llm():
    n, kept, d, m = 576, 64, 4096, 11008
    full = 4 * n * d**2 + 2 * n**2 * d + 2 * n * d * m
    pruned = 4 * kept * d**2 + 2 * kept**2 * d + 2 * kept * d * m
    want = 1 - pruned / full  # every layer sees `kept` tokens, so L cancels
    assert image_token_reduction(32, d, m, n, [(0, kept)]) == pytest.approx(want, rel=1e-12)
    assert image_token_reduction(32, d, m, n, [(0, 0)]) == 1.0


# ---- the whole-prefill count, against hand sums ---------------------------------------


def toy_llm_by_hand(tokens_per_layer):
    """Multiply-adds of each matrix product, written out per layer, times 2."""
    d, m, heads, kv_heads, hd = 8, 12, 2, 1, 4
    macs = 0
    for n in tokens_per_layer:
        macs += n * d * (heads * hd)  # q_proj
        macs += n * d * (kv_heads * hd)  # k_proj
        macs += n * d * (kv_heads * hd)  # v_proj
        macs += n * (heads * hd) * d  # o_proj
        for _ in range(heads):
            for i in range(n):
                macs += (i + 1) * hd  # q_i . k_j for j <= i
                macs += (i + 1) * hd  # sum_j p_ij v_j
        macs += 3 * n * d * m  # gate, up, down
    return 2 * macs


def test_toy_llm_unpruned_by_hand():
    got = prefill_flops(TOY, n_text=3, n_image=4, stages=[])
    assert got["llm"] == toy_llm_by_hand([7, 7]) == 15232
    assert got["lm_head"] == 2 * 8 * 10


def test_toy_llm_pruned_by_hand():
    got = prefill_flops(TOY, n_text=3, n_image=4, stages=[(1, 2)])
    assert got["llm"] == toy_llm_by_hand([7, 5]) == 12896
    assert prefill_speedup(TOY, 3, 4, [(1, 2)]) == pytest.approx(15232 / 12896)


def test_toy_vision_by_hand():
    n, dv, fv = 5, 6, 10
    layer = 4 * n * dv * dv + n * n * dv + n * n * dv + n * dv * fv + n * fv * dv
    projector = 4 * (6 * 8 + 8 * 8)  # 4 image tokens through 6 -> 8 -> 8
    got = prefill_flops(TOY, n_text=3, n_image=4, stages=[])
    assert got["vision"] == 2 * (layer + projector) == 4136
    assert got["total"] == 4136 + 15232 + 160
    no_vision = prefill_flops(TOY, n_text=3, n_image=4, stages=[], include_vision=False)
    assert no_vision["vision"] == 0.0 and no_vision["total"] == 15232 + 160


def test_llava_pruned_total_below_unpruned():
    g = Geometry.llava_1_5_7b()
    full = prefill_flops(g, 40, 576, [])
    pruned = prefill_flops(g, 40, 576, [(8, 236), (16, 21)])
    assert pruned["total"] < full["total"]
    assert pruned["vision"] == full["vision"] and pruned["lm_head"] == full["lm_head"]
    speedup = prefill_speedup(g, 40, 576, [(8, 236), (16, 21)])
    assert speedup == pytest.approx(full["llm"] / pruned["llm"])
    # text tokens, the third FFN matrix and causal attention all dilute the saving
    assert 0 < 1 - 1 / speedup < image_token_reduction(32, 4096, 11008, 576, [(8, 236), (16, 21)])


def test_kv_cache_toy_by_hand():
    # per token per layer: k and v, 1 kv head of 4 values, 2 bytes each = 16 bytes
    # layer 0: 3 text + 4 image + 5 new = 12 tokens; layer 1: 3 + 2 + 5 = 10 tokens
    assert kv_cache_bytes(TOY, 3, 4, [(1, 2)], new_tokens=5, bytes_per_value=2) == 16 * (12 + 10)
    assert kv_cache_bytes(TOY, 3, 4, []) == 2 * 4 * 4 * 7 * 2


def test_kv_cache_llava_stage_ranges():
    g = Geometry.llava_1_5_7b()
    per_token = 2 * 32 * 128 * 2
    want = per_token * (8 * (40 + 576) + 8 * (40 + 236) + 16 * (40 + 21))
    assert kv_cache_bytes(g, 40, 576, [(8, 236), (16, 21)], bytes_per_value=2) == want


# ---- bad inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"stages": [(8, 280), (3, 25)]}, "stages[1] K=3"),
        ({"stages": [(8, 280), (8, 25)]}, "stages[1] K=8"),
        ({"stages": [(33, 100)]}, "stages[0] K=33"),
        ({"stages": [(-1, 100)]}, "stages[0] K=-1"),
        ({"stages": [(3, -5)]}, "stages[0] n_kept=-5"),
        ({"stages": [(3, 730)]}, "stages[0] n_kept=730"),
        ({"stages": [(3, 100), (8, 200)]}, "stages[1] n_kept=200"),
        ({"stages": [(3,)]}, "stages[0]="),
        ({"n_image": -1}, "n_image=-1"),
        ({"layers": 0}, "layers=0"),
        ({"hidden": -4096}, "hidden=-4096"),
        ({"ffn": 2.5}, "ffn=2.5"),
    ],
)
def test_bad_reduction_inputs_name_the_argument(kwargs, name):
    args = {"layers": L, "hidden": D, "ffn": M, "n_image": N, "stages": [(3, 182)], **kwargs}
    with pytest.raises(ConfigError, match=r"^" + name.replace("[", r"\[").replace("]", r"\]")) as err:
        image_token_reduction(**args)
    assert "\n" not in str(err.value)


def test_bad_prefill_inputs_name_the_argument():
    with pytest.raises(ConfigError, match="n_text=-1"):
        prefill_flops(TOY, -1, 4, [])
    with pytest.raises(ConfigError, match=r"stages\[0\] K=3"):
        prefill_speedup(TOY, 3, 4, [(3, 2)])  # the toy has 2 layers
    with pytest.raises(ConfigError, match="bytes_per_value=0"):
        kv_cache_bytes(TOY, 3, 4, [], bytes_per_value=0)
    with pytest.raises(ConfigError, match="new_tokens=-2"):
        kv_cache_bytes(TOY, 3, 4, [], new_tokens=-2)
    with pytest.raises(ConfigError, match="^n=-1"):
        layer_flops(-1, 8, 12)


def test_bad_geometry_names_the_field():
    with pytest.raises(ConfigError, match="Geometry.kv_heads=3"):
        Geometry(**{**TOY.__dict__, "kv_heads": 3})
    with pytest.raises(ConfigError, match="Geometry.vocab=0"):
        Geometry(**{**TOY.__dict__, "vocab": 0})


def test_decode_flops_counts_weights_once_and_attention_per_kept_context():
    from feather.flops import decode_flops

    g = Geometry.llava_1_5_7b()
    weights = 2 * 4096 * (2 * 4096 + 2 * 4096 + 3 * 11008)  # q, o, k, v and the three FFN matrices
    base = 32 * weights + 2 * 4096 * 32064
    per_ctx = 2 * 2 * 32 * 128  # scores and weighted sum over one more key, per layer
    assert decode_flops(g, 40, 576, [], new_tokens=1) == base + 32 * per_ctx * (40 + 576 + 1)
    assert decode_flops(g, 40, 576, [(8, 236), (16, 21)], new_tokens=3) == (
        base + per_ctx * (8 * (40 + 576 + 2) + 8 * (40 + 236 + 2) + 16 * (40 + 21 + 2)))
    short, long = decode_flops(g, 40, 576, [(8, 236)]), decode_flops(g, 1540, 576, [(8, 236)])
    assert long - short == 32 * per_ctx * 1500
