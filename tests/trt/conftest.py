"""Fixtures for the TensorRT tests: an export copy with engines built by the fake TensorRT."""

from __future__ import annotations

import shutil

import pytest

from tests.trt.fake import FakeCuda, make_trt


@pytest.fixture
def fake():
    """(fake tensorrt 10.3, fake CUDA)."""
    cuda = FakeCuda()
    return make_trt(cuda), cuda


@pytest.fixture
def built(export_feather, tmp_path, fake):
    """A copy of the FEATHER export with engines from the fake TensorRT: (folder, trt, cuda)."""
    from feather.build import engines

    folder = tmp_path / "export"
    shutil.copytree(export_feather, folder)
    trt, cuda = fake
    engines.build(folder, workspace_gb=2, timing_cache=tmp_path / "timing.cache", trt=trt, cuda=cuda,
                  log=lambda s: None)
    return folder, trt, cuda
