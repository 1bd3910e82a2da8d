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
