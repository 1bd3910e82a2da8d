"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``), built in code (``tests.checkpoints.NEXT``) and
exported for one frame size each: 150 x 90 (1 x 2 tiles) and 120 x 200 (2 x 2 tiles). The unpruned
chain equals transformers' ``generate`` at both sizes, FEATHER on the tiled layout equals the
reference (kept indices and tokens), the runtime's tiling equals ``LlavaNextProcessor`` (pixels,
image_sizes, image-token count), and a frame of another size is refused in one line."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from PIL import Image

from feather import layout
from feather.config import PruneConfig
from feather.errors import ConfigError, InputError
from feather.export.cli import main as export_main
from feather.manifest import load_manifest
from feather.reference import Reference
from feather.runtime import Pipeline
from feather.runtime.check import compare
from feather.runtime.preprocess import PromptEncoder, tiled_pixel_values
from tests.conftest import NEXT_TALL, NEXT_WIDE
from tests.hf_reference import hf_tokens

PROMPT = "What is in the image?"
N = 12
BASE = 8  # 112 px / patch 14


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    width, height = size
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    return Image.fromarray(arr, mode)


@pytest.mark.parametrize("fixture, frame, grid, features, n", [
    ("export_next_none_wide", NEXT_WIDE, [1, 2], [8, 14], 64 + 8 * 15),
    ("export_next_none_tall", NEXT_TALL, [2, 2], [16, 10], 64 + 16 * 11),
])
def test_the_manifest_records_the_tile_layout(request, fixture, frame, grid, features, n):
    folder = request.getfixturevalue(fixture)
    m = load_manifest(folder)
    assert (m.tiles.frame, m.tiles.grid, m.tiles.features) == ([frame[1], frame[0]], grid, features)
    assert (m.dims.n_image, m.prompt.n_image_tokens, m.dims.grid, m.image.size) == (n, n, BASE, [112, 112])
    graph = onnx.load(str(folder / "vision.onnx"), load_external_data=False).graph
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(graph.input[0]) == [1 + grid[0] * grid[1], 3, 112, 112]  # the base and the tiles, one batch
    assert dims(graph.output[0]) == [1, n, 64]


@pytest.mark.parametrize("fixture, frame, seed", [
    ("export_next_none_wide", NEXT_WIDE, 1),
    ("export_next_none_tall", NEXT_TALL, 2),
])
def test_unpruned_chain_equals_hf_generate(request, next_path, fixture, frame, seed):
    image = _noise(frame, seed)
    chain = Pipeline.load(request.getfixturevalue(fixture)).generate(image, PROMPT, max_new_tokens=N)
    hf = hf_tokens(next_path, image, PROMPT, N)
    assert len(set(hf)) >= 5  # greedy output varies, so equality means something
    assert chain.tokens == hf


def test_feather_on_the_tiled_layout_equals_the_reference(export_next_feather, next_path):
    image = _noise(NEXT_TALL, 3)
    m = load_manifest(export_next_feather)
    # prunable: 64 base + 16 x 10 tile features = 224 (the 16 newlines are never pruned); grid stride 3:
    # 3 x 3 on the base + 6 x 4 on the tiles = 33; stage 1 keeps 33 + floor(224 * 0.3) = 100, stage 2 floor(9.0) = 9
    assert [(s.layer, s.keep) for s in m.pruning.stages] == [(2, 100), (4, 9)]
    assert [s.n_image_in for s in m.segments] == [240, 116, 25]  # kept + 16 newlines
    chain = Pipeline.load(export_next_feather).generate(image, PROMPT, max_new_tokens=N)
    ref = Reference.load(str(next_path), PruneConfig(K=(2, 4))).generate(image, PROMPT, max_new_tokens=N)
    assert [(s["layer"], len(s["kept"])) for s in chain.stages] == [(2, 100), (4, 9)]
    kept = set(chain.stages[0]["kept"])
    newlines = {64 + r * 11 + 10 for r in range(16)}
    base_grid = {r * BASE + c for r in range(0, BASE, 3) for c in range(0, BASE, 3)}
    tile_grid = {64 + r * 11 + c for r in range(0, 16, 3) for c in range(0, 10, 3)}
    assert not kept & newlines and (base_grid | tile_grid) <= kept and len(base_grid | tile_grid) == 33
    assert chain.stages == ref.stages and chain.tokens == ref.tokens
    report = compare(chain, ref, 1e-3)
    assert report.ok and len(report.max_abs_diff) == N and min(report.cosine) > 0.9999


def test_the_virtual_grid_is_the_union_of_the_base_and_tile_grids():
    lay = layout.tiled(24, 30, 40, 3)  # llava-v1.6 at 640 x 480: 24 x 24 base, 30 x 40 unpadded, + 30 newlines
    assert (lay.n, len(lay.prunable), lay.newlines) == (576 + 30 * 41, 576 + 1200, 30)
    on_grid = np.flatnonzero(np.isin(lay.virtual, [r * lay.vgrid + c for r in range(0, lay.vgrid, 3)
                                                   for c in range(0, lay.vgrid, 3)]))
    assert len(on_grid) == 8 * 8 + 10 * math.ceil(40 / 3)


