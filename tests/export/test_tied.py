"""A tied embedding stored once (feather.export.tied): a checkpoint whose LM head is its embedding
matrix, with a vocabulary whose head is larger than a decoder layer (tests.checkpoints.TIED_BIG_VOCAB,
4,096 x 64), exports one copy of the matrix that the embed graph and the last segment both read;
the chain still equals transformers' own generate (unpruned) and the reference (FEATHER), and a
quantized export keeps the one copy while its head stays float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from feather.config import PruneConfig
from feather.export import export
from feather.export.tied import SHARED_FILE
from feather.manifest import load_manifest
from feather.reference import Reference
from feather.runtime import Pipeline
from tests.checkpoints import TIED_BIG_VOCAB, build_tied_llava
from tests.hf_reference import hf_tokens

PROMPT = "What is in the image?"
N = 10
V, D = TIED_BIG_VOCAB.vocab_size, TIED_BIG_VOCAB.text.hidden


@pytest.fixture(scope="module")
def tied_path(tmp_path_factory):
    return build_tied_llava(tmp_path_factory.mktemp("tied-llava"))


@pytest.fixture(scope="module")
def tied_exports(tied_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("tied-exports")
    return {name: export(model=str(tied_path), config=config, output=out / name, quiet=True)
            for name, config in (("none", PruneConfig(criterion="none")), ("feather", PruneConfig()))}


def _matrices(folder):
    """(graph file, initializer name, stored where) of every V x d or d x V initializer."""
    found = []
    for graph in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(graph), load_external_data=False)
        for init in model.graph.initializer:
            if sorted(init.dims) == sorted([V, D]):
                where = ({e.key: e.value for e in init.external_data}.get("location")
                         if init.data_location == TensorProto.EXTERNAL else "inline")
                found.append((graph.name, init.name, where))
    return found


def test_the_head_is_larger_than_a_layer_and_tied(tied_path):
    import json

    cfg = json.loads((tied_path / "config.json").read_text())
    t = cfg["text_config"]
    assert t["vocab_size"] == V and cfg.get("tie_word_embeddings", t.get("tie_word_embeddings"))
    layer = 4 * D * D + 3 * D * t["intermediate_size"]  # attention (q, k, v, o at most d x d) + MLP
    assert V * D > 4 * layer


@pytest.mark.parametrize("name", ["none", "feather"])
def test_the_tied_matrix_is_stored_once(tied_exports, name):
    folder = tied_exports[name]
    m = load_manifest(folder)
    last = m.segments[-1].file
    stored = _matrices(folder)
    assert sorted(g for g, _, _ in stored) == ["embed.onnx", last]  # both graphs use it ...
    assert {where for _, _, where in stored} == {SHARED_FILE}  # ... from one file
    assert (folder / SHARED_FILE).stat().st_size == V * D * 4  # fp32, once
    assert SHARED_FILE in m.files  # hashed like any file of the folder
    assert not list(folder.glob("*.onnx.data"))  # no graph data file that could hold a second copy
    embed = onnx.load(str(folder / "embed.onnx"), load_external_data=False)
    assert [n.op_type for n in embed.graph.node] == ["Gather", "Transpose"]  # a column gather of E^T


def test_unpruned_chain_equals_hf_generate(tied_exports, tied_path, sample_image):
    chain = Pipeline.load(tied_exports["none"]).generate(sample_image, PROMPT, max_new_tokens=N)
    hf = hf_tokens(tied_path, sample_image, PROMPT, N)
    assert len(set(hf)) >= 4 and chain.tokens == hf


def test_feather_chain_equals_the_reference(tied_exports, tied_path, sample_image):
    chain = Pipeline.load(tied_exports["feather"]).generate(sample_image, PROMPT, max_new_tokens=N)
    ref = Reference.load(str(tied_path), PruneConfig()).generate(sample_image, PROMPT, max_new_tokens=N)
    assert chain.stages == ref.stages and chain.tokens == ref.tokens


def test_embeddings_equal_the_checkpoints_rows(tied_exports, tied_path):
    import onnxruntime as ort
    from safetensors.numpy import load_file

    weights = load_file(str(tied_path / "model.safetensors"))
    table = next(w for k, w in weights.items() if k.endswith("embed_tokens.weight"))
    ids = np.array([[0, 5, 511, 4095, 17]], dtype=np.int64)
    sess = ort.InferenceSession(str(tied_exports["feather"] / "embed.onnx"), providers=["CPUExecutionProvider"])
    (rows,) = sess.run(None, {"input_ids": ids})
    assert rows.shape == (1, 5, D) and np.array_equal(rows[0], table[ids[0]])


def test_a_quantized_export_keeps_one_copy(tied_exports, tmp_path):
    """With the head left float (int8 quantizes it by default), it points at the one shared file."""
    from feather.calibration import quantize

    done = quantize(tied_exports["feather"], method="int8", output=tmp_path / "q", quiet=True,
                    quantize_lm_head=False)
    folder = done.folder
    stored = _matrices(folder)
    assert {where for _, _, where in stored} == {SHARED_FILE}, stored  # the float head points at the one file
    assert len(stored) == 2 and (folder / SHARED_FILE).stat().st_size == V * D * 4
    assert done.report.ok
    res = Pipeline.load(folder).generate(np.zeros((32, 32, 3), np.uint8), PROMPT, max_new_tokens=3)
    assert len(res.tokens) == 3


def test_a_quantized_head_has_its_own_weight_and_the_embed_keeps_the_shared_file(tied_exports, tmp_path):
    from feather.calibration import quantize

    done = quantize(tied_exports["feather"], method="int8", output=tmp_path / "q", quiet=True)
    assert done.report.ok
    stored = _matrices(done.folder)
    shared = [graph for graph, _, where in stored if where == SHARED_FILE]
    assert shared == ["embed.onnx"] and len(stored) == 2, stored  # the embed's float matrix once, the head's own
    assert (done.folder / SHARED_FILE).stat().st_size == V * D * 4
