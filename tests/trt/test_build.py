"""feather-build through a fake tensorrt: what the builder is asked, what is written and
recorded, the TensorRT 10 / 11 precision branch, and fp32 pinning."""

from __future__ import annotations

import json
import shutil

import pytest

from feather.build import engines
from feather.errors import ConfigError, ManifestError
from feather.manifest import MANIFEST_NAME, load_manifest, parse, sha256_file
from tests.trt.fake import FakeCuda, FakeLayer, FakeNetwork, make_trt


def test_build_writes_and_records_engines(built, export_feather, tmp_path):
    folder, trt, _ = built
    m = load_manifest(folder)  # verified: engines/ is exempt, every listed file unchanged
    assert m.files == load_manifest(export_feather).files
    assert [e.graph for e in m.engines] == ["vision.onnx", "embed.onnx", "segment0.onnx", "segment1.onnx",
                                            "segment2.onnx"]
    for e in m.engines:
        assert (e.tensorrt, e.gpu, e.compute_capability, e.precision) == ("10.3.0", "Fake GPU", "8.7", "as-exported")
        assert e.sha256 == sha256_file(folder / e.file) and e.graph_sha256 == m.files[e.graph]
    seg0 = m.engines[2]
    assert [p.name for p in seg0.profiles] == ["prefill", "decode"]
    assert seg0.profiles[1].shapes["cache.0.key"] == [[1, 2, 1, 16], [1, 2, 640, 16], [1, 2, 1024, 16]]
    assert sorted(p.name for p in (folder / "engines").iterdir()) == sorted(e.file[8:] for e in m.engines)
    # what the builder was asked: strongly typed, the workspace cap, the profiles, one timing cache reused
    assert [b["network_flags"] for b in trt.builds] == [1 << 5] * 5
    assert {b["pool"]["WORKSPACE"] for b in trt.builds} == {2 << 30}
    assert all(b["flags"] == [] for b in trt.builds)
    assert trt.builds[2]["profiles"][1]["cache.0.key"] == [[1, 2, 1, 16], [1, 2, 640, 16], [1, 2, 1024, 16]]
    assert [b["cache_in"] for b in trt.builds] == [b"|tactics" * i for i in range(5)]
    assert (tmp_path / "timing.cache").read_bytes() == b"|tactics" * 5
    # a later build starts from the saved cache, and replaces the records rather than adding to them
    engines.build(folder, timing_cache=tmp_path / "timing.cache", trt=trt, cuda=FakeCuda(), log=lambda s: None)
    assert trt.builds[5]["cache_in"] == b"|tactics" * 5 and len(load_manifest(folder).engines) == 5


def test_fp16_over_fp32_is_tensorrt_10_only(export_feather, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(export_feather, folder)
    trt = make_trt(FakeCuda(), "10.3.0")
    engines.build(folder, precision="fp16", trt=trt, cuda=FakeCuda(), log=lambda s: None)
    assert {b["network_flags"] for b in trt.builds} == {0}  # weakly typed: the flag decides
    assert {tuple(b["flags"]) for b in trt.builds} == {("FP16", "OBEY_PRECISION_CONSTRAINTS")}
    before = (folder / MANIFEST_NAME).read_bytes()
    trt11 = make_trt(FakeCuda(), "11.1.0")
    with pytest.raises(ConfigError, match=r"^precision fp16: TensorRT 11\.1\.0 builds strongly typed networks "
                                          r"only .* re-export with feather-export --precision fp16"):
        engines.build(folder, precision="fp16", trt=trt11, cuda=FakeCuda(), log=lambda s: None)
    assert trt11.builds == [] and (folder / MANIFEST_NAME).read_bytes() == before
    assert [p.name for p in (folder / "engines").iterdir() if p.name.startswith(".")] == []
    engines.build(folder, trt=trt11, cuda=FakeCuda(), log=lambda s: None)  # as-exported works on 11
    assert {b["network_flags"] for b in trt11.builds} == {1 << 5}


def test_pin_fp32_keeps_rmsnorm_and_softmax_reductions():
    trt = make_trt(FakeCuda())
    L, E = trt.LayerType, trt.ElementWiseOperation
    layers = [
        FakeLayer("pow", L.ELEMENTWISE, ["x", "two"], ["x2"], E.POW),
        FakeLayer("mean", L.REDUCE, ["x2"], ["var"]),
        FakeLayer("add_eps", L.ELEMENTWISE, ["var", "eps"], ["var_eps"], E.SUM),
        FakeLayer("sqrt", L.UNARY, ["var_eps"], ["std"]),
        FakeLayer("div", L.ELEMENTWISE, ["x", "std"], ["normed"], E.DIV),
        FakeLayer("matmul", L.MATRIX_MULTIPLY, ["normed", "w"], ["h"]),
        FakeLayer("residual", L.ELEMENTWISE, ["h", "x"], ["out"], E.SUM),
        FakeLayer("softmax", L.SOFTMAX, ["out"], ["p"]),
    ]
    assert engines.pin_fp32(trt, FakeNetwork(0, layers)) == ["pow", "mean", "add_eps", "sqrt", "div", "softmax"]
    assert layers[1].precision == trt.float32 and layers[1].output_types == {0: trt.float32}
    assert layers[5].precision is None and layers[6].precision is None


def test_a_graph_tensorrt_cannot_parse_is_one_line(export_feather, tmp_path):
    trt = make_trt(FakeCuda())
    item = engines.plan_manifest(load_manifest(export_feather))[0]
    with pytest.raises(Exception, match=r"^missing\.onnx: TensorRT cannot parse it \(file not found\)$"):
        engines.build_engine(trt, tmp_path / "missing.onnx", item, None, b"")


def test_engine_records_are_checked(built):
    folder, _, _ = built
    data = json.loads((folder / MANIFEST_NAME).read_text())
    for key, value, message in [
        ("file", "segment0.engine", r"engines\[0\]\.file: 'segment0.engine' is not under engines/"),
        ("file", "engines/../x.engine", r"engines\[0\]\.file: .* not a plain relative name"),
        ("graph", "other.onnx", r"engines\[0\]\.graph: 'other.onnx' is not a graph file of this export"),
        ("sha256", "ABC", r"engines\[0\]\.sha256: expected 64 lowercase hex digits"),
    ]:
        bad = json.loads(json.dumps(data))
        bad["engines"][0][key] = value
        with pytest.raises(ManifestError, match=message):
            parse(bad)
    bad = json.loads(json.dumps(data))
    bad["engines"][2]["profiles"][0]["shapes"]["hidden"][0] = [1, 2000, 64]
    with pytest.raises(ManifestError, match=r"engines\[2\]\.profiles\[0\]\.shapes\.hidden: dims 2000, 640, 1024"):
        parse(bad)
    del data["engines"]  # a manifest from before feather-build existed still loads
    assert parse(data).engines == []
