"""--max-graph-layers: long segments cut into several graphs, same answers."""

import pytest

from feather.config import PruneConfig
from feather.errors import ConfigError
from feather.export import export
from feather.export.chain import plan_segments
from feather.layout import square
from feather.manifest import load_manifest


def test_plan_cuts_long_runs_but_keeps_stage_boundaries():
    plans, keep = plan_segments(PruneConfig(), square(24), 24, max_graph_layers=5)
    assert keep == [236, 21]
    assert [(p.start, p.end) for p in plans] == [(0, 5), (5, 8), (8, 13), (13, 16), (16, 21), (21, 24)]
    assert [p.score_rope for p in plans] == [None, False, None, False, None, None]
    assert [p.stage.layer if p.stage else None for p in plans] == [None, None, 8, None, 16, None]
    assert [p.n_image_in for p in plans] == [576, 576, 236, 236, 21, 21]
    assert [p.final for p in plans] == [False] * 5 + [True]


def test_split_chain_answers_like_the_reference(tiny_path, tmp_path, sample_image):
    from feather.reference import Reference
    from feather.runtime import Pipeline

    out = export(model="tiny", config=PruneConfig(), output=tmp_path / "split", quiet=True, max_graph_layers=5)
    assert [s.layers for s in load_manifest(out).segments] == [[0, 5], [5, 8], [8, 13], [13, 16], [16, 21], [21, 24]]
    chain = Pipeline.load(out).generate(sample_image, "What is in the image?", max_new_tokens=8)
    ref = Reference.load(str(tiny_path), PruneConfig()).generate(sample_image, "What is in the image?", 8)
    assert chain.tokens == ref.tokens and chain.stages == ref.stages


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_bad_max_graph_layers_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="max_graph_layers: got"):
        export(model="tiny", config=PruneConfig(), output=tmp_path / "x", max_graph_layers=bad)
