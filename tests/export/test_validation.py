"""validate_folder: an export re-checked against its checkpoint catches one changed weight."""

from __future__ import annotations

import shutil

import onnx
import pytest
from onnx import numpy_helper

from feather.errors import ConfigError, ModelError, ValidationError
from feather.export.check import validate_folder
from feather.manifest import load_manifest


@pytest.fixture
def copy(export_feather, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(export_feather, out)
    return out


def _corrupt_down_proj(path, dims) -> str:
    """Add 1.0 to a few elements of the first MLP down_proj weight in ``path`` (the only
    initializer shaped [intermediate, hidden]: TorchScript stores Linear weights transposed)."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if list(init.dims) == [dims.intermediate, dims.hidden] and init.data_type == onnx.TensorProto.FLOAT:
            w = numpy_helper.to_array(init).copy()
            w[:8, :8] += 1.0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
            onnx.save(model, str(path))
            return init.name
    raise AssertionError(f"{path.name}: no down_proj weight found")


def test_intact_copy_passes(copy):
    validate_folder(copy)
    validate_folder(copy, model="tiny", precision_tolerance=1e-5)  # explicit checkpoint, tighter bound


def test_one_changed_weight_names_its_graph_only(copy):
    manifest = load_manifest(copy)
    _corrupt_down_proj(copy / "segment1.onnx", manifest.dims)
    with pytest.raises(ValidationError) as err:
        validate_folder(copy)
    message = str(err.value)
    assert "segment1.onnx" in message and "hidden_out" in message and "max abs diff" in message
    assert "segment0.onnx" not in message and "segment2.onnx" not in message
    assert "vision.onnx" not in message and "embed.onnx" not in message
    # the first down_proj is layer 8's: its own KV comes before its MLP, every later layer's moves
    assert "new.8.key" not in message and "new.9.key" in message and "new.15.value" in message
    validate_folder(copy, precision_tolerance=1e6)  # a loose enough bound accepts the change


def test_wrong_checkpoint_and_bad_tolerance(copy, qwen_path):
    with pytest.raises(ModelError, match=r"num_layers is 20, but feather.json dims.num_layers is 24"):
        validate_folder(copy, model=str(qwen_path))
    with pytest.raises(ConfigError, match="precision_tolerance"):
        validate_folder(copy, precision_tolerance="int8")
    with pytest.raises(ConfigError, match="precision_tolerance"):
        validate_folder(copy, precision_tolerance=-1.0)
