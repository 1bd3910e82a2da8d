"""feather-export: the files, manifest, tensor names, axes and operators of real exports."""

from __future__ import annotations

import json
import math
import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from feather.errors import ManifestError, ValidationError
from feather.export import onnx_io
from feather.manifest import MANIFEST_NAME, load_manifest, parse


def _stages(folder) -> list[tuple]:
    return [(s.layer, s.rule, s.rope, s.keep) for s in load_manifest(folder).pruning.stages]


def _layers(folder) -> list[list[int]]:
    return [s.layers for s in load_manifest(folder).segments]


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _graph(folder, name: str) -> onnx.ModelProto:
    return onnx.load(str(folder / name), load_external_data=False)


def test_defaults_write_every_file(export_feather):
    names = {"vision.onnx", "embed.onnx", "segment0.onnx", "segment1.onnx", "segment2.onnx", "tokenizer.json",
             MANIFEST_NAME}
    assert names == {p.name for p in export_feather.iterdir()}
    assert not list(export_feather.parent.glob("*.partial-*"))


def test_defaults_manifest_plan(export_feather):
    m = load_manifest(export_feather)
    assert _stages(export_feather) == [(8, "ensemble", False, 236), (16, "topk_norope2", False, 21)]
    assert (m.pruning.criterion, m.pruning.K, m.pruning.ratio, m.pruning.stride) == ("feather", [8, 16], 0.7, 3)
    assert _layers(export_feather) == [[0, 8], [8, 16], [16, 24]]
    assert [s.n_image_in for s in m.segments] == [576, 236, 21]
    assert [s.file for s in m.segments] == ["segment0.onnx", "segment1.onnx", "segment2.onnx"]
    assert [set(s.outputs) for s in m.segments] == [{"hidden", "score"}, {"hidden", "score"}, {"logits"}]
    assert (m.dims.num_layers, m.dims.n_image, m.dims.grid, m.precision, m.max_seq) == (24, 576, 24, "fp32", 1024)


def _expected_io(start: int, end: int, final: bool, score: bool) -> tuple[list[str], list[str]]:
    inputs = ["hidden", "keep_index", "position_ids", "past_len"]
    outputs = ["logits" if final else "hidden_out"]
    for i in range(start, end):
        inputs += [f"cache.{i}.key", f"cache.{i}.value"]
        outputs += [f"new.{i}.key", f"new.{i}.value"]
    return inputs, outputs + (["score"] if score else [])


def test_segment_tensor_names_follow_the_templates(export_feather):
    for seg in load_manifest(export_feather).segments:
        model = _graph(export_feather, seg.file)
        inputs, outputs = _expected_io(*seg.layers, "logits" in seg.outputs, "score" in seg.outputs)
        assert [v.name for v in model.graph.input] == inputs, seg.file
        assert [v.name for v in model.graph.output] == outputs, seg.file
        assert set(seg.outputs.values()) <= set(outputs) and set(seg.inputs.values()) <= set(inputs)
        assert seg.kv.names(seg.layers[0]) == tuple(inputs[4:6] + outputs[1:3])


def test_no_generated_tensor_names_in_any_graph_interface(export_feather):
    for path in sorted(export_feather.glob("*.onnx")):
        graph = _graph(export_feather, path.name).graph
        names = [v.name for v in [*graph.input, *graph.output]]
        assert names and not [n for n in names if "onnx::" in n or "::" in n or n[:1].isdigit()], path.name


def test_dynamic_axes_are_symbolic(export_feather):
    model = _graph(export_feather, "segment1.onnx")
    ins = {v.name: _dims(v) for v in model.graph.input}
    outs = {v.name: _dims(v) for v in model.graph.output}
    assert ins["hidden"] == [1, "seq_in", 64]
    assert ins["keep_index"] == ["seq"] and ins["position_ids"] == [1, "seq"]
    assert ins["cache.8.key"] == ins["cache.15.value"] == [1, 2, "cache", 16]
    assert ins["past_len"] == [1]
    assert outs["new.8.key"] == outs["new.15.value"] == [1, 2, "seq", 16]
    assert outs["hidden_out"][1:] == ["seq", 64] and outs["score"][-1] == "seq"
    assert _dims(_graph(export_feather, "embed.onnx").graph.input[0]) == [1, "seq"]
    assert _dims(_graph(export_feather, "vision.onnx").graph.output[0]) == [1, 576, 64]


