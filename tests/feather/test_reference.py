"""The PyTorch reference against transformers' own generate, and the pruning it applies."""

import numpy as np
import pytest

from feather.config import PruneConfig
from feather.reference import Reference
from feather.selection import uniform_grid
from tests.hf_reference import hf_generate

PROMPT = "What is in the image?"


@pytest.fixture(scope="module")
def tiny_none(tiny_path):
    return Reference.load(str(tiny_path), PruneConfig(criterion="none"))


def test_tiny_answer_varies(tiny_none, sample_image):
    tokens = tiny_none.generate(sample_image, PROMPT, max_new_tokens=16).tokens
    assert len(tokens) == 16 and len(set(tokens)) >= 5


@pytest.mark.parametrize("prompt", [PROMPT, "Describe the region at the top left, please."])
def test_no_pruning_equals_hf_generate_on_tiny(tiny_none, sample_image, prompt):
    assert tiny_none.generate(sample_image, prompt, max_new_tokens=16).tokens == hf_generate(
        tiny_none, sample_image, prompt, 16)


def test_no_pruning_equals_hf_generate_on_a_qwen2_checkpoint(qwen_path, sample_image):
    ref = Reference.load(str(qwen_path), PruneConfig(criterion="none"))
    assert ref.geom.n_image == 196 and ref.geom.grid == 14 and ref.geom.kv_heads < ref.geom.heads
    tokens = ref.generate(sample_image, PROMPT, max_new_tokens=16).tokens
    assert len(set(tokens)) >= 3
    assert tokens == hf_generate(ref, sample_image, PROMPT, 16)


def _stages(path, image, **kw):
    ref = Reference.load(str(path), PruneConfig(**kw))
    return ref.generate(image, PROMPT, max_new_tokens=4)


def _valid(kept, n=576):
    assert kept == sorted(set(kept)) and all(0 <= i < n for i in kept)


def test_feather_static_keeps_236_then_21_and_paper_mode_is_inside(tiny_path, sample_image):
    static = _stages(tiny_path, sample_image, criterion="feather", mode="static").stages
    paper = _stages(tiny_path, sample_image, criterion="feather", mode="paper").stages
    assert [(s["layer"], len(s["kept"])) for s in static] == [(8, 236), (16, 21)]
    assert 172 <= len(paper[0]["kept"]) <= 236 and set(paper[0]["kept"]) <= set(static[0]["kept"])
    for stages in (static, paper):
        _valid(stages[0]["kept"])
        _valid(stages[1]["kept"])
        assert set(stages[1]["kept"]) <= set(stages[0]["kept"])
        assert set(uniform_grid(24, 3)) <= set(stages[0]["kept"])
    assert len(paper[1]["kept"]) == int(len(paper[0]["kept"]) * 0.09 + 1e-9)


@pytest.mark.parametrize(
    "kw, layer, count",
    [
        ({"criterion": "original", "K": (3,)}, 3, 172),
        ({"criterion": "norope", "K": (3,)}, 3, 172),
        ({"criterion": "uniform", "K": (8,)}, 8, 64),
        ({"criterion": "uniform", "K": (0,), "stride": 2}, 0, 144),
        ({"criterion": "knn", "K": (0,)}, 0, 172),
        ({"criterion": "ensemble", "K": (8,)}, 8, 236),
        ({"criterion": "original", "K": (3,), "ratio": 0.75}, 3, 144),
        ({"criterion": "text_only"}, 0, 0),
    ],
)
def test_each_criterion_keeps_the_spec_count(tiny_path, sample_image, kw, layer, count):
    stages = _stages(tiny_path, sample_image, **kw).stages
    assert [s["layer"] for s in stages] == [layer] and len(stages[0]["kept"]) == count
    _valid(stages[0]["kept"])


def test_uniform_keeps_exactly_the_grid(tiny_path, sample_image):
    kept = _stages(tiny_path, sample_image, criterion="uniform", K=(8,)).stages[0]["kept"]
    assert kept == uniform_grid(24, 3).tolist()


def test_rope_changes_the_selection(tiny_path, sample_image):
    rope = _stages(tiny_path, sample_image, criterion="original", K=(3,)).stages[0]["kept"]
    norope = _stages(tiny_path, sample_image, criterion="norope", K=(3,)).stages[0]["kept"]
    assert rope != norope and len(set(rope) ^ set(norope)) >= 10


def test_pruning_changes_the_answer_but_keeps_positions(tiny_path, sample_image):
    """Pruned decoding continues positions from the FULL prompt: a decode at the pruned
    length instead would give other logits."""
    ref = Reference.load(str(tiny_path), PruneConfig())
    ids, pixels = ref.inputs(sample_image, PROMPT)
    logits, state, _ = ref.prefill(ids, ref.image_features(pixels))
    assert state.next_pos == ids.shape[1]
    caches = [state.cache.layers[i].keys.shape[2] for i in (0, 7, 8, 15, 16, 23)]
    text = ids.shape[1] - 576
    assert caches == [text + 576] * 2 + [text + 236] * 2 + [text + 21] * 2


def test_seeded_sampling_is_reproducible(tiny_none, sample_image):
    from feather.sampling import Sampling

    s = Sampling(temperature=1.0, top_p=0.9, seed=7)
    a = tiny_none.generate(sample_image, PROMPT, 12, s).tokens
    assert a == tiny_none.generate(sample_image, PROMPT, 12, s).tokens
    assert a != tiny_none.generate(sample_image, PROMPT, 12, Sampling(temperature=1.0, top_p=0.9, seed=8)).tokens


def test_logits_are_returned_per_step(tiny_none, sample_image):
    r = tiny_none.generate(sample_image, PROMPT, max_new_tokens=5)
    assert len(r.logits) == len(r.tokens) == 5
    assert [int(np.argmax(x)) for x in r.logits] == r.tokens
