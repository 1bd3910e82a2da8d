"""One capture of the tiny FEATHER export, and each method quantized from it once per session."""

from __future__ import annotations

import pytest

from feather.calibration import METHODS, default_set, quantize, record

STEPS = 4  # greedy tokens per prompt: prefill + 3 decode steps (2 of them recorded)


@pytest.fixture(scope="session")
def captured(export_feather):
    """The float chain on two of the built-in prompts."""
    return record(export_feather, default_set()[:2], max_new_tokens=STEPS)


@pytest.fixture(scope="session")
def quantized(export_feather, captured, tmp_path_factory):
    """method -> ``Quantized`` (folder + report), each method run once, all from one capture."""
    root = tmp_path_factory.mktemp("quantized")
    cache = {}

    def get(method: str):
        if method not in cache:
            assert method in METHODS
            cache[method] = quantize(export_feather, method=method, output=root / method, quiet=True,
                                     captured=captured, max_new_tokens=STEPS)
        return cache[method]

    return get
