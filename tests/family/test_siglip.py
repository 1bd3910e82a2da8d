"""llava-interleave's shape: a SigLIP tower with ``vision_feature_select_strategy="full"`` (27 x 27 =
729 image tokens, no CLS) and a Qwen2 text model with tied embeddings, built in code
(``tests.checkpoints.SIGLIP``). Exported, run and checked like the CLIP checkpoints: the unpruned
chain against transformers' own ``generate``, FEATHER on the 27 x 27 grid against the reference,
the runtime's preprocessing against the checkpoint's ``LlavaProcessor`` (SigLIP's straight resize to a
square, no crop) on non-square images; CLIP with ``full`` (1 + G^2 tokens) refused in one line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from feather import checkpoints
from feather.config import PruneConfig
from feather.errors import ModelError
from feather.export.cli import main as export_main
from feather.hf.checkpoint import geometry, load_config
from feather.manifest import load_manifest
from feather.reference import Reference
from feather.runtime import Pipeline
from feather.runtime.check import compare
from feather.runtime.cli import main as run_main
from feather.runtime.preprocess import PromptEncoder, pixel_values
from tests.checkpoints import SIGLIP
from tests.hf_reference import hf_tokens

PROMPT = "What is in the image?"
N = 12
GRID = 27
GRID_TOKENS = [r * GRID + c for r in range(0, GRID, 3) for c in range(0, GRID, 3)]  # stride 3: 9 x 9 = 81


def _noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(arr, mode)


def test_the_checkpoint_is_siglip_full_qwen2_tied(siglip_path):
    config = load_config(str(siglip_path))
    assert (config.vision_config.model_type, config.vision_feature_select_strategy) == ("siglip_vision_model", "full")
    assert config.text_config.model_type == "qwen2" and config.tie_word_embeddings
    from safetensors import safe_open

    with safe_open(str(siglip_path / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("lm_head") for k in f.keys())  # the head is the embedding
    g = geometry(config)
    assert (g.n_image, g.grid, g.num_layers) == (729, GRID, 18)


def test_export_records_the_27x27_grid_and_siglip_preprocessing(export_siglip_feather):
    m = load_manifest(export_siglip_feather)
    assert (m.dims.n_image, m.dims.grid, m.prompt.n_image_tokens) == (729, GRID, 729)
    assert [(s.layer, s.keep) for s in m.pruning.stages] == [(8, 218 + 81), (16, 26)]  # floor(299 * 0.09) = 26
    img = m.image
    assert (img.size, img.resize_shortest_edge, img.center_crop) == ([384, 384], None, False)
    assert (img.resample, img.mean, img.std) == ("bicubic", [0.5] * 3, [0.5] * 3)
    out = onnx.load(str(export_siglip_feather / "vision.onnx"), load_external_data=False).graph.output[0]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 729, 64]


def test_unpruned_chain_equals_hf_generate(export_siglip_none, siglip_path, sample_image):
    chain = Pipeline.load(export_siglip_none).generate(sample_image, PROMPT, max_new_tokens=N)
    hf = hf_tokens(siglip_path, sample_image, PROMPT, N)
    assert len(set(hf)) >= 5  # greedy output varies, so equality means something
    assert chain.tokens == hf


def test_feather_on_the_27x27_grid_equals_the_reference(export_siglip_feather, siglip_path, sample_image):
    chain = Pipeline.load(export_siglip_feather).generate(sample_image, PROMPT, max_new_tokens=N)
    ref = Reference.load(str(siglip_path), PruneConfig()).generate(sample_image, PROMPT, max_new_tokens=N)
    assert [(s["layer"], len(s["kept"])) for s in chain.stages] == [(8, 299), (16, 26)]
    assert set(GRID_TOKENS) <= set(chain.stages[0]["kept"])  # the uniform grid is the 27 x 27 one
    assert chain.stages == ref.stages and chain.tokens == ref.tokens
    report = compare(chain, ref, 1e-3)
    assert report.ok and len(report.max_abs_diff) == N and min(report.cosine) > 0.9999


def test_feather_run_check_passes(export_siglip_feather, capsys):
    assert run_main([str(export_siglip_feather), "--max-new-tokens", "4", "--check", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["ok"] is True and out["check"]["tokens_agree"] == 4


@pytest.mark.parametrize("image", [
    pytest.param(lambda: _noise(400, 300, 1), id="landscape"),
    pytest.param(lambda: _noise(300, 517, 2), id="portrait"),
    pytest.param(lambda: _noise(1000, 37, 3), id="strip"),
    pytest.param(lambda: _noise(257, 131, 4, "RGBA"), id="rgba"),
])
def test_runtime_pixels_equal_the_hf_processor(export_siglip_none, siglip_path, image):
    """SigLIP resizes straight to 384 x 384 (bicubic, no crop): a CLIP-style shortest-edge resize
    and center crop would differ on every one of these."""
    from transformers import AutoProcessor

    img = image()
    processor = AutoProcessor.from_pretrained(siglip_path)
    ref = processor(images=img, text="USER: <image>\nhi ASSISTANT:", return_tensors="np")["pixel_values"]
    ours = pixel_values(img, load_manifest(export_siglip_none).image)
    assert ours.shape == ref.shape == (1, 3, 384, 384)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_prompt_ids_equal_the_hf_processor(export_siglip_none, siglip_path, sample_image):
    m = load_manifest(export_siglip_none)
    ids, offset = PromptEncoder(export_siglip_none / m.tokenizer, m.prompt).encode(PROMPT)
    ref_ids, _ = Reference.load(str(siglip_path), PruneConfig(criterion="none")).inputs(sample_image, PROMPT)
    assert ids.tolist() == ref_ids[0].tolist()
    assert (ids == m.prompt.image_token_id).sum() == 729 and ids[offset] == m.prompt.image_token_id


def _saved_config(tmp_path, vision: checkpoints.Vision, strategy: str):
    config = checkpoints.build_config(checkpoints.Spec(text=SIGLIP.text, vision=vision), 512, 4, 3)
    config.vision_feature_select_strategy = strategy
    config.save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("tower, strategy, message", [
    ("clip", "full", "'full' on a clip_vision_model gives 577 image tokens (the CLS token stays in front"),
    ("siglip", "default", "'default' on a siglip_vision_model gives 575 image tokens (the first patch is dropped"),
])
def test_a_non_square_selection_is_refused_in_one_line(tmp_path, capsys, tower, strategy, message):
    vision = checkpoints.Vision(hidden=16, ffn=32, layers=1, heads=2, tower=tower)  # 336 / 14: G = 24
    model = _saved_config(tmp_path / "ckpt", vision, strategy)
    with pytest.raises(ModelError, match=r"not a square 24 x 24 grid"):
        load_config(model)
    assert export_main(["--model", model, "--output", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_a_torchvision_image_processor_is_replaced_by_the_pil_one(siglip_path, monkeypatch):
    """With torchvision installed transformers 5 loads the torchvision backend, whose bicubic resize
    is not Pillow's; ``load`` must hand export and the reference the PIL one the runtime replays."""
    import transformers

    from feather.hf import checkpoint

    loaded = transformers.AutoProcessor.from_pretrained

    def torchvision_like(path, **kwargs):
        processor = loaded(path, **kwargs)
        processor.image_processor = type("SiglipImageProcessor", (), {"backend": "torchvision"})()
        return processor

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", torchvision_like)
    _, processor = checkpoint.load(str(siglip_path))
    assert processor.image_processor.backend == "pil"
    assert type(processor.image_processor).__name__ == "SiglipImageProcessorPil"