def test_one_stage_at_k8(export_k8):
    m = load_manifest(export_k8)
    assert _layers(export_k8) == [[0, 8], [8, 24]]
    assert [s.n_image_in for s in m.segments] == [576, 236]
    assert _stages(export_k8) == [(8, "ensemble", False, 236)]
    assert [set(s.outputs) for s in m.segments] == [{"hidden", "score"}, {"logits"}]


def test_unpruned_chain_is_one_segment(export_none):
    m = load_manifest(export_none)
    assert _layers(export_none) == [[0, 24]] and m.pruning.stages == [] and m.pruning.K == []
    assert set(m.segments[0].outputs) == {"logits"} and m.segments[0].n_image_in == 576
    outputs = [v.name for v in _graph(export_none, "segment0.onnx").graph.output]
    assert "score" not in outputs and outputs[0] == "logits" and len(outputs) == 1 + 2 * 24
    assert not (export_none / "segment1.onnx").exists()


def test_fastv_scores_with_rope(export_original):
    m = load_manifest(export_original)
    assert _layers(export_original) == [[0, 3], [3, 24]]
    assert _stages(export_original) == [(3, "topk_rope", True, math.floor(576 * 0.3))]
    assert "score" in m.segments[0].outputs and "score" not in m.segments[1].outputs
    assert [s.n_image_in for s in m.segments] == [576, 172]


def test_qwen_geometry_keep_counts_from_the_spec(export_qwen_feather):
    m = load_manifest(export_qwen_feather)
    stage1 = math.floor(196 * 0.3) + math.ceil(14 / 3) ** 2  # 58 + 25: the top-k united with the grid
    stage2 = math.floor(stage1 * 0.3 * 0.3)  # rho^2 of what stage 1 kept
    assert (stage1, stage2) == (83, 7)
    assert (m.dims.num_layers, m.dims.n_image, m.dims.grid) == (20, 196, 14)
    assert _stages(export_qwen_feather) == [(4, "ensemble", False, 83), (12, "topk_norope2", False, 7)]
    assert _layers(export_qwen_feather) == [[0, 4], [4, 12], [12, 20]]
    assert [s.n_image_in for s in m.segments] == [196, 83, 7]
    assert _dims(_graph(export_qwen_feather, "vision.onnx").graph.output[0]) == [1, 196, 96]


def test_manifest_round_trip_and_hashes(export_feather):
    m = load_manifest(export_feather, verify=True)
    data = m.to_json()
    assert parse(json.loads(json.dumps(data))) == m
    assert data == json.loads((export_feather / MANIFEST_NAME).read_text())
    on_disk = {p.name for p in export_feather.iterdir() if p.name != MANIFEST_NAME}
    assert set(m.files) == on_disk
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in m.files.values())


def test_tampered_graph_is_refused(export_feather, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export_feather, copy)
    load_manifest(copy, verify=True)  # the intact copy passes
    with open(copy / "segment1.onnx", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ManifestError, match=r"segment1\.onnx: sha256 mismatch"):
        load_manifest(copy, verify=True)
    load_manifest(copy, verify=False)  # the JSON itself is still valid


def _set(data: dict, path: list, value) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


