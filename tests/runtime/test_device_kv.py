"""ONNX Runtime's GPU path keeps KV caches in device memory (``OrtDeviceKVBuffer``): buffers
that ONNX Runtime allocates, zeroed once, new rows written with one strided copy per layer.

CI has no GPU, so the same code runs with ``device="cpu"`` and a copier that does the
``cudaMemset`` / ``cudaMemcpy2D`` byte arithmetic on host memory: the pointer math, pitches
and sizes are the ones a GPU gets, and the tokens must equal the host-buffer chain's."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from feather.errors import BackendError
from feather.runtime import Pipeline
from feather.runtime.backends.onnxruntime import OrtBackend, OrtDeviceKVBuffer, OrtKVBuffer
from feather.runtime.pipeline import _Run

PROMPT = "What is in the image?"


class HostCopier:
    """backends.cuda.Cuda's memset / copy2d / sync / stream, on host pointers."""

    def __init__(self):
        self.copies: list[tuple[int, int, int, int]] = []  # (dpitch, spitch, width, height)
        self.memsets = self.syncs = 0

    def stream(self) -> int:
        return 3

    def sync(self, stream: int) -> None:
        assert stream == 3
        self.syncs += 1

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        ctypes.memset(ptr, 0, nbytes)
        self.memsets += 1

    def copy2d(self, dst, dpitch, src, spitch, width, height, stream) -> None:
        assert width <= dpitch and width <= spitch and stream == 3
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        self.copies.append((dpitch, spitch, width, height))


def _device_pipe(folder):
    copier = HostCopier()
    return Pipeline.load(folder, backend=OrtBackend("cpu", cuda=copier, device="cpu")), copier


def test_device_buffers_give_the_host_chains_tokens(export_feather, sample_image):
    want = Pipeline.load(export_feather).generate(sample_image, PROMPT, max_new_tokens=8)
    pipe, copier = _device_pipe(export_feather)
    assert pipe.backend.kv_on_device
    got = pipe.generate(sample_image, PROMPT, max_new_tokens=8)
    assert got.tokens == want.tokens and got.stages == want.stages
    assert max(float(np.abs(a - b).max()) for a, b in zip(got.logits, want.logits)) == 0.0
    assert got.kv_bytes == want.kv_bytes


def test_a_decode_step_writes_one_row_per_layer_in_place(export_feather, sample_image):
    pipe, copier = _device_pipe(export_feather)
    ids, offset = pipe.encoder.encode(PROMPT)
    run = _Run()
    token = int(np.argmax(pipe.prefill(sample_image, ids, offset, run, max_new_tokens=4)))
    bufs = [b for caches in run.caches for b in caches]
    assert all(isinstance(b, OrtDeviceKVBuffer) for b in bufs)
    addresses = [b.address for b in bufs]
    before = [b.value.numpy().copy() for b in bufs]
    lengths = [n for n, caches in zip(run.lengths, run.caches) for _ in caches]
    copier.copies.clear()
    syncs = copier.syncs
    pipe.decode_step(token, run)
    d = pipe.manifest.dims
    row = d.head_dim * 4  # float32
    # one strided copy per layer and K/V: KV rows of one head_dim each, into a pitch of capacity rows
    assert len(copier.copies) == len(bufs) == 24 * 2
    # one wait per session run that follows copies (this step's embed waits for the previous
    # step's last segment; segments 1 and 2 for the one before them), not one per layer
    assert copier.syncs - syncs == len(run.caches) == 3
    assert {(s, w, h) for _, s, w, h in copier.copies} == {(row, row, d.kv_heads)}
    assert [p for p, *_ in copier.copies] == [b.shape[2] * row for b in bufs]
    assert [b.address for b in bufs] == addresses and [b.value.data_ptr() for b in bufs] == addresses
    for buf, old, live in zip(bufs, before, lengths):
        new = buf.value.numpy()
        assert np.array_equal(new[:, :, :live], old[:, :, :live])  # history untouched
        assert not np.array_equal(new[:, :, live], old[:, :, live])  # the new row written
        assert np.array_equal(new[:, :, live + 1:], old[:, :, live + 1:])


def test_device_buffer_zeroed_and_checked():
    copier = HostCopier()
    backend = OrtBackend("cpu", cuda=copier, device="cpu")
    buf = backend.kv_buffer((1, 2, 9, 4), np.float32)
    assert copier.memsets == 1 and not buf.value.numpy().any() and buf.nbytes == 2 * 9 * 4 * 4
    rows = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    buf.write(rows, 6)  # from the host too
    got = buf.value.numpy()
    assert np.array_equal(got[:, :, 6:9], rows) and not got[:, :, :6].any()
    with pytest.raises(BackendError, match=r"^KV write: rows \(1, 2, 3, 4\) float32 at 7 do not fit buffer"):
        buf.write(rows, 7)
    with pytest.raises(BackendError, match=r"float16 at 0 do not fit"):
        buf.write(rows.astype(np.float16), 0)


def test_host_buffers_on_the_cpu_provider():
    backend = OrtBackend("cpu")
    assert not backend.kv_on_device and isinstance(backend.kv_buffer((1, 1, 2, 4), np.float32), OrtKVBuffer)


def test_kv_on_device_without_cuda_python_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cuda(name, *args, **kwargs):
        if name == "cuda" or name.startswith("cuda."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cuda)
    with pytest.raises(BackendError, match=r"^provider cpu: cuda-python is missing \(pip install cuda-python"):
        OrtBackend("cpu", kv_on_device=True, device="cpu")

