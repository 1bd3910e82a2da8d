"""Session fixtures: checkpoints built in code once per test session (nothing downloads)."""

from __future__ import annotations

import os

import pytest


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