@pytest.mark.parametrize("path, value, message", [
    (["pruning", "stages", 1, "extra"], 1, r"pruning\.stages\[1\]\.extra: unknown key"),
    (["segments", 1, "inputs", "hidden"], 3, r"segments\[1\]\.inputs\.hidden: expected str, got int"),
    (["dims", "hidden"], "64", r"dims\.hidden: expected int, got str"),
    (["schema_version"], 3, r"schema_version: 3 is newer than this feather-vlm reads"),
])
def test_edited_manifest_is_refused_with_its_path(export_feather, tmp_path, path, value, message):
    data = json.loads((export_feather / MANIFEST_NAME).read_text())
    _set(data, path, value)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path, verify=False)


@pytest.mark.parametrize("fixture", ["export_feather", "export_none", "export_original", "export_qwen_feather"])
def test_every_graph_uses_allowed_operators_only(fixture, request):
    folder = request.getfixturevalue(fixture)
    for path in sorted(folder.glob("*.onnx")):
        ops = onnx_io.check_graph(path)
        assert ops and ops <= onnx_io.ALLOWED_OPS, (path.name, sorted(ops - onnx_io.ALLOWED_OPS))
        assert not {"Unique", "NonZero", "Loop", "If", "Scan"} & ops


def test_unique_operator_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    node = helper.make_node("Unique", ["x"], ["y"], sorted=1)
    model = helper.make_model(helper.make_graph([node], "uniq", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)  # a valid ONNX model: only the allow-list refuses it
    path = tmp_path / "uniq.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValidationError, match=r"uniq\.onnx: operators Unique are not allowed"):
        onnx_io.check_graph(path)


def _one_node_graph(tmp_path, domain: str, op: str):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([helper.make_node(op, ["x"], ["y"], domain=domain)], "g", [x], [y]),
                              opset_imports=opsets)
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(path))
    return path


def test_allow_list_is_per_target(tmp_path, export_feather):
    """Portable graphs (TensorRT) take standard ops only; the onnxruntime target may use ONNX
    Runtime's com.microsoft operators. The default export is portable and says so."""
    assert load_manifest(export_feather).target == "portable"
    fused = _one_node_graph(tmp_path, "com.microsoft", "FusedGelu")
    with pytest.raises(ValidationError, match=r"operators com\.microsoft\.FusedGelu are not allowed for target "
                                              r"portable"):
        onnx_io.check_graph(fused, "portable")
    with pytest.raises(ValidationError, match=r"operators com\.foo\.Relu are not allowed for target onnxruntime"):
        onnx_io.check_graph(_one_node_graph(tmp_path, "com.foo", "Relu"), "onnxruntime")
    with pytest.raises(ValidationError, match=r"target: got 'tpu'"):
        onnx_io.check_graph(fused, "tpu")


def test_segments_never_concatenate_or_copy_the_cache(export_feather, export_qwen_feather):
    """The cache inputs feed only matmuls (through a transpose for K): no Concat, Expand,
    Tile or Reshape ever takes a cache tensor, so a decode step never copies a whole cache."""
    for folder in (export_feather, export_qwen_feather):
        for seg in load_manifest(folder).segments:
            graph = _graph(folder, seg.file).graph
            caches = {n for layer in range(*seg.layers) for n in seg.kv.names(layer)[:2]}
            consumers = {}
            for node in graph.node:
                for name in node.input:
                    if name in caches:
                        consumers.setdefault(node.op_type, 0)
                        consumers[node.op_type] += 1
            assert set(consumers) <= {"MatMul", "Transpose", "Shape"}, (seg.file, consumers)
            transposed = {o for node in graph.node if node.op_type == "Transpose" and node.input[0] in caches
                          for o in node.output}
            for node in graph.node:  # a transposed cache feeds a MatMul and nothing else
                assert not (set(node.input) & transposed) or node.op_type == "MatMul", (seg.file, node.op_type)
            assert not [n for n in graph.node if n.op_type == "Concat" and set(n.input) & (caches | transposed)]


def test_tiny_export_is_small(export_feather):
    total = sum(p.stat().st_size for p in export_feather.iterdir())
    graphs = sum(p.stat().st_size for p in export_feather.glob("*.onnx"))
    assert 1_000_000 < graphs <= total < 10_000_000
