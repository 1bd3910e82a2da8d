"""The build plan and profiles come from the manifest alone (no TensorRT): several geometries,
a phased (quantized-style) chain, and what --dry-run prints."""

from __future__ import annotations

import dataclasses

import pytest

from feather.build import cli as build_cli
from feather.build import engines
from feather.errors import ConfigError
from feather.manifest import load_manifest


def _by_graph(plan):
    return {e.graph: e for e in plan}


@pytest.mark.parametrize("fixture", ["export_feather", "export_none", "export_qwen_feather"])
def test_segment_profiles_follow_the_manifest(fixture, request):
    folder = request.getfixturevalue(fixture)
    m = load_manifest(folder)
    d, kv, hd = m.dims.hidden, m.dims.kv_heads, m.dims.head_dim
    plan = _by_graph(engines.plan_manifest(m))
    assert list(plan) == [g.file for g in (m.vision, m.embed, *m.segments)]
    assert plan["vision.onnx"].profiles == ()
    (embed,) = plan["embed.onnx"].profiles
    seq = m.embed.axes["seq"]
    assert embed.shapes == {"input_ids": ((1, seq.min), (1, seq.opt), (1, seq.max))}
    for seg in m.segments:
        item = plan[seg.file]
        assert item.engine == "engines/" + seg.file.replace(".onnx", ".engine")
        prefill, decode = item.profiles
        assert (prefill.name, decode.name) == ("prefill", "decode")
        s, c = seg.axes["seq"], seg.axes["cache"]
        assert prefill.shapes[seg.inputs["hidden"]] == ((1, s.min, d), (1, s.opt, d), (1, s.max, d))
        assert prefill.shapes[seg.inputs["keep_index"]] == ((s.min,), (s.opt,), (s.max,))
        assert decode.shapes[seg.inputs["hidden"]] == ((1, 1, d),) * 3
        assert decode.shapes[seg.inputs["position_ids"]] == ((1, 1),) * 3
        caches = [n for layer in range(*seg.layers) for n in seg.kv.names(layer)[:2]]
        assert [n for n in prefill.shapes if n.startswith(seg.kv.cache_key.split("%")[0][:5])] == caches
        for name in caches:
            assert prefill.shapes[name] == ((1, kv, 1, hd),) * 3  # the one-row dummy cache
            assert decode.shapes[name] == ((1, kv, c.min, hd), (1, kv, c.opt, hd), (1, kv, c.max, hd))
        assert len(prefill.shapes) == 3 + 2 * (seg.layers[1] - seg.layers[0])


def test_geometries_differ_where_they_should(export_feather, export_qwen_feather):
    tiny = _by_graph(engines.plan_manifest(load_manifest(export_feather)))
    qwen = load_manifest(export_qwen_feather)
    seg = qwen.segments[-1]
    decode = _by_graph(engines.plan_manifest(qwen))[seg.file].profiles[1]
    name = seg.kv.names(seg.layers[0])[0]
    assert decode.shapes[name][2] == (1, qwen.dims.kv_heads, seg.axes["cache"].max, qwen.dims.head_dim)
    assert tiny["segment0.onnx"].profiles[0].shapes["hidden"][2] == (1, 1024, 64)
    assert tiny["segment2.onnx"].profiles[1].shapes["cache.16.key"][2] == (1, 2, 1024, 16)
    assert [s.layers for s in qwen.segments][0] == [0, 4]


def test_a_phased_chain_gets_one_profile_per_graph(export_feather):
    """A segment with a decode_file (e.g. INT8 prefill, INT4 decode): prefill profile on file,
    decode profile on decode_file, each with its own weight method."""
    m = load_manifest(export_feather)
    m.segments[1] = dataclasses.replace(m.segments[1], method="int8-qdq", decode_file="segment1.int4.onnx",
                                        decode_method="int4-qdq")
    plan = _by_graph(engines.plan_manifest(m))
    assert [p.name for p in plan["segment1.onnx"].profiles] == ["prefill"]
    assert [p.name for p in plan["segment1.int4.onnx"].profiles] == ["decode"]
    assert plan["segment1.int4.onnx"].engine == "engines/segment1.int4.engine"
    assert (plan["segment1.onnx"].method, plan["segment1.int4.onnx"].method) == ("int8-qdq", "int4-qdq")
    assert "int4-qdq" in plan["segment1.int4.onnx"].describe_precision()
    assert len(plan) == 6


def test_options_are_refused_in_one_line(export_feather):
    m = load_manifest(export_feather)
    with pytest.raises(ConfigError, match="precision: got 'int8', expected one of as-exported, fp16, bf16"):
        engines.plan_manifest(m, "int8")
    with pytest.raises(ConfigError, match="re-export with feather-export --target portable"):
        engines.plan_manifest(dataclasses.replace(m, target="onnxruntime"))


def test_dry_run_prints_the_plan(export_feather, capsys):
    assert build_cli.main([str(export_feather), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"build plan for {export_feather} (precision as-exported, 5 engines)"
    assert "segment0.onnx -> engines/segment0.engine: strongly typed (float32 graph)" in out
    assert "    hidden: min 1x1x64 opt 1x640x64 max 1x1024x64" in out
    assert "    cache.16.key .. cache.23.value (16 tensors): min 1x2x1x16 opt 1x2x640x16 max 1x2x1024x16" in out
    assert out.count("  profile prefill:") == 3 and out.count("  profile decode:") == 3
    assert build_cli.main([str(export_feather), "--dry-run", "--precision", "fp16"]) == 0
    assert "fp16 builder flag over a float32 graph" in capsys.readouterr().out


def test_cli_errors_are_one_line(export_feather, tmp_path, capsys):
    assert build_cli.main([str(tmp_path / "nope"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no such folder" in err
    assert build_cli.main([str(export_feather), "--precision", "int8"]) == 1
    assert "invalid choice" in capsys.readouterr().err
    # without --dry-run this machine has no TensorRT: one line saying how to get it, nothing written
    assert build_cli.main([str(export_feather)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt Python package is missing" in err
    assert not (export_feather / "engines").exists()
