"""The build plan and profiles come from the manifest alone (no TensorRT): several geometries,
a phased (quantized-style) chain, and what --dry-run prints."""

from __future__ import annotations

import dataclasses
import re

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
    opt_in = None  # the segment before's opt: a prefill's hidden input holds its tokens
    for seg in m.segments:
        item = plan[seg.file]
        assert item.engine == "engines/" + seg.file.replace(".onnx", ".engine")
        prefill, decode = item.profiles
        assert (prefill.name, decode.name) == ("prefill", "decode")
        s, c = seg.axes["seq"], seg.axes["cache"]
        opt = min(item.image_tokens.point + engines.OPT_TEXT, s.max)  # the export's own point + a prompt's text
        assert prefill.shapes[seg.inputs["hidden"]] == ((1, s.min, d), (1, opt_in or opt, d), (1, s.max, d))
        assert prefill.shapes[seg.inputs["keep_index"]] == ((s.min,), (opt,), (s.max,))
        assert decode.shapes[seg.inputs["hidden"]] == ((1, 1, d),) * 3
        assert decode.shapes[seg.inputs["position_ids"]] == ((1, 1),) * 3
        caches = [n for layer in range(*seg.layers) for n in seg.kv.names(layer)[:2]]
        assert [n for n in prefill.shapes if n.startswith(seg.kv.cache_key.split("%")[0][:5])] == caches
        for name in caches:
            assert prefill.shapes[name] == ((1, kv, 1, hd),) * 3  # the one-row dummy cache
            assert decode.shapes[name] == ((1, kv, c.min, hd), (1, kv, opt, hd), (1, kv, c.max, hd))
        assert len(prefill.shapes) == 3 + 2 * (seg.layers[1] - seg.layers[0])
        opt_in = opt


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
    assert "    cache.16.key .. cache.23.value (16 tensors): min 1x2x1x16 opt 1x2x85x16 max 1x2x1024x16" in out
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


def _plan_table(lines: list[str]) -> dict[str, dict]:
    """--dry-run's lines -> per segment graph: the image tokens it serves (fewest, most, at the
    export's point) and each profile's keep_index range (min, opt, max)."""
    table, graph, profile = {}, None, None
    for line in lines:
        if m := re.match(r"(\S+\.onnx) -> ", line):
            graph, profile = m[1], None
        elif m := re.match(r"  image tokens to serve: (\d+)\.\.(\d+) over the accepted points, (\d+) at the "
                           r"export's point", line):
            table[graph] = {"tokens": tuple(int(g) for g in m.groups())}
        elif m := re.match(r"  profile (\w+):", line):
            profile = m[1]
        elif graph in table and (m := re.match(r"    keep_index: min (\d+) opt (\d+) max (\d+)$", line)):
            table[graph][profile] = tuple(int(g) for g in m.groups())
    return table


def test_dry_run_shows_profiles_covering_every_accepted_point(export_feather, capsys):
    """Operating points (docs/operating-points.md): a call may choose any R / s / mode in the
    export's range, so each segment's prefill profile must hold the fewest image tokens any
    accepted point keeps there plus one text token, and the most plus the prompt; its opt is the
    export's own point (its image tokens there + OPT_TEXT)."""
    from feather import points
    from feather.runtime.preprocess import PromptEncoder

    m = load_manifest(export_feather)
    assert build_cli.main([str(export_feather), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == ("operating points: R=0.7 s=3 static (the export's own); accepts ratio 0.05..0.95, "
                      "stride 1..24, modes static, paper (docs/operating-points.md)")
    table = _plan_table(out)
    assert list(table) == ["segment0.onnx", "segment1.onnx", "segment2.onnx"]
    # what each segment serves, from the manifest: all 576 image tokens, then each stage's keep_range
    stages = m.pruning.stages
    assert [t["tokens"] for t in table.values()] == [
        (576, 576, 576), (*stages[0].keep_range, stages[0].keep), (*stages[1].keep_range, stages[1].keep)]
    assert [t["tokens"][2] for t in table.values()] == [seg.n_image_in for seg in m.segments]
    assert table["segment1.onnx"]["tokens"] == (29, 576, 236) and table["segment2.onnx"]["tokens"] == (0, 519, 21)
    # points across the range keep counts inside what the plan says (the manifest's keep_range)
    for ratio in (0.05, 0.3, 0.95):
        for stride in (1, 3, 24):
            kept = points.keep_counts(m, points.Point(ratio, stride, "static"))
            for n, t in zip(kept, list(table.values())[1:]):
                assert t["tokens"][0] <= n <= t["tokens"][1]
    encoder = PromptEncoder(export_feather / m.tokenizer, m.prompt, m.max_seq)
    text = len(encoder.encode("What is in the image? Describe it.")[0]) - m.dims.n_image
    assert text > 1
    for t in table.values():
        fewest, most, own = t["tokens"]
        lo, opt, hi = t["prefill"]
        assert lo <= fewest + 1 and hi >= most + text  # every accepted point's prefill fits
        assert opt == own + engines.OPT_TEXT  # tuned for the export's own point
        assert t["decode"] == (1, 1, 1)


def test_profiles_cover_the_range_of_a_narrowed_or_unpruned_export(export_feather, export_none):
    """An export recording no range (made before operating points) serves its own point only;
    an unpruned one all its image tokens in every segment."""
    m = load_manifest(export_feather)
    old = dataclasses.replace(m, pruning=dataclasses.replace(
        m.pruning, points=None, stages=[dataclasses.replace(s, keep_range=None) for s in m.pruning.stages]))
    tokens = engines.image_tokens(old)
    assert [(t.fewest, t.most, t.point) for t in tokens.values()] == [(576, 576, 576), (236, 236, 236),
                                                                      (21, 21, 21)]
    none = load_manifest(export_none)
    assert {(t.fewest, t.most, t.point) for t in engines.image_tokens(none).values()} == {(576, 576, 576)}
    assert engines.points_line(none) == "operating points: none (criterion none prunes nothing)"
    with pytest.raises(ConfigError, match="seq max 500 cannot hold the 576 image tokens"):
        short = dataclasses.replace(m.segments[0], axes={**m.segments[0].axes,
                                                         "seq": dataclasses.replace(m.segments[0].axes["seq"],
                                                                                    max=500)})
        engines.plan_manifest(dataclasses.replace(m, segments=[short, *m.segments[1:]]))
