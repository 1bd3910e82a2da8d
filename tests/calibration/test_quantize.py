"""feather-quantize on the tiny FEATHER export: capture, every method end to end, the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from feather.calibration import METHODS, evaluate
from feather.calibration.cli import main
from feather.export.onnx_io import check_graph
from feather.manifest import load_manifest, save_manifest
from feather.runtime import Pipeline
from tests.calibration.conftest import STEPS

ORT_OPS = {"int8": {"MatMulInteger", "DynamicQuantizeLinear"}, "int4": {"MatMulNBits"}}


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_segment1_is_calibrated_on_the_pruned_sequence(captured, export_feather):
    """Segment 1's first op gathers keep_index: what it holds is text + kept image tokens, and its
    decode caches have exactly that many live rows (not the 602 of the unpruned prompt)."""
    m = load_manifest(export_feather)
    for i, result in enumerate(captured.results):
        prompt = result.prompt_tokens
        kept = len(result.stages[0]["kept"])
        pruned = prompt - m.dims.n_image + kept
        assert kept == m.pruning.stages[0].keep == 236 and pruned < prompt
        seg1 = [r for r in captured.records["segment1.onnx"] if r.phase == "prefill"][i].feeds
        assert seg1["hidden"].shape == (1, prompt, 64) and seg1["keep_index"].shape == (pruned,)
        assert seg1["position_ids"].shape == (1, pruned)
        seg2 = [r for r in captured.records["segment2.onnx"] if r.phase == "prefill"][i].feeds
        assert seg2["hidden"].shape == (1, pruned, 64)
        decode = [r for r in captured.records["segment1.onnx"] if r.phase == "decode"][2 * i : 2 * i + 2]
        assert [int(r.feeds["past_len"][0]) for r in decode] == [pruned, pruned + 1]
        assert [r.feeds["cache.8.key"].shape[2] for r in decode] == [pruned, pruned + 1]


def test_recorded_caches_are_copies(captured):
    """The runtime writes its cache buffers in place: the record of step 1 must not see step 2's row."""
    first, second = [r for r in captured.records["segment0.onnx"] if r.phase == "decode"][:2]
    a, b = first.feeds["cache.0.key"], second.feeds["cache.0.key"]
    assert b.shape[2] == a.shape[2] + 1
    np.testing.assert_array_equal(a, b[:, :, : a.shape[2]])
    assert np.abs(b[:, :, -1]).max() > 0 and not np.shares_memory(a, b)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_makes_an_export_folder_the_runtime_takes(method, quantized, export_feather, sample_image):
    done = quantized(method)
    how = METHODS[method]
    m = load_manifest(done.folder)  # verifies every sha256
    assert m.target == how.target and m.tolerance.logits_abs == how.logits_abs
    assert (m.vision.method, m.embed.method, m.vision.file) == ("float", "float", "vision.onnx")
    for seg in m.segments:
        assert (seg.method, seg.dtype, seg.decode_method) == (how.weights, "float32", how.decode_weights)
        assert (seg.decode_file is not None) == (how.decode_weights is not None)
        for file in filter(None, (seg.file, seg.decode_file)):
            ops = _ops(done.folder / file)
            assert "MatMul" in ops  # attention (activation x activation) stays float
            if how.target == "portable":
                check_graph(done.folder / file, "portable")  # QDQ only, no com.microsoft
                assert "DequantizeLinear" in ops and not ops & {"MatMulInteger", "MatMulNBits"}
            kind = seg.method if file == seg.file else seg.decode_method
            if kind in ORT_OPS:
                assert ORT_OPS[kind] <= ops
    result = Pipeline.load(done.folder).generate(sample_image, "What is in this image?", max_new_tokens=5)
    assert len(result.tokens) == 5 and [len(s["kept"]) for s in result.stages] == [236, 21]
    assert all(np.isfinite(step).all() for step in result.logits)


