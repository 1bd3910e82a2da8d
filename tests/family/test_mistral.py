"""BakLLaVA's shape: a Mistral text model under a CLIP tower (``tests.checkpoints.MISTRAL``), exported,
run and checked like the Llama and Qwen2 checkpoints."""

from __future__ import annotations

from feather.config import PruneConfig
from feather.hf.checkpoint import load_config
from feather.reference import Reference
from feather.runtime import Pipeline
from feather.runtime.check import compare
from tests.hf_reference import hf_tokens

PROMPT = "What is in the image?"
N = 12


def test_the_checkpoint_is_mistral_under_clip(mistral_path):
    config = load_config(str(mistral_path))
    assert config.text_config.model_type == "mistral" and config.text_config.sliding_window == 4096
    assert (config.vision_config.model_type, config.vision_feature_select_strategy) == ("clip_vision_model", "default")


def test_unpruned_chain_equals_hf_generate(export_mistral_none, mistral_path, sample_image):
    chain = Pipeline.load(export_mistral_none).generate(sample_image, PROMPT, max_new_tokens=N)
    hf = hf_tokens(mistral_path, sample_image, PROMPT, N)
    assert len(set(hf)) >= 5  # greedy output varies, so equality means something
    assert chain.tokens == hf


def test_feather_equals_the_reference(export_mistral_feather, mistral_path, sample_image):
    chain = Pipeline.load(export_mistral_feather).generate(sample_image, PROMPT, max_new_tokens=N)
    ref = Reference.load(str(mistral_path), PruneConfig(K=(3, 6))).generate(sample_image, PROMPT, max_new_tokens=N)
    # 16 x 16 grid: floor(256 * 0.3) = 76 + ceil(16 / 3)^2 = 36 -> 112; floor(112 * 0.09) = 10
    assert [(s["layer"], len(s["kept"])) for s in chain.stages] == [(3, 112), (6, 10)]
    assert chain.stages == ref.stages and chain.tokens == ref.tokens
    assert compare(chain, ref, 1e-3).ok