@pytest.mark.parametrize("frame, fixture, mode", [
    pytest.param(NEXT_WIDE, "export_next_none_wide", "RGB", id="landscape-1x2"),
    pytest.param(NEXT_TALL, "export_next_none_tall", "RGB", id="portrait-2x2"),
    pytest.param(NEXT_TALL, "export_next_none_tall", "RGBA", id="rgba-2x2"),
])
def test_runtime_preprocessing_equals_the_hf_processor(request, next_path, frame, fixture, mode):
    from transformers import AutoProcessor

    folder = request.getfixturevalue(fixture)
    m = load_manifest(folder)
    image = _noise(frame, 7, mode)
    processor = AutoProcessor.from_pretrained(next_path)
    ref = processor(images=image, text="USER: <image>\nhi ASSISTANT:", return_tensors="np")
    ours = tiled_pixel_values(image, m.image, m.tiles)
    assert ours.shape == ref["pixel_values"].shape[1:]
    np.testing.assert_allclose(ours, ref["pixel_values"][0], rtol=0, atol=1e-5)
    assert ref["image_sizes"][0].tolist() == m.tiles.frame
    ids, _ = PromptEncoder(folder / m.tokenizer, m.prompt).encode("hi")
    assert (ref["input_ids"][0] == m.prompt.image_token_id).sum() == m.prompt.n_image_tokens
    assert ids.tolist() == ref["input_ids"][0].tolist()


def test_a_frame_of_another_size_is_refused_in_one_line(export_next_none_wide):
    pipe = Pipeline.load(export_next_none_wide)
    with pytest.raises(InputError, match=r"^image: 90 x 150; this LLaVA-NeXT export takes 150 x 90 frames only"):
        pipe.generate(_noise((90, 150), 1), PROMPT, max_new_tokens=1)


def test_next_without_image_size_is_refused_in_one_line(next_path, tmp_path, capsys):
    assert export_main(["--model", str(next_path), "--output", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --image-size WIDTHxHEIGHT" in err[0]
    assert not (tmp_path / "out").exists()
    from transformers import LlavaConfig

    from feather.hf.checkpoint import frame_tiles

    with pytest.raises(ConfigError, match="only LLaVA-NeXT checkpoints take a frame size"):
        frame_tiles(LlavaConfig(), (640, 480))


def test_feather_run_check_passes(export_next_feather, tmp_path, capsys):
    import json

    from feather.runtime.cli import main as run_main

    _noise(NEXT_TALL, 4).save(tmp_path / "frame.png")
    argv = [str(export_next_feather), "--image", str(tmp_path / "frame.png"), "--max-new-tokens", "4", "--check"]
    assert run_main(argv + ["--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["ok"] is True and out["check"]["tokens_agree"] == 4 and out["check"]["kept_agree"] == [True] * 2


def test_image_size_parses_as_width_by_height():
    from feather.export.cli import build_parser

    assert build_parser().parse_args(["--image-size", "640x480"]).image_size == (640, 480)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--image-size", "640"])


def test_tiles_are_additive_and_checked(export_next_none_wide, export_mistral_none):
    import json

    from feather.errors import ManifestError
    from feather.manifest import parse

    old = json.loads((export_mistral_none / "feather.json").read_text())
    old.pop("tiles")  # a manifest written before LLaVA-NeXT support
    assert parse(old).tiles is None
    data = json.loads((export_next_none_wide / "feather.json").read_text())
    data["tiles"]["features"] = [8, 13]
    with pytest.raises(ManifestError, match=r"dims.n_image: 184, expected dims.grid\^2 \+ rows \* \(cols \+ 1\) = 176"):
        parse(data)


@pytest.mark.parametrize("key, value, message", [
    ("resolution", [112, 336], r"tiles.resolution\[1\]: 336, expected tiles.grid\[1\] \* image.size = 224"),
    ("resized", [113, 187], r"tiles.resized\[0\]: 113 exceeds tiles.resolution\[0\] = 112"),
    ("grid", [1, 5000], r"tiles.grid\[1\]: 5000 is outside \[1, 4096\]"),
])
def test_an_inconsistent_tile_layout_is_refused(export_next_none_wide, key, value, message):
    import json

    from feather.errors import ManifestError
    from feather.manifest import parse

    data = json.loads((export_next_none_wide / "feather.json").read_text())
    data["tiles"][key] = value
    with pytest.raises(ManifestError, match=message):
        parse(data)


def test_viz_on_a_tiled_export_is_refused_in_one_line(export_next_feather, tmp_path, capsys):
    """The overlay draws one square grid; on a tiled export it would put kept tokens in the
    wrong places, so --viz is refused before anything runs, and nothing is written."""
    from feather.runtime.cli import main as run_main

    _noise(NEXT_TALL, 4).save(tmp_path / "frame.png")
    argv = [str(export_next_feather), "--image", str(tmp_path / "frame.png"), "--viz", str(tmp_path / "v.png")]
    assert run_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--viz: the overlay draws one square token grid" in err
    assert not (tmp_path / "v.png").exists()