def test_the_lm_head_follows_the_method_and_the_tower_stays_float(quantized):
    """int8 and int8-int4 quantize the head by default (measured at real size, docs/quantization.md);
    int4 and the QDQ methods leave it float; the vision tower stays float unless asked."""
    for method, quantized_ends in (("int8", True), ("int8-int4", True), ("int4", False), ("int8-qdq", False)):
        graph = onnx.load(str(quantized(method).folder / "segment2.onnx"), load_external_data=False)
        head = [n for n in graph.graph.node if n.name == "/lm_head/MatMul"]
        assert (head == []) == quantized_ends, method  # a quantized head is a MatMulInteger / MatMulNBits node
        if not quantized_ends:
            assert head[0].op_type == "MatMul"
        assert "MatMulInteger" not in _ops(quantized(method).folder / "vision.onnx"), method
        assert load_manifest(quantized(method).folder).vision.method == "float"


def test_tensorrt_targets_use_zero_points_of_zero_and_their_opset(quantized):
    for method, opset, dtype in (("int8-qdq", 17, np.int8), ("int4-qdq", 21, None), ("fp8-qdq", 19, None)):
        model = onnx.load(str(quantized(method).folder / "segment0.onnx"))
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {opset}
        assert load_manifest(quantized(method).folder).opset == opset
        inits = {i.name: i for i in model.graph.initializer}
        zps = [n.input[2] for n in model.graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]]
        for name in zps:
            assert not np.any(numpy_helper.to_array(inits[name]).astype(np.float32)), name
        if dtype is not None:
            assert zps and all(numpy_helper.to_array(inits[z]).dtype == dtype for z in zps)


def test_int8_segments_stay_within_the_bound(quantized):
    report = quantized("int8").report
    assert report.ok and len(report.graphs) == 6  # 3 segments x (prefill, decode); the tower stays float
    assert 0 < report.max_rel_error <= METHODS["int8"].bound
    # tighter on the tiny model (width 64), and the same on every kind of CPU: 0.065 measured on
    # AVX-512 VNNI and on AVX2 (qemu Haswell, tests/calibration/test_every_cpu.py)
    assert report.max_rel_error <= 0.1
    assert all(g.cosine > 0.99 for g in report.graphs)
    assert [len(c.jaccard) for c in report.chains] == [2, 2]
    assert all(0.0 <= j <= 1.0 for c in report.chains for j in c.jaccard)


def test_int8_int4_reports_each_phase_on_its_own_graph(quantized):
    report = quantized("int8-int4").report
    files = {(g.file, g.method, g.phase) for g in report.graphs}
    assert ("segment0.onnx", "int8", "prefill") in files and ("segment0.int4.onnx", "int4", "decode") in files
    int8 = {(g.file, g.phase): g.rel_error for g in quantized("int8").report.graphs}
    assert [g.rel_error for g in report.graphs if g.phase == "prefill"] == \
        [int8[(g.file, "prefill")] for g in report.graphs if g.phase == "prefill"]


