"""The numpy selection math, checked against independent torch computations."""

import numpy as np
import pytest
import torch

from feather.config import PruneConfig
from feather.selection import (
    attention_scores,
    knn_scores,
    sequence_keep_index,
    topk,
    uniform_grid,
)


def test_uniform_grid_is_rows_and_columns_at_multiples_of_stride():
    for grid, stride in [(24, 3), (24, 2), (27, 2), (14, 4), (5, 1)]:
        idx = uniform_grid(grid, stride)
        rows, cols = idx // grid, idx % grid
        expect = {(r, c) for r in range(0, grid, stride) for c in range(0, grid, stride)}
        assert set(zip(rows.tolist(), cols.tolist())) == expect
        assert len(idx) == len(expect) and np.all(np.diff(idx) > 0)
    assert uniform_grid(24, 3)[:9].tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 72]


def test_topk_matches_torch_and_returns_ascending_indices():
    rng = np.random.default_rng(0)
    for n, k in [(576, 172), (236, 21), (10, 10), (7, 0)]:
        s = rng.normal(size=n).astype(np.float32)
        expect = np.sort(torch.topk(torch.from_numpy(s), k).indices.numpy())
        assert topk(s, k).tolist() == expect.tolist()


def test_topk_breaks_ties_toward_the_lower_index():
    assert topk(np.array([1.0, 2.0, 2.0, 2.0, 0.0]), 2).tolist() == [1, 2]


def test_attention_scores_is_softmax_then_head_mean():
    logits = np.random.default_rng(1).normal(size=(4, 50)).astype(np.float32) * 5
    expect = torch.softmax(torch.from_numpy(logits), dim=-1, dtype=torch.float32).mean(0).numpy()
    np.testing.assert_allclose(attention_scores(logits), expect, rtol=1e-5, atol=1e-7)


def _dpc_knn_torch(f: torch.Tensor, k: int = 5) -> torch.Tensor:
    """DPC-KNN written out independently with torch (TCFormer style)."""
    f = f.double()
    dist = torch.cdist(f, f) / f.shape[1] ** 0.5
    near = torch.topk(dist, k, dim=-1, largest=False).values
    density = torch.exp(-(near**2).mean(-1))
    delta = torch.empty_like(density)
    for i in range(len(f)):
        higher = density > density[i]
        delta[i] = dist[i][higher].min() if higher.any() else dist.max()
    return density * delta


def test_knn_scores_match_an_independent_dpc_knn():
    f = np.random.default_rng(2).normal(size=(60, 16))
    np.testing.assert_allclose(knn_scores(f), _dpc_knn_torch(torch.from_numpy(f)).numpy(), rtol=1e-9)


def _stage(config, i=0):
    return config.stages[i]


def select_stage(stage, config, current, grid, logits=None, features=None):
    return stage.impl.select(current, grid, config.params, logits, features, stage.layer)


def test_every_rule_selects_exactly_its_static_keep_count():
    """Each registered rule's ``keep`` is what its ``select`` returns in static mode, for
    first and second stages (a rule without a case here fails the registry check)."""
    from feather.rules import RULES, Params

    rng = np.random.default_rng(4)
    params = Params.from_ratio(0.7, 3)
    feats = rng.normal(size=(576, 16))
    for current in (np.arange(576), np.sort(rng.choice(576, 236, replace=False))):
        for name, rule in RULES.items():
            logits = rng.normal(size=(8, len(current))) if rule.needs_score else None
            kept = rule.select(current, 24, params, logits, feats if rule.needs_features else None)
            alive_grid = int(np.isin(current, uniform_grid(24, 3)).sum())
            if name == "uniform":  # only grid tokens still alive can be kept
                assert len(kept) == alive_grid
            elif name == "ensemble" and alive_grid < 64:  # exact only while the whole grid is alive
                assert len(kept) == alive_grid + int(0.3 * len(current) + 1e-9)
            else:
                assert len(kept) == rule.keep(len(current), 24, params), name
            assert np.all(np.diff(kept) > 0) and (len(kept) == 0 or kept[-1] < len(current))
    assert {r.name for r in RULES.values() if r.rope} == {"topk_rope"}
    assert {r.name for r in RULES.values() if r.needs_score} == {"topk_rope", "topk_norope", "ensemble",
                                                                  "topk_norope2"}


def test_feather_static_is_a_superset_of_paper_mode_and_has_exact_counts():
    rng = np.random.default_rng(3)
    for _ in range(20):
        logits = rng.normal(size=(8, 576)) * 3
        static, paper = PruneConfig(mode="static"), PruneConfig(mode="paper")
        cur = np.arange(576)
        s1 = select_stage(_stage(static), static, cur, 24, logits)
        p1 = select_stage(_stage(paper), paper, cur, 24, logits)
        assert len(s1) == 236 and 172 <= len(p1) <= 236
        assert set(p1) <= set(s1)
        assert set(uniform_grid(24, 3)) <= set(s1) and set(uniform_grid(24, 3)) <= set(p1)
        s2 = select_stage(_stage(static, 1), static, cur[s1], 24, rng.normal(size=(8, 236)))
        assert len(s2) == 21 and set(cur[s1][s2]) <= set(s1)


def test_score_shape_mismatch_is_an_input_error():
    from feather.errors import InputError

    c = PruneConfig()
    with pytest.raises(InputError, match=r"expected score logits \[H, 576\]"):
        select_stage(c.stages[0], c, np.arange(576), 24, np.zeros((8, 575)))


def test_sequence_keep_index_keeps_all_text_and_the_chosen_image_tokens():
    idx = sequence_keep_index(offset=3, n_image=5, keep_local=np.array([1, 4]), seq_len=10)
    assert idx.tolist() == [0, 1, 2, 4, 7, 8, 9]
