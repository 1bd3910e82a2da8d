"""Weights streamed per graph (feather.hf.stream): the model read through the checkpoint's
safetensors shards holds exactly the weights transformers' ``from_pretrained`` loads, under the
hub's pre-v5 key names and under the model's own; an export holds one graph's weights at a time
(never the model), and its chain still equals the reference loaded whole by ``from_pretrained``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from feather.cli import SAMPLE_IMAGE
from feather.config import PruneConfig
from feather.errors import ModelError
from feather.export import api as export_api
from feather.hf import checkpoint
from feather.hf import stream as stream_mod
from feather.runtime import Pipeline, check


def _state(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def whole():
    net, _ = checkpoint.load("tiny", torch.float32)
    return _state(net)


def _streamed_state(model: str) -> dict[str, torch.Tensor]:
    source, why = stream_mod.open_streamed(model, torch.float32)
    assert source is not None, why
    assert all(p.is_meta for p in source.net.parameters())
    with source.weights(source.net):
        state = _state(source.net)
    assert all(p.is_meta for p in source.net.parameters()), "weights must go back to meta after the block"
    return state


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ from from_pretrained's, e.g. {bad[0]}"


def test_streamed_weights_equal_from_pretrained_under_hub_key_names(whole):
    # the tiny checkpoint is saved by save_pretrained, which writes the pre-v5 names the hub uses
    names = json.dumps(sorted(_keys(checkpoint.resolve("tiny"))))
    assert "language_model.model.layers.0." in names
    _assert_same(_streamed_state("tiny"), whole)


def test_streamed_weights_equal_from_pretrained_under_model_key_names(whole, tmp_path):
    # sharded, under the model's own names (as scripts/real_size_7b.py writes its 7B checkpoint)
    folder = _copy_config(tmp_path / "own-names")
    names = sorted(whole)
    half = len(names) // 2
    shards = {"model-00001.safetensors": names[:half], "model-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: whole[k].contiguous() for k in keys}, str(folder / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model.language_model.layers.0.mlp.up_proj.weight" in index["weight_map"]
    _assert_same(_streamed_state(str(folder)), whole)


def test_a_missing_weight_is_refused_in_one_line(whole, tmp_path):
    folder = _copy_config(tmp_path / "missing")
    dropped = "model.language_model.layers.3.mlp.down_proj.weight"
    save_file({k: v.contiguous() for k, v in whole.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match=r"no weight for model\.language_model\.layers\.3\.mlp\.down_proj\.weight; "):
        stream_mod.open_streamed(str(folder), torch.float32)


def test_a_shard_outside_the_folder_is_refused(whole, tmp_path):
    folder = _copy_config(tmp_path / "escape")
    save_file({k: v.contiguous() for k, v in whole.items()}, str(tmp_path / "outside.safetensors"))
    index = {"metadata": {}, "weight_map": dict.fromkeys(whole, "../outside.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"shard '\.\./outside\.safetensors' is not a file in the checkpoint folder"):
        stream_mod.open_streamed(str(folder), torch.float32)


def test_the_export_holds_one_graph_at_a_time_and_equals_the_reference(whole, tmp_path, monkeypatch):
    opened = []
    real = stream_mod.open_streamed

    def spy(model, dtype):
        source, why = real(model, dtype)
        opened.append(source)
        return source, why

    monkeypatch.setattr(stream_mod, "open_streamed", spy)
    # 4-layer graphs: the largest graph (the last segment, with the head) is a small part of the model
    out = export_api.export(model="tiny", config=PruneConfig(), output=tmp_path / "x", quiet=True,
                            max_graph_layers=4)
    (source,) = opened
    model_bytes = sum(v.numel() * v.element_size() for v in whole.values())
    assert 0 < source.loaded_bytes < 0.35 * model_bytes, (source.loaded_bytes, model_bytes)
    assert all(p.is_meta for p in source.net.parameters())
    chain, report = check.check(Pipeline.load(out), SAMPLE_IMAGE, "What is in this image?", 8)
    assert report.ok and report.tokens_agree == 8, report.lines()


def _keys(folder: str) -> list[str]:
    from safetensors import safe_open

    keys = []
    for file in sorted(__import__("pathlib").Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            keys += list(f.keys())
    return keys


def _copy_config(folder):
    """The tiny checkpoint's folder without its weights."""
    src = __import__("pathlib").Path(checkpoint.resolve("tiny"))
    folder.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, folder / f.name)
    return folder


def test_an_export_that_will_not_fit_says_which_max_graph_layers_would(whole, tmp_path, monkeypatch, capsys):
    from feather.runtime import cpu

    size = lambda prefix: 4 * sum(v.numel() for k, v in whole.items() if k.startswith(prefix))  # noqa: E731  fp32
    layer = size("model.language_model.layers.0.")
    tail = size("model.language_model.norm.") + size("lm_head.")
    others = max(size("model.vision_tower.") + size("model.multi_modal_projector."),
                 size("model.language_model.embed_tokens."))
    n = next(n for n in range(1, 9) if n * layer + tail > others)  # the vision graph stays smaller
    assert n < 8
    available = int(export_api.EXPORT_FACTOR * (n * layer + tail)) + 1
    monkeypatch.setattr(cpu, "available_memory", lambda: available)
    export_api.export(model="tiny", config=PruneConfig(), output=tmp_path / "x", quiet=True)
    err = capsys.readouterr().err
    # the default cut (K 8 16 on 24 layers: the last segment has 8 layers and the head)
    assert f"warning: the largest graph (segment2.onnx, {(8 * layer + tail) / 1e9:.1f} GB of weights)" in err
    assert err.strip().endswith(f"; --max-graph-layers {n} would fit"), err
    monkeypatch.setattr(cpu, "available_memory", lambda: int(export_api.EXPORT_FACTOR * (8 * layer + tail)) + 1)
    export_api.export(model="tiny", config=PruneConfig(), output=tmp_path / "y", quiet=True)
    assert "warning" not in capsys.readouterr().err


def test_a_tied_head_streams_as_the_embedding_itself(tmp_path):
    from tests.checkpoints import build_tied_llava

    path = str(build_tied_llava(tmp_path / "tied"))
    source, why = stream_mod.open_streamed(path, torch.float32)
    assert source is not None, why
    net = source.net
    assert net.lm_head.weight is net.model.language_model.embed_tokens.weight
    ref, _ = checkpoint.load(path, torch.float32)
    with source.weights(net.lm_head):  # the head alone: its one matrix is the embedding's
        assert not net.model.language_model.embed_tokens.weight.is_meta
        assert torch.equal(net.lm_head.weight, ref.model.language_model.embed_tokens.weight)
