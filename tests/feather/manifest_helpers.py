"""A complete, valid manifest and a dummy export folder for the manifest tests."""

from __future__ import annotations

import json
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
    load_manifest,
    save_manifest,
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
