"""The checkpoint builder (feather.checkpoints) and its three parameterisations: tiny,
the benchmark geometry and the Qwen2 test geometry."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from feather import checkpoints, tiny
from feather.bench import checkpoint as bench
from tests.checkpoints import QWEN

# Two layers, a 4 x 4 image grid: builds in well under a second.
SMALL = checkpoints.Spec(
    text=checkpoints.Text(hidden=32, ffn=64, layers=2, heads=2, kv_heads=1, head_dim=16),
    vision=checkpoints.Vision(hidden=16, ffn=32, layers=2, heads=2, image_size=56, patch_size=14),
)
IMAGE_ID, PAD_ID, EOS_ID = 4, 3, 2


def _weights_digest(folder: Path) -> str:
    """sha256 over every tensor's name and raw bytes (independent of safetensors' header)."""
    from safetensors.numpy import load_file

    tensors = load_file(folder / "model.safetensors")
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].tobytes())
    return h.hexdigest()


def test_tokenizer_is_seeded_and_knows_the_special_tokens():
    tok = checkpoints.build_tokenizer()
    assert tok.to_str() == checkpoints.build_tokenizer().to_str()
    assert tok.get_vocab_size() == 512
    assert [tok.token_to_id(t) for t in checkpoints.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.encode("Describe the red cat in the image.").ids == [1, 40, 334, 482, 472, 467, 423, 482, 415, 18]


def test_tiny_config_keeps_its_geometry():
    config = tiny.build_config(vocab_size=512, image_token_id=IMAGE_ID, pad_id=PAD_ID)
    t, v = config.text_config, config.vision_config
    assert (t.model_type, t.hidden_size, t.intermediate_size, t.num_hidden_layers) == ("llama", 64, 172, 24)
    assert (t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (4, 2, 16)
    assert (t.rms_norm_eps, t.initializer_range, t.max_position_embeddings) == (1e-5, 0.2, 4096)
    assert t.pad_token_id == config.pad_token_id == PAD_ID
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers) == (64, 128, 4)
    assert (v.image_size, v.patch_size) == (336, 14)
    assert (config.image_seq_length, config.vision_feature_layer, config.image_token_index) == (576, -2, IMAGE_ID)


def test_qwen_config_differs_where_it_says():
    config = checkpoints.build_config(QWEN, vocab_size=512, image_token_id=IMAGE_ID, pad_id=PAD_ID)
    t, v = config.text_config, config.vision_config
    assert (t.model_type, t.hidden_size, t.num_attention_heads, t.num_key_value_heads) == ("qwen2", 96, 6, 2)
    assert t.pad_token_id is None and getattr(config, "pad_token_id", None) is None
    assert (t.max_position_embeddings, t.tie_word_embeddings) == (2048, False)
    assert (v.image_size, v.patch_size, config.image_seq_length, config.vision_feature_layer) == (224, 16, 196, -1)


def test_bench_config_is_the_bench_spec():
    config = bench.build_config(vocab_size=512, image_token_id=IMAGE_ID, pad_id=PAD_ID)
    t, v = config.text_config, config.vision_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.head_dim) == (512, 1376, 32, 128)
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (128, 24, 2)
    assert bench.SPEC.zero_eos_logit and not tiny.SPEC.zero_eos_logit


def test_unknown_text_family_is_refused():
    with pytest.raises(ValueError, match="family: got 'gpt2', expected one of llama, qwen2"):
        checkpoints.Text(hidden=32, ffn=64, layers=2, heads=2, kv_heads=1, family="gpt2")


def test_model_init_choices():
    import torch

    tok = checkpoints.build_tokenizer()
    plain = checkpoints.build_model(replace(SMALL, projector_scale=1.0, pad_in_config=False), tok)
    model = checkpoints.build_model(replace(SMALL, zero_eos_logit=True), tok)
    proj, proj_plain = model.model.multi_modal_projector, plain.model.multi_modal_projector
    assert torch.equal(proj.linear_1.weight, 4.0 * proj_plain.linear_1.weight)  # same seed, scaled
    assert torch.count_nonzero(model.lm_head.weight[EOS_ID]) == 0
    assert torch.count_nonzero(plain.lm_head.weight[EOS_ID]) == 32
    embed, embed_plain = model.get_input_embeddings().weight, plain.get_input_embeddings().weight
    assert torch.count_nonzero(embed[PAD_ID]) == 0  # nn.Embedding(padding_idx=pad) zeroes its row
    assert torch.count_nonzero(embed_plain[PAD_ID]) == 32


def test_build_is_seeded_cached_and_atomic(tmp_path):
    first = checkpoints.build(SMALL, tmp_path / "a")
    existing = tmp_path / "b"
    existing.mkdir()  # as tmp_path_factory.mktemp hands it over
    second = checkpoints.build(SMALL, existing)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no .partial left behind
    (first / "marker").write_text("kept")
    assert checkpoints.build(SMALL, first) == first and (first / "marker").exists()  # complete: not rebuilt
    checkpoints.build(SMALL, first, overwrite=True)
    assert not (first / "marker").exists()
    other = checkpoints.build(replace(SMALL, seed=1), tmp_path / "c")
    assert _weights_digest(other) != _weights_digest(first)


def test_tiny_and_bench_live_in_feather_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATHER_CACHE", str(tmp_path))
    assert tiny.default_cache_dir() == tmp_path / "tiny-llava"
    assert bench.default_cache_dir() == tmp_path / "bench-llava"
    fake = tmp_path / "tiny-llava"
    fake.mkdir()
    (fake / "model.safetensors").write_text("")
    (fake / "tokenizer.json").write_text("")
    assert tiny.build() == fake  # a complete folder in the cache is used as it is
    assert (fake / "model.safetensors").read_text() == ""
    monkeypatch.delenv("FEATHER_CACHE")
    assert tiny.default_cache_dir() == Path.home() / ".cache" / "feather-vlm" / "tiny-llava"


# Pinned: the README's outputs and every recorded token sequence depend on these weights.
# A change here means the seeded checkpoints changed (a torch/transformers init change, or
# a builder change); rebuild, re-check the README, then update the digests.
@pytest.mark.parametrize("fixture, digest", [
    ("tiny_path", "79ca5b50ddc7ccb4940de1e11822d5a1b123f4ee56a8646f4056223060e3ba60"),
    ("qwen_path", "b0c7a2545170f3adcc8fe3ce5aa303565385a7269ffd96ac6660ae251660afe2"),
])
def test_seeded_checkpoints_keep_their_weights(fixture, digest, request):
    assert _weights_digest(request.getfixturevalue(fixture)) == digest
