"""Session fixtures: checkpoints built in code once per test session (nothing downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at test time (the CLIs no longer set it)


@pytest.fixture(scope="session", autouse=True)
def feather_cache(tmp_path_factory):
    """Point ``--model tiny`` at a per-session cache so tests never touch ~/.cache."""
    root = tmp_path_factory.mktemp("feather-cache")
    old = os.environ.get("FEATHER_CACHE")
    os.environ["FEATHER_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("FEATHER_CACHE", None)
    else:
        os.environ["FEATHER_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_path(feather_cache):
    """The tiny LLaVA, built once, exactly where ``--model tiny`` looks for it."""
    from feather import tiny

    return tiny.build()


@pytest.fixture(scope="session")
def qwen_path(tmp_path_factory):
    """A second geometry built with transformers directly: 224 px / patch 16 (14 x 14 grid,
    196 image tokens), vision_feature_layer = -1, a Qwen2 text model (q/k/v biases, GQA)."""
    from tests.checkpoints import build_qwen_llava

    return build_qwen_llava(tmp_path_factory.mktemp("qwen-llava"))


@pytest.fixture(scope="session")
def sample_image():
    from feather.tiny import sample_image as make

    return make()


def _export(tmp_path_factory, name: str, model: str, **prune):
    from feather.config import PruneConfig
    from feather.export import export

    out = tmp_path_factory.mktemp("exports") / name
    return export(model=model, config=PruneConfig(**prune), output=out, max_seq=1024, quiet=True)


@pytest.fixture(scope="session")
def export_feather(tiny_path, tmp_path_factory):
    """The tiny checkpoint exported with the defaults (FEATHER, K = 8 16, R = 0.7, s = 3, static)."""
    return _export(tmp_path_factory, "feather", "tiny")


@pytest.fixture(scope="session")
def export_none(tiny_path, tmp_path_factory):
    """The unpruned chain (--criterion none): one decoder segment."""
    return _export(tmp_path_factory, "none", "tiny", criterion="none")


@pytest.fixture(scope="session")
def export_k8(tiny_path, tmp_path_factory):
    """One stage: FEATHER's first stage (ensemble) at K = 8."""
    return _export(tmp_path_factory, "k8", "tiny", K=(8,))


@pytest.fixture(scope="session")
def export_original(tiny_path, tmp_path_factory):
    """FastV: RoPE score at K = 3."""
    return _export(tmp_path_factory, "original", "tiny", criterion="original", K=(3,))


@pytest.fixture(scope="session")
def export_qwen_none(qwen_path, tmp_path_factory):
    return _export(tmp_path_factory, "qwen-none", str(qwen_path), criterion="none")


@pytest.fixture(scope="session")
def export_qwen_feather(qwen_path, tmp_path_factory):
    return _export(tmp_path_factory, "qwen-feather", str(qwen_path), K=(4, 12))


# ---- the LLaVA family beyond 1.5 (tests/family) ----


@pytest.fixture(scope="session")
def siglip_path(tmp_path_factory):
    """llava-interleave's shape: SigLIP 384 / 14 (27 x 27 = 729 tokens, no CLS, "full"), Qwen2 with
    tied embeddings, 18 layers (K = 8 16)."""
    from tests.checkpoints import build_siglip_llava

    return build_siglip_llava(tmp_path_factory.mktemp("siglip-llava"))


@pytest.fixture(scope="session")
def export_siglip_none(siglip_path, tmp_path_factory):
    return _export(tmp_path_factory, "siglip-none", str(siglip_path), criterion="none")


@pytest.fixture(scope="session")
def export_siglip_feather(siglip_path, tmp_path_factory):
    """FEATHER with the defaults (K = 8 16, R = 0.7, s = 3, static) on the 27 x 27 grid."""
    return _export(tmp_path_factory, "siglip-feather", str(siglip_path))


@pytest.fixture(scope="session")
def mistral_path(tmp_path_factory):
    """BakLLaVA's shape: Mistral text (GQA 4:1), CLIP at 224 / 14 (16 x 16 = 256 tokens), 10 layers."""
    from tests.checkpoints import build_mistral_llava

    return build_mistral_llava(tmp_path_factory.mktemp("mistral-llava"))


@pytest.fixture(scope="session")
def export_mistral_none(mistral_path, tmp_path_factory):
    return _export(tmp_path_factory, "mistral-none", str(mistral_path), criterion="none")


@pytest.fixture(scope="session")
def export_mistral_feather(mistral_path, tmp_path_factory):
    return _export(tmp_path_factory, "mistral-feather", str(mistral_path), K=(3, 6))


NEXT_WIDE, NEXT_TALL = (150, 90), (120, 200)
"""LLaVA-NeXT frame sizes (width, height) picking different tile grids on ``tests.checkpoints.NEXT``:
150 x 90 -> 1 x 2 tiles (8 x 14 unpadded features, 184 image tokens), 120 x 200 -> 2 x 2 (16 x 10, 240)."""


@pytest.fixture(scope="session")
def next_path(tmp_path_factory):
    """llava-v1.6's shape, shrunk: LLaVA-NeXT, CLIP 112 / 14 tiles (8 x 8 = 64 per tile), Llama, 6 layers."""
    from tests.checkpoints import build_next_llava

    return build_next_llava(tmp_path_factory.mktemp("next-llava"))


def _export_next(tmp_path_factory, name: str, model, frame, **prune):
    from feather.config import PruneConfig
    from feather.export import export

    out = tmp_path_factory.mktemp("exports") / name
    return export(model=str(model), config=PruneConfig(**prune), output=out, max_seq=512, quiet=True,
                  image_size=frame)


@pytest.fixture(scope="session")
def export_next_none_wide(next_path, tmp_path_factory):
    return _export_next(tmp_path_factory, "next-none-wide", next_path, NEXT_WIDE, criterion="none")


@pytest.fixture(scope="session")
def export_next_none_tall(next_path, tmp_path_factory):
    return _export_next(tmp_path_factory, "next-none-tall", next_path, NEXT_TALL, criterion="none")


@pytest.fixture(scope="session")
def export_next_feather(next_path, tmp_path_factory):
    """FEATHER (K = 2 4, R = 0.7, s = 3, static) on the 2 x 2-tile layout of a 120 x 200 frame."""
    return _export_next(tmp_path_factory, "next-feather", next_path, NEXT_TALL, K=(2, 4))
