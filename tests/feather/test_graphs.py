"""The graph I/O contract (``feather.manifest.graphs``) and the export plan's counts
(``export.chain.plan_segments`` over ``feather.layout``), without a checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from feather import layout
from feather.config import CRITERIA, PruneConfig
from feather.errors import InputError
from feather.export.chain import plan_segments
from feather.manifest import AxisRange, Dims, graphs
from feather.rules import RULES, Params

DIMS = Dims(num_layers=4, hidden=32, heads=4, kv_heads=2, head_dim=8, vocab=10, intermediate=64, n_image=576,
            grid=24, vision_hidden=16)
SEQ = AxisRange(1, 64, 128)


def test_a_segment_names_its_tensors_in_graph_order():
    spec = graphs.segment_spec("s.onnx", (2, 4), final=False, score=True, seq=SEQ, dtype="float32")
    assert graphs.input_names(spec) == ["hidden", "keep_index", "position_ids", "past_len", "cache.2.key",
                                        "cache.2.value", "cache.3.key", "cache.3.value"]
    assert graphs.output_names(spec) == ["hidden_out", "new.2.key", "new.2.value", "new.3.key", "new.3.value", "score"]
    last = graphs.segment_spec("t.onnx", (3, 4), final=True, score=False, seq=SEQ, dtype="float16")
    assert graphs.output_names(last) == ["logits", "new.3.key", "new.3.value"]
    assert graphs.dynamic_axes(last) == {"hidden": {1: "seq_in"}, "keep_index": {0: "seq"}, "position_ids": {1: "seq"},
                                         "cache.3.key": {2: "cache"}, "cache.3.value": {2: "cache"},
                                         "new.3.key": {2: "seq"}, "new.3.value": {2: "seq"}}
    assert (last.axes, last.layers, last.dtype) == ({"seq": SEQ, "cache": SEQ}, [3, 4], "float16")


def test_role_shapes_follow_the_names_the_manifest_gives():
    spec = graphs.segment_spec("s.onnx", (2, 3), final=False, score=False, seq=SEQ, dtype="float32")
    assert list(graphs.role_shapes(spec, DIMS, 5, 7).items()) == [
        ("hidden", (1, 5, 32)), ("keep_index", (5,)), ("position_ids", (1, 5)),
        ("cache.2.key", (1, 2, 7, 8)), ("cache.2.value", (1, 2, 7, 8))]
    renamed = dataclasses.replace(spec, inputs={**spec.inputs, "keep_index": "gather"},
                                  kv=dataclasses.replace(spec.kv, cache_key="k%d"))
    assert list(graphs.role_shapes(renamed, DIMS, 1, 9)) == ["hidden", "gather", "position_ids", "k2", "cache.2.value"]
    assert graphs.role_shapes(graphs.embed_spec("e.onnx", SEQ, "float32"), DIMS, 640, 1) == {"input_ids": (1, 640)}
    assert graphs.role_shapes(graphs.vision_spec("v.onnx", "float32"), DIMS, 640, 640) == {}


def test_the_layout_counts_equal_the_rules_own_on_a_square_grid():
    """Square grid: the counts the layout finds by running the rules are ``Rule.keep``'s, in both
    modes (paper mode's counts are the static ones: the bound)."""
    for name, crit in CRITERIA.items():
        if not crit.rules:
            continue
        for mode in ("static", "paper"):
            k = crit.fixed_k or ((8, 16) if len(crit.rules) == 2 else (4,))
            config = PruneConfig(criterion=name, K=None if crit.fixed_k else k, mode=mode)
            want = config.keep_counts(576, 24)
            assert layout.square(24).static_counts([s.impl for s in config.stages], config.params) == want, name


def test_a_tiled_plan_counts_the_virtual_grid_and_the_newlines():
    """LLaVA-NeXT at 640 x 480: 24 x 24 base, 30 lines of 40 tile features + 30 newlines. The
    uniform grid (stride 3) keeps 8 x 8 on the base and 10 x 14 on the tiles (rows 24, 27, .. 51
    of the virtual grid, cols 0, 3, .. 39): 204; a segment after it holds those + the 30 newlines.
    The rule keeps that count in paper mode too (``variable_in_paper_mode`` is False)."""
    lay = layout.tiled(24, 30, 40, 3)
    for mode in ("static", "paper"):
        plans, keep = plan_segments(PruneConfig(criterion="uniform", K=(2,), mode=mode), lay, 4)
        assert keep == [204] and [p.n_image_in for p in plans] == [1806, 234]
    plans, keep = plan_segments(PruneConfig(criterion="feather", K=(1, 2), mode="paper"), lay, 4)
    assert [p.n_image_in for p in plans] == [1806, None, None]  # ensemble's paper count depends on the scores


def test_apply_stage_gathers_text_and_the_kept_tokens():
    """A 3 x 3 image at offset 2 in a 13-token sequence; the first stage kept 5 of the 9. A top-k
    at rho = 0.4 keeps floor(5 * 0.4) = 2 of the live 5, by the score columns of those 5."""
    lay = layout.square(3)
    live = np.array([0, 2, 4, 6, 8])
    pos = np.array([0, 1, 2, 4, 6, 8, 10, 11, 12, 13, 14, 15, 16])  # tokens 3, 5, 7, 9 already gone
    score = np.full((2, 13), -5.0, dtype=np.float32)
    score[:, 3] = score[:, 5] = 4.0  # the live tokens 2 and 6 (positions 4 and 8)
    score[:, 0] = 9.0  # a text column: never ranked
    keep, kept = lay.apply_stage(RULES["topk_norope"], live, pos, 2, Params(rho=0.4, stride=1), score, None, 5)
    assert kept.tolist() == [2, 6]
    assert keep.tolist() == [0, 1, 3, 5, 7, 8, 9, 10, 11, 12]  # 2 text, image 2 and 6, then the 6 text after
    with pytest.raises(InputError, match=r"^stage at layer 5: expected score logits \[H, 5\], got None$"):
        lay.apply_stage(RULES["topk_norope"], live, pos, 2, Params(rho=0.4, stride=1), None, None, 5)
