"""--max-seq: axis ranges stay ordered below the profile's usual opt (640), and values that
cannot hold the image or exceed the model's positions are refused before any graph is written."""

from __future__ import annotations

import pytest

from feather.config import PruneConfig
from feather.errors import ConfigError
from feather.export import export
from feather.manifest import load_manifest
from feather.runtime import Pipeline


def test_small_max_seq_writes_ordered_axes_and_runs(tiny_path, tmp_path, sample_image):
    out = export(model="tiny", config=PruneConfig(criterion="none"), output=tmp_path / "short", max_seq=620,
                 quiet=True)
    m = load_manifest(out)
    for graph in (m.embed, *m.segments):
        for axis in graph.axes.values():
            assert (axis.min, axis.opt, axis.max) == (1, 620, 620)
    result = Pipeline.load(out).generate(sample_image, "What is it?", max_new_tokens=4)
    assert len(result.tokens) == 4


@pytest.mark.parametrize("max_seq, message", [
    (300, r"max_seq: got 300, but this model's 576 image tokens and a prompt need at least 592"),
    (8192, r"max_seq: got 8192, beyond the model's max_position_embeddings 4096"),
])
def test_max_seq_that_cannot_work_is_refused(tiny_path, tmp_path, max_seq, message):
    with pytest.raises(ConfigError, match=message):
        export(model="tiny", output=tmp_path / "out", max_seq=max_seq, quiet=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
