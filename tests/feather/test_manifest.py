"""feather.json: round trip, and every way a bad manifest is refused with its JSON path
(the folder's files and their hashes: test_manifest_files.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from feather.errors import ManifestError
from feather.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    KVNames,
    Manifest,
    from_json,
    load_manifest,
    parse,
    sha256_file,
    to_json,
)
from tests.feather.manifest_helpers import (
    KV,
    REPO,
    make_manifest,
    refused,
    write_export,
)


def test_round_trip(tmp_path):
    manifest = write_export(tmp_path)
    assert set(manifest.files) == {
        "vision.onnx",
        "embed.onnx",
        "segment_00_08.onnx",
        "segment_08_16.onnx",
        "segment_16_24.onnx",
        "tokenizer.json",
        "weights/segment_00_08.onnx.data",
    }
    assert manifest.files["vision.onnx"] == sha256_file(tmp_path / "vision.onnx")
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert parse(json.loads(json.dumps(manifest.to_json()))) == manifest
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_written_file_is_readable_json_in_field_order(tmp_path):
    write_export(tmp_path)
    text = (tmp_path / MANIFEST_NAME).read_text()
    assert text.startswith('{\n  "schema_version": 2,\n  "producer"')
    assert list(json.loads(text)) == [f.name for f in dataclasses.fields(Manifest)]  # the schema's field order


def test_defaults_and_int_as_float():
    data = make_manifest().to_json()
    del data["image"]["convert_rgb"], data["segments"][0]["axes"], data["tokens"]["pad"]
    data["tolerance"]["logits_abs"] = 1
    manifest = parse(data)
    assert manifest.image.convert_rgb is True
    assert manifest.segments[0].axes == {} and manifest.tokens.pad is None
    assert manifest.tolerance.logits_abs == 1.0 and type(manifest.tolerance.logits_abs) is float


def test_codec_on_its_own():
    kv = from_json(KVNames, to_json(KV))
    assert kv == KV and kv.names(3) == ("cache.3.key", "cache.3.value", "new.3.key", "new.3.value")
    with pytest.raises(ManifestError, match=r"^feather.json: kv.cache_key: expected str, got null$"):
        from_json(KVNames, dict(to_json(KV), cache_key=None), "kv")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(extra=1), "feather.json: extra: unknown key"),
        (lambda d: d["dims"].update(hiden=1), "feather.json: dims.hiden: unknown key"),
        (lambda d: d["segments"][1].update(bogus=1), "feather.json: segments[1].bogus: unknown key"),
        (
            lambda d: d["segments"][1]["axes"]["seq"].update(step=1),
            "feather.json: segments[1].axes.seq.step: unknown key",
        ),
        (
            lambda d: d["segments"][1]["inputs"].update(hidden=5),
            "feather.json: segments[1].inputs.hidden: expected str, got int",
        ),
        (lambda d: d["dims"].update(hidden=True), "feather.json: dims.hidden: expected int, got bool"),
        (
            lambda d: d["image"].update(center_crop=1),
            "feather.json: image.center_crop: expected bool, got int",
        ),
        (
            lambda d: d["image"]["mean"].__setitem__(2, "0.4"),
            "feather.json: image.mean[2]: expected float, got str",
        ),
        (lambda d: d.update(segments={}), "feather.json: segments: expected list, got object"),
        (lambda d: d.update(source=None), "feather.json: source: expected object, got null"),
        (lambda d: d["dims"].pop("hidden"), "feather.json: dims.hidden: missing"),
        (
            lambda d: d["segments"][2]["kv"].pop("new_value"),
            "feather.json: segments[2].kv.new_value: missing",
        ),
    ],
)
def test_schema_violations_name_the_path(tmp_path, edit, message):
    assert refused(tmp_path, edit) == message


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["segments"][1].update(layers=[9, 16]),
            "feather.json: segments[1].layers: starts at 9, expected 8",
        ),
        (
            lambda d: d["segments"][2].update(layers=[16, 23]),
            "feather.json: segments[2].layers: ends at 23, expected dims.num_layers = 24",
        ),
        (lambda d: d["segments"][0].update(layers=None), "feather.json: segments[0].layers: missing"),
        (
            lambda d: d["segments"][0].update(layers=[0, 4, 8]),
            "feather.json: segments[0].layers: expected [start, end]",
        ),
        (lambda d: d.update(segments=[]), "feather.json: segments: must list at least one segment"),
        (
            lambda d: d["segments"][0]["kv"].update(cache_key="cache.key"),
            "feather.json: segments[0].kv.cache_key: 'cache.key' must contain exactly one %d",
        ),
        (
            lambda d: d["segments"][1]["kv"].update(new_value="new.%d.%d"),
            "feather.json: segments[1].kv.new_value:",
        ),
        (
            lambda d: d["segments"][2].update(file="../segment.onnx"),
            "feather.json: segments[2].file: '../segment.onnx' is not a plain relative name",
        ),
        (lambda d: d["vision"].update(file="/tmp/vision.onnx"), "feather.json: vision.file: '/tmp"),
        (lambda d: d.update(tokenizer="..\\tokenizer.json"), "feather.json: tokenizer: "),
        (lambda d: d["files"].update({"a/../../etc": "0" * 64}), "feather.json: files.a/../../etc: "),
        (lambda d: d.update(precision="int8"), "feather.json: precision: 'int8' is not one of fp32, fp16"),
        (lambda d: d["pruning"].update(mode="dynamic"), "feather.json: pruning.mode: 'dynamic'"),
        (
            lambda d: d["prompt"].update(template="USER: <image>\n{} ASSISTANT:"),
            "feather.json: prompt.template: must contain '{prompt}'",
        ),
        (lambda d: d.update(schema_version=0), "feather.json: schema_version: 0 is not a valid version"),
        (lambda d: d.update(target="tpu"), "feather.json: target: 'tpu' is not one of portable, onnxruntime"),
        # consistency between stages, rules and segment cuts
        (lambda d: d["pruning"]["stages"][0].update(keep=200),
         "feather.json: pruning.stages[0].keep: 200, but rule ensemble keeps 236 here"),
        (lambda d: d["pruning"]["stages"][1].update(keep=22),
         "feather.json: pruning.stages[1].keep: 22, but rule topk_norope2 keeps 21 here"),
        (lambda d: d["pruning"]["stages"][0].update(rope=True),
         "feather.json: pruning.stages[0].rope: True, but rule ensemble has no RoPE"),
        (lambda d: d["pruning"]["stages"][0].update(rule="sparkle"),
         "feather.json: pruning.stages[0].rule: 'sparkle' is not one of"),
        (lambda d: (d["pruning"]["stages"][1].update(layer=12), d["pruning"].update(K=[8, 12])),
         "feather.json: pruning.stages[1].layer: 12 is not where a segment starts"),
        (lambda d: d["pruning"].update(K=[8, 17]), "feather.json: pruning.stages: layers [8, 16] do not match"),
        (lambda d: d["segments"][0]["outputs"].pop("score"),
         "feather.json: segments[0].outputs: needs a 'score' output"),
        (lambda d: d["segments"][1].update(n_image_in=576),
         "feather.json: segments[1].n_image_in: 576, expected 236"),
        # axis ranges and numbers
        (lambda d: d["segments"][1]["axes"]["seq"].update(opt=4096),
         "feather.json: segments[1].axes.seq: min 1, opt 4096, max 2048: expected 0 <= min <= opt <= max"),
        (lambda d: d["embed"]["axes"]["seq"].update(max=4096, opt=640),
         "feather.json: embed.axes.seq: max 4096 exceeds max_seq 2048"),
        (lambda d: d["image"]["std"].__setitem__(1, 0.0), "feather.json: image.std[1]: 0.0 is not a finite number > 0"),
        (lambda d: d["image"]["mean"].__setitem__(0, float("nan")), "feather.json: image.mean[0]: nan is not a finite"),
        (lambda d: d["dims"].update(num_layers=10**9), "feather.json: dims.num_layers: 1000000000 is outside"),
        (lambda d: d["dims"].update(grid=10**6), "feather.json: dims.grid: 1000000 is outside [1, 128]"),
        (lambda d: d["image"].update(size=[336, 10**6]), "feather.json: image.size[1]: 1000000 is outside"),
        (lambda d: d["dims"].update(kv_heads=3), "feather.json: dims.kv_heads: 3 does not divide dims.heads = 16"),
        (lambda d: d["segments"][1]["inputs"].pop("past_len"), "feather.json: segments[1].inputs.past_len: missing"),
        (lambda d: d["segments"][1]["inputs"].update(extra="x"),
         "feather.json: segments[1].inputs.extra: unknown role"),
        (lambda d: d["segments"][1].update(dtype="int3"), "feather.json: segments[1].dtype: 'int3' is not one of"),
    ],
)
def test_semantic_violations_name_the_path(tmp_path, edit, message):
    assert refused(tmp_path, edit).startswith(message)


def test_newer_schema_is_refused_before_its_unknown_keys(tmp_path):
    def newer(d):
        d.update(schema_version=SCHEMA_VERSION + 1, new_section={})

    assert refused(tmp_path, newer) == (
        f"feather.json: schema_version: {SCHEMA_VERSION + 1} is newer than this feather-vlm reads "
        f"({SCHEMA_VERSION}); upgrade feather-vlm"
    )


def test_previous_schema_is_refused_with_a_re_export_hint(tmp_path):
    message = refused(tmp_path, lambda d: d.update(schema_version=1, past_keys="old"))
    assert message.startswith("feather.json: schema_version: 1 was written by feather-vlm 0.1")
    assert "re-export" in message


def test_deeply_nested_or_huge_json_is_one_line(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ManifestError, match=r"nested too deeply|expected object"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_bytes(b" " * (17 << 20))
    with pytest.raises(ManifestError, match=r"bytes, expected at most"):
        load_manifest(tmp_path)


def test_not_an_export(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert str(info.value) == f"{tmp_path} is not a feather export: feather.json missing"
    with pytest.raises(ManifestError, match=r"nowhere: no such folder$"):
        load_manifest(tmp_path / "nowhere")


def test_invalid_json(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text('{\n  "schema_version": 2,\n  "producer": \n}\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / MANIFEST_NAME}: invalid JSON at line 4, column 1")


def test_top_level_not_an_object(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ManifestError, match=r"^feather.json: expected object, got list$"):
        load_manifest(tmp_path)


def test_segment_for_layer_and_path(tmp_path):
    manifest = make_manifest()
    assert manifest.segment_for_layer(0) is manifest.segments[0]
    assert manifest.segment_for_layer(8) is manifest.segments[1]
    assert manifest.segment_for_layer(23) is manifest.segments[2]
    with pytest.raises(IndexError):
        manifest.segment_for_layer(24)
    assert manifest.path(tmp_path, "weights/a.data") == tmp_path / "weights" / "a.data"
    with pytest.raises(ManifestError, match=r"'\.\./a' is not a plain relative name"):
        manifest.path(tmp_path, "../a")


def test_import_does_not_load_torch():
    code = (
        "import sys, feather.manifest; "
        "heavy = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
