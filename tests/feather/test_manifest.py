"""feather.json: round trip, and every way a bad export folder is refused with its JSON path."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from feather.errors import ManifestError
from feather.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    AxisRange,
    Dims,
    GraphSpec,
    ImageSpec,
    KVNames,
    Manifest,
    PromptSpec,
    PruningSpec,
    Source,
    StageSpec,
    TokenSpec,
    Tolerance,
    from_json,
    load_manifest,
    save_manifest,
    sha256_file,
    to_json,
)

REPO = Path(__file__).resolve().parents[2]
KV = KVNames("cache.%d.key", "cache.%d.value", "new.%d.key", "new.%d.value")
SEQ = {"seq": AxisRange(1, 512, 2048)}


def make_segment(start: int, end: int, n_in: int) -> GraphSpec:
    last = end == 24
    return GraphSpec(
        file=f"segment_{start:02d}_{end:02d}.onnx",
        inputs={"hidden": "hidden_in", "keep_index": "keep_index", "position_ids": "position_ids",
                "past_len": "past_len"},
        outputs={"logits": "logits"} if last else {"hidden": "hidden_out", "score": "score"},
        axes=dict(SEQ),
        layers=[start, end],
        kv=KV,
        n_image_in=n_in,
    )


def make_manifest() -> Manifest:
    """A complete, valid manifest for a 24-layer LLaVA pruned in two stages."""
    return Manifest(
        schema_version=SCHEMA_VERSION,
        producer="feather-vlm 0.2.0",
        target="portable",
        source=Source(model="llava-hf/llava-1.5-7b-hf", revision="a272c74"),
        dims=Dims(
            num_layers=24,
            hidden=2048,
            heads=16,
            kv_heads=16,
            head_dim=128,
            vocab=32064,
            intermediate=5632,
            n_image=576,
            grid=24,
            vision_hidden=1024,
        ),
        image=ImageSpec(
            size=[336, 336],
            resize_shortest_edge=336,
            resample="bicubic",
            center_crop=True,
            rescale_factor=1 / 255,
            normalize=True,
            mean=[0.48145466, 0.4578275, 0.40821073],
            std=[0.26862954, 0.26130258, 0.27577711],
        ),
        prompt=PromptSpec(
            template="USER: <image>\n{prompt} ASSISTANT:",
            image_token="<image>",
            image_token_id=32000,
            n_image_tokens=576,
        ),
        tokens=TokenSpec(eos=[2], pad=32001, bos=1),
        tokenizer="tokenizer.json",
        pruning=PruningSpec(
            criterion="feather",
            K=[8, 16],
            ratio=0.7,
            stride=3,
            mode="static",
            stages=[StageSpec(8, "ensemble", False, 236), StageSpec(16, "topk_norope2", False, 21)],
        ),
        vision=GraphSpec(
            file="vision.onnx",
            inputs={"pixel_values": "pixel_values"},
            outputs={"image_features": "image_features"},
            axes={"batch": AxisRange(1, 1, 4)},
        ),
        embed=GraphSpec(
            file="embed.onnx",
            inputs={"input_ids": "input_ids"},
            outputs={"embeds": "inputs_embeds"},
            axes=dict(SEQ),
        ),
        segments=[make_segment(0, 8, 576), make_segment(8, 16, 236), make_segment(16, 24, 21)],
        precision="fp16",
        opset=17,
        max_seq=2048,
        tolerance=Tolerance(logits_abs=0.05, hidden_abs=0.02),
    )


def write_export(folder: Path, manifest: Manifest | None = None) -> Manifest:
    """Dummy graph / tokenizer files plus a saved feather.json; returns the manifest."""
    manifest = manifest or make_manifest()
    for graph in (manifest.vision, manifest.embed, *manifest.segments):
        (folder / graph.file).write_bytes(b"onnx:" + graph.file.encode())
    (folder / manifest.tokenizer).write_text('{"model": {}}')
    (folder / "weights").mkdir()
    (folder / "weights" / "segment_00_08.onnx.data").write_bytes(bytes(range(256)) * 8)
    save_manifest(manifest, folder)
    return manifest


def edit_and_load(folder: Path, edit) -> Manifest:
    """Save a valid export, apply ``edit`` to the raw JSON dict, write it back, load it."""
    write_export(folder)
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))
    return load_manifest(folder)


def refused(folder: Path, edit) -> str:
    with pytest.raises(ManifestError) as info:
        edit_and_load(folder, edit)
    return str(info.value)


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
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
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
    manifest = Manifest.from_json(data)
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


def test_unlisted_and_linked_files_are_refused(tmp_path):
    """Integrity covers the whole folder: a file that is not listed (so a byte-flip in it would
    go unnoticed) and a symlink out of the folder are both refused; trt-cache/ is exempt."""
    write_export(tmp_path)
    (tmp_path / "trt-cache").mkdir()
    (tmp_path / "trt-cache" / "engine.bin").write_bytes(b"engine")
    assert load_manifest(tmp_path).vision.file == "vision.onnx"
    (tmp_path / "extra.onnx.data").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"extra\.onnx\.data: not listed in feather.json files"):
        load_manifest(tmp_path)
    (tmp_path / "extra.onnx.data").unlink()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    outside.write_text("{}")
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ManifestError, match=r"tokenizer\.json: is a symbolic link"):
        load_manifest(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.json").write_text('{"model": {}}')
    (tmp_path / "weights2").symlink_to(tmp_path.parent)
    with pytest.raises(ManifestError, match=r"weights2: is a symbolic link"):
        load_manifest(tmp_path)


def test_empty_file_list_is_refused(tmp_path):
    write_export(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["files"] = {}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"vision\.onnx: not listed in feather.json files"):
        load_manifest(tmp_path)


def test_file_changed_after_save(tmp_path):
    write_export(tmp_path)
    (tmp_path / "vision.onnx").write_bytes(b"tampered")
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert str(info.value) == f"{tmp_path / 'vision.onnx'}: sha256 mismatch (file changed after export)"
    assert load_manifest(tmp_path, verify=False).vision.file == "vision.onnx"


def test_nested_file_changed_after_save(tmp_path):
    write_export(tmp_path)
    (tmp_path / "weights" / "segment_00_08.onnx.data").write_bytes(b"\0")
    with pytest.raises(ManifestError, match=r"weights/segment_00_08\.onnx\.data: sha256 mismatch"):
        load_manifest(tmp_path)


def test_listed_file_deleted(tmp_path):
    write_export(tmp_path)
    (tmp_path / "segment_08_16.onnx").unlink()
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert str(info.value) == f"{tmp_path / 'segment_08_16.onnx'}: missing (named by feather.json segments[1].file)"
    (tmp_path / "weights" / "segment_00_08.onnx.data").unlink()
    (tmp_path / "segment_08_16.onnx").write_bytes(b"onnx:segment_08_16.onnx")
    with pytest.raises(ManifestError, match=r"segment_00_08\.onnx\.data: missing \(listed in feather.json\)$"):
        load_manifest(tmp_path)


def test_named_file_never_saved(tmp_path):
    manifest = make_manifest()
    manifest.embed.file = "embed_fp16.onnx"
    write_export(tmp_path, manifest)
    (tmp_path / "embed_fp16.onnx").unlink()
    save_manifest(manifest, tmp_path)
    with pytest.raises(
        ManifestError, match=r"embed_fp16\.onnx: missing \(named by feather.json embed.file\)"
    ):
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


def test_save_refuses_invalid_manifest_and_writes_nothing(tmp_path):
    manifest = make_manifest()
    manifest.segments[1].layers = [8, 15]
    with pytest.raises(ManifestError, match=r"segments\[2\]\.layers: starts at 16, expected 15"):
        write_export(tmp_path, manifest)
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert manifest.files == {}


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(ManifestError, match=r"missing: no such folder$"):
        save_manifest(make_manifest(), tmp_path / "missing")


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
