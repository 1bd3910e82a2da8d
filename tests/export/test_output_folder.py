"""The output folder: missing parents are created, and removed again when export fails."""

import pytest

from feather.config import PruneConfig
from feather.errors import ValidationError
from feather.export import api, export


def test_missing_parents_are_created(tiny_path, tmp_path):
    out = export(model="tiny", config=PruneConfig(criterion="none"), output=tmp_path / "a" / "b" / "c", quiet=True)
    assert (out / "feather.json").is_file() and out == (tmp_path / "a" / "b" / "c").resolve()


def test_a_failed_export_leaves_nothing(tiny_path, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValidationError("segment0.onnx [prefill] hidden_out: max abs diff 1 > 1e-4")

    monkeypatch.setattr(api.validate, "raise_failures", lambda failures: broken())
    with pytest.raises(ValidationError):
        export(model="tiny", config=PruneConfig(), output=tmp_path / "new" / "out", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_external_data_graphs_load_and_run(tiny_path, tmp_path, monkeypatch, sample_image):
    """The >2 GB path, forced on the tiny model: every graph's weights in one .data file
    beside it, hashed in the manifest, and the chain still answers like the reference."""
    from feather.manifest import load_manifest
    from feather.reference import Reference
    from feather.runtime import Pipeline

    monkeypatch.setattr(api.onnx_io, "EXTERNAL_DATA_BYTES", 0)
    out = export(model="tiny", config=PruneConfig(), output=tmp_path / "ext", quiet=True)
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.endswith(".data")] == [
        "embed.onnx.data", "segment0.onnx.data", "segment1.onnx.data", "segment2.onnx.data", "vision.onnx.data"]
    assert not [n for n in names if n.startswith(".work")]
    assert "segment1.onnx.data" in load_manifest(out).files
    chain = Pipeline.load(out).generate(sample_image, "What is in the image?", max_new_tokens=6)
    ref = Reference.load(str(tiny_path), PruneConfig()).generate(sample_image, "What is in the image?", 6)
    assert chain.tokens == ref.tokens and chain.stages == ref.stages