def _scale_weights(folder, factor: float) -> None:
    """Multiply every weight scale of the int8 segments by ``factor`` (a broken quantization)."""
    m = load_manifest(folder)
    for seg in m.segments:
        model = onnx.load(str(folder / seg.file))
        for init in model.graph.initializer:
            if init.name.endswith("_scale"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
        onnx.save(model, str(folder / seg.file))
    save_manifest(m, folder)


def test_scales_times_100_fail_the_check(quantized, captured, export_feather, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(quantized("int8").folder, broken)
    _scale_weights(broken, 100.0)
    report = evaluate(captured, export_feather, broken, "int8", METHODS["int8"].bound)
    assert not report.ok and report.max_rel_error > 10
    assert "check: FAIL" in report.lines()[-1]
    intact = evaluate(captured, export_feather, quantized("int8").folder, "int8", METHODS["int8"].bound)
    assert intact.ok and intact.max_rel_error == quantized("int8").report.max_rel_error


def test_feather_run_takes_the_int8_int4_folder(quantized, capsys):
    from feather.runtime.cli import main as run_main

    assert run_main([str(quantized("int8-int4").folder), "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tokens"]) == 4 and [len(s["kept"]) for s in out["stages"]] == [236, 21]


def test_cli_prints_the_report_as_json(export_feather, tmp_path, capsys):
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text(json.dumps({"image": "../" + tmp_path.name + "/pic.png", "prompt": "What is it?"}) + "\n")
    shutil.copy(__import__("feather.cli").cli.SAMPLE_IMAGE, tmp_path / "pic.png")
    out_dir = tmp_path / "q"
    code = main([str(export_feather), "--method", "int8", "-o", str(out_dir), "--calibration", str(jsonl),
                 "--steps", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["ok"] is True and data["method"] == "int8"
    assert data["output"] == str(out_dir) and len(data["chains"]) == 1
    saved = json.loads((out_dir / "quantization.json").read_text())
    assert saved["calibration"] == [{"image": "pic.png", "prompt": "What is it?"}]
    assert saved["report"]["max_rel_error"] == data["max_rel_error"]


def _refused(args, tmp_path, capsys) -> str:
    code = main([*args, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))) == []
    return lines[0]


def test_one_line_from_a_fresh_process(export_feather, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "feather.calibration.cli", str(export_feather), "--calibration",
                           str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "none.jsonl: no such calibration file" in proc.stderr and not (tmp_path / "out").exists()


def test_bad_inputs_are_one_line_and_leave_nothing(export_feather, quantized, tmp_path, capsys):
    src = str(export_feather)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"image": "nope.png", "prompt": "What?"}\n')
    assert "missing.jsonl:1: image" in _refused([src, "--calibration", str(missing)], tmp_path, capsys)
    assert "nope.png: no such file" in _refused([src, "--calibration", str(missing)], tmp_path, capsys)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"image": "x.png", "prompt": \n')
    assert "broken.jsonl:1: invalid JSON" in _refused([src, "--calibration", str(broken)], tmp_path, capsys)
    none = str(tmp_path / "none.jsonl")
    assert "no such calibration file" in _refused([src, "--calibration", none], tmp_path, capsys)
    assert "already quantized (segment0.onnx is int8)" in _refused([str(quantized("int8").folder)], tmp_path, capsys)
    assert "invalid choice: 'int3'" in _refused([src, "--method", "int3"], tmp_path, capsys)


def test_unknown_method_in_the_library_is_a_config_error(export_feather, tmp_path):
    from feather.calibration import quantize
    from feather.errors import ConfigError

    with pytest.raises(ConfigError, match="method: got 'int3', expected one of int8, int4, int8-int4"):
        quantize(export_feather, method="int3", output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_steps_match_the_capture(captured):
    assert captured.max_new_tokens == STEPS and all(len(r.tokens) <= STEPS for r in captured.results)


def test_check_on_a_quantized_folder_judges_logits_by_the_methods_tolerance(quantized, capsys):
    """--check on an INT8 chain compares with the float reference: it passes on logits within the
    manifest's per-method tolerance (tokens and kept indices are reported, not required), and the
    same comparison with a float folder's exact rule would be stricter."""
    from feather.cli import SAMPLE_IMAGE
    from feather.runtime import Pipeline
    from feather.runtime.check import check
    from feather.runtime.check import quantized as is_quantized
    from feather.runtime.cli import main as run_main

    folder = quantized("int8").folder
    pipe = Pipeline.load(folder)
    assert is_quantized(pipe.manifest) and pipe.manifest.tolerance.logits_abs > 1e-3
    _, report = check(pipe, str(SAMPLE_IMAGE), "What is in the image?", 4)
    assert not report.exact and report.max_abs_diff[0] > 1e-4  # really quantized, so not bit-equal
    assert max(report.max_abs_diff) <= pipe.manifest.tolerance.logits_abs and report.ok
    assert run_main([str(folder), "--check", "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["ok"] is True and out["check"]["exact"] is False


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_every_weight_matmul_is_quantized_and_the_lm_head_as_the_method_says(method, quantized, export_feather):
    """Each segment's weight MatMuls (q, k, v, o and the three MLP ones per layer) are all
    quantized; the LM head too with int8 (its default), not with int4. The LM head was once found
    by its [d, vocab] shape, which on the benchmark checkpoint (d = vocab = 512) also matched q,
    k, v and o and left 40 of 56 in float."""
    for seg in load_manifest(export_feather).segments:
        layers = seg.layers[1] - seg.layers[0]
        ops = _ops(quantized(method).folder / seg.file)
        op = "MatMulInteger" if method == "int8" else "MatMulNBits"
        graph = onnx.load(str(quantized(method).folder / seg.file), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        float_weights = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
        assert op in ops
        head = "logits" in seg.outputs and not METHODS[method].head
        assert sum(n.op_type == op for n in graph.node) == 7 * layers + ("logits" in seg.outputs) - head, \
            (seg.file, float_weights)
        assert len(float_weights) == head  # the float LM head, where the method leaves it


def test_the_lm_head_is_found_by_the_graph_not_by_its_shape():
    """A square [d, d] LM head (d = vocab) and square projections: only the MatMul feeding
    ``logits`` is the head."""
    from onnx import TensorProto, helper, numpy_helper

    from feather.calibration.methods import weight_matmuls

    w = lambda name: numpy_helper.from_array(np.zeros((8, 8), np.float32), name)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["h"], name="q_proj"),
             helper.make_node("MatMul", ["h", "wo"], ["h2"], name="o_proj"),
             helper.make_node("MatMul", ["h2", "whead"], ["full"], name="head"),
             helper.make_node("Identity", ["full"], ["logits"], name="last")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])],
                              [w("wq"), w("wo"), w("whead")])
    model = helper.make_model(graph)
    assert weight_matmuls(model, skip_lm_head=True, logits="logits") == (["q_proj", "o_proj"], ["head"])
    assert weight_matmuls(model, skip_lm_head=False, logits="logits")[0] == ["q_proj", "o_proj", "head"]
    assert weight_matmuls(model, skip_lm_head=True, logits=None) == (["q_proj", "o_proj", "head"], [])


@pytest.mark.parametrize("method", ["int8-qdq", "int4-qdq"])
def test_qdq_folders_plan_build_and_run_on_the_tensorrt_seam(method, quantized, tmp_path, sample_image):
    """A TensorRT-target folder goes through feather-build's plan and build and the native
    backend's host side (fake TensorRT + CUDA executing each QDQ graph with ONNX Runtime):
    the same tokens as ONNX Runtime on that folder. Real TensorRT has not run it (none here)."""
    from feather.build import engines
    from feather.runtime.backends.tensorrt import TrtBackend
    from tests.trt.fake import FakeCuda, make_trt

    folder = tmp_path / method
    shutil.copytree(quantized(method).folder, folder)
    plan = {p.graph: p for p in engines.plan(folder).engines}
    assert {plan[f"segment{i}.onnx"].method for i in range(3)} == {method}
    assert [p.name for p in plan["segment1.onnx"].profiles] == ["prefill", "decode"]
    cuda = FakeCuda()
    trt = make_trt(cuda)
    engines.build(folder, workspace_gb=1, trt=trt, cuda=cuda, log=lambda s: None)
    want = Pipeline.load(folder).generate(sample_image, "What is in the image?", max_new_tokens=6)
    got = Pipeline.load(folder, backend=TrtBackend(trt=trt, cuda=cuda)).generate(
        sample_image, "What is in the image?", max_new_tokens=6)
    assert got.tokens == want.tokens and got.stages == want.stages
    assert {m["graph"] for m in load_manifest(folder).to_json()["engines"]} >= {"segment0.onnx", "segment2.onnx"}


def test_onnxruntime_target_folders_are_refused_by_feather_build(quantized):
    from feather.build import engines
    from feather.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^target: the export was made for 'onnxruntime'"):
        engines.plan(quantized("int8").folder)
