"""The native TensorRT backend's host-side logic, run for real on a fake tensorrt + CUDA whose
engines execute their graphs with ONNX Runtime: it must reproduce the ONNX Runtime chain,
pick the prefill / decode profile per phase, size buffers from the profiles, write only the
new KV rows, and refuse foreign engines in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from feather.build import engines
from feather.errors import BackendError
from feather.manifest import MANIFEST_NAME, load_manifest, save_manifest
from feather.runtime import Pipeline
from feather.runtime.backends.tensorrt import DeviceTensor, TrtBackend
from feather.runtime.pipeline import _Run
from tests.trt.fake import FakeCuda, make_trt

PROMPT = "What is in the image?"


def _pipe(folder, trt, cuda):
    return Pipeline.load(folder, backend=TrtBackend(trt=trt, cuda=cuda))


def test_tokens_match_onnxruntime_and_profiles_follow_the_phase(built, export_feather, sample_image):
    folder, trt, cuda = built
    want = Pipeline.load(export_feather).generate(sample_image, PROMPT, max_new_tokens=8)
    assert len(set(want.tokens)) > 1  # a chain that repeats one token would prove nothing
    got = _pipe(folder, trt, cuda).generate(sample_image, PROMPT, max_new_tokens=8)
    assert got.tokens == want.tokens and got.stages == want.stages
    assert max(float(np.abs(a - b).max()) for a, b in zip(got.logits, want.logits)) < 1e-4
    for seg in ("segment0.onnx", "segment1.onnx", "segment2.onnx"):
        profiles = [p for name, p, _ in trt.runs if name == seg]
        assert profiles == [0] + [1] * 7  # prefill on profile 0, each decode step on profile 1
    decode = [shapes for name, p, shapes in trt.runs if name == "segment1.onnx" and p == 1]
    assert decode[0]["hidden"] == (1, 1, 64) and decode[0]["cache.8.key"][2] == got.prompt_tokens - 576 + 236 + 7


@pytest.mark.parametrize("prune", [{"ratio": 0.95, "stride": 24}, {"ratio": 0.05, "stride": 1},
                                   {"ratio": 0.5, "stride": 2, "mode": "paper"}])
def test_points_across_the_range_run_on_the_built_profiles(built, export_feather, sample_image, prune):
    """Operating points (docs/operating-points.md): the ends of the export's range run on the
    engines feather-build made for its own point, with no rebuild, each prefill on its segment's
    prefill profile, and answer as ONNX Runtime does at that point."""
    folder, trt, cuda = built
    want = Pipeline.load(export_feather).generate(sample_image, PROMPT, max_new_tokens=3, prune=prune)
    before = len(trt.runs)
    got = _pipe(folder, trt, cuda).generate(sample_image, PROMPT, max_new_tokens=3, prune=prune)
    assert got.tokens == want.tokens and got.stages == want.stages and got.point == want.point
    assert [len(s["kept"]) for s in got.stages] != [236, 21]  # not the export's own point
    profiles = load_manifest(folder).engines
    for seg, n_image in zip(("segment0.onnx", "segment1.onnx", "segment2.onnx"),
                            [576] + [len(s["kept"]) for s in got.stages]):
        runs = [(p, shapes) for name, p, shapes in trt.runs[before:] if name == seg]
        assert [p for p, _ in runs] == [0, 1, 1]  # prefill on the prefill profile, then decode
        lo, _, hi = next(e for e in profiles if e.graph == seg).profiles[0].shapes["keep_index"]
        n = runs[0][1]["keep_index"][0]
        assert n == got.prompt_tokens - 576 + n_image and lo[0] <= n <= hi[0]


def test_decode_steps_replay_a_cuda_graph_and_recapture_for_new_buffers(built, export_feather, sample_image):
    folder, trt, cuda = built
    want = Pipeline.load(export_feather).generate(sample_image, PROMPT, max_new_tokens=8)
    pipe = _pipe(folder, trt, cuda)
    for call in range(2):
        launches = cuda.launches
        got = pipe.generate(sample_image, PROMPT, max_new_tokens=8)
        assert got.tokens == want.tokens
        assert max(float(np.abs(a - b).max()) for a, b in zip(got.logits, want.logits)) < 1e-4
        # 7 decode steps per decoder segment: a plain run, then a capture, then replays. The
        # second call's KV buffers are new allocations: where one lands elsewhere, its segment
        # captures anew (a replay of the old graph would read freed memory and fail here);
        # where the allocator hands back the same address, the old graph is valid and replays
        # from the first step (up to one more launch per segment)
        assert 3 * 6 <= cuda.launches - launches <= (3 * 6 if call == 0 else 3 * 7), call
    segs = [s.session for s in pipe.segments if s.session.profiles[-1].name == "decode"]
    assert len(segs) == 3 and all(12 <= s.graph_launches <= 13 and len(s._graphs) == 1 for s in segs)
    off = Pipeline.load(folder, backend=TrtBackend(trt=trt, cuda=cuda, cuda_graphs=False))
    launches = cuda.launches
    assert off.generate(sample_image, PROMPT, max_new_tokens=8).tokens == want.tokens
    assert cuda.launches == launches


def test_a_capture_that_fails_falls_back_to_plain_runs(built, sample_image):
    folder, trt, cuda = built
    want = _pipe(folder, trt, cuda).generate(sample_image, PROMPT, max_new_tokens=6).tokens

    def refuse(stream):
        raise BackendError("CUDA cudaStreamBeginCapture failed (cudaErrorStreamCaptureUnsupported)")

    cuda.begin_capture = refuse
    launches = cuda.launches
    assert _pipe(folder, trt, cuda).generate(sample_image, PROMPT, max_new_tokens=6).tokens == want
    assert cuda.launches == launches and cuda.capturing is None


def test_an_engine_that_fails_inside_a_capture_leaves_capture_mode(built, sample_image, monkeypatch):
    """execute_async_v3 returning False while capturing: the graph is dropped, capture mode
    left, and the step runs plainly (so the real failure, if any, surfaces as usual)."""
    from tests.trt.fake import FakeContext

    folder, trt, cuda = built
    want = _pipe(folder, trt, cuda).generate(sample_image, PROMPT, max_new_tokens=6).tokens
    plain = FakeContext.execute_async_v3

    def refuse_while_capturing(self, stream):
        return False if self.engine.cuda.capturing is not None else plain(self, stream)

    monkeypatch.setattr(FakeContext, "execute_async_v3", refuse_while_capturing)
    launches = cuda.launches
    assert _pipe(folder, trt, cuda).generate(sample_image, PROMPT, max_new_tokens=6).tokens == want
    assert cuda.launches == launches and cuda.capturing is None and cuda.dropped == 3  # one per decoder engine


def test_buffers_are_sized_from_the_profiles(built):
    folder, trt, cuda = built
    pipe = _pipe(folder, trt, cuda)
    seg = pipe.segments[1].session
    prefill, decode = seg.profiles
    assert (prefill.name, decode.name) == ("prefill", "decode")
    assert cuda.size_of(prefill.buffers["hidden"].ptr) == 1 * 1024 * 64 * 4  # at the profile's max
    assert cuda.size_of(decode.buffers["hidden"].ptr) == 1 * 1 * 64 * 4
    assert cuda.size_of(prefill.buffers["new.8.key"].ptr) == 2 * 1024 * 16 * 4
    assert cuda.size_of(decode.buffers["new.8.key"].ptr) == 2 * 1 * 16 * 4
    assert cuda.size_of(prefill.buffers["score"].ptr) == 4 * 1024 * 4
    assert "cache.8.key" not in prefill.buffers and "cache.8.key" not in decode.buffers  # the runtime's KV buffers
    buf = pipe.backend.kv_buffer((1, 2, 37, 16), np.float32)
    assert buf.nbytes == cuda.size_of(buf.address) == 2 * 37 * 16 * 4
    assert not pipe.backend.to_host(buf.value).any()  # zeroed


def test_kv_write_touches_only_the_new_rows():
    cuda = FakeCuda()
    backend = TrtBackend(trt=make_trt(cuda), cuda=cuda)
    buf = backend.kv_buffer((1, 2, 9, 4), np.float32)
    old = np.random.default_rng(0).standard_normal((1, 2, 9, 4)).astype(np.float32)
    buf.write(old, 0)
    rows = np.full((1, 2, 3, 4), 7.0, dtype=np.float32)
    buf.write(rows, 5)  # from the host
    got = backend.to_host(buf.value)
    assert np.array_equal(got[:, :, 5:8], rows) and np.array_equal(got[:, :, :5], old[:, :, :5])
    assert np.array_equal(got[:, :, 8:], old[:, :, 8:])
    device = backend.kv_buffer((1, 2, 1, 4), np.float32)
    device.write(np.full((1, 2, 1, 4), -1.0, dtype=np.float32), 0)
    buf.write(device.value, 8)  # from the device, as a session output would be
    assert np.array_equal(backend.to_host(buf.value)[:, :, 8], np.full((1, 2, 4), -1.0))
    with pytest.raises(BackendError, match=r"KV write: rows \(1, 2, 3, 4\) float32 at 7 do not fit buffer"):
        buf.write(rows, 7)


def test_a_decode_step_copies_nothing_proportional_to_the_context(built, sample_image):
    folder, trt, cuda = built
    pipe = _pipe(folder, trt, cuda)
    ids, offset = pipe.encoder.encode(PROMPT)
    run = _Run()
    token = int(np.argmax(pipe.prefill(sample_image, ids, offset, run, max_new_tokens=4)))
    addresses = [b.address for bufs in run.caches for b in bufs]
    before = [pipe.backend.to_host(b.value) for bufs in run.caches for b in bufs]
    lengths = [n for n, bufs in zip(run.lengths, run.caches) for _ in bufs]
    cuda.copies.clear()
    pipe.decode_step(token, run)
    # input_ids; keep_index, position_ids, past_len per segment; one row per layer and K/V; logits [V]
    assert sum(cuda.copies) == 8 + 3 * 3 * 8 + 24 * 2 * (2 * 1 * 16 * 4) + 512 * 4
    assert max(cuda.copies) == 512 * 4 < min(b.nbytes for bufs in run.caches for b in bufs)
    assert [b.address for bufs in run.caches for b in bufs] == addresses
    after = [pipe.backend.to_host(b.value) for bufs in run.caches for b in bufs]
    for old, new, live in zip(before, after, lengths):
        assert np.array_equal(new[:, :, :live], old[:, :, :live])
        assert not np.array_equal(new[:, :, live], old[:, :, live])


def test_shapes_outside_every_profile_are_one_line(built):
    folder, trt, cuda = built
    pipe = _pipe(folder, trt, cuda)
    seg = pipe.segments[0]
    feeds = {"hidden": np.zeros((1, 2000, 64), np.float32), "keep_index": np.arange(2000),
             "position_ids": np.arange(2000)[None], "past_len": np.zeros(1, np.int64)}
    feeds.update((n, pipe.backend.kv_buffer((1, 2, 1, 16), np.float32).value) for n in seg.cache)
    with pytest.raises(BackendError, match=r"^engines/segment0\.engine: shapes \(hidden \(1, 2000, 64\).* lie "
                                           r"outside every optimization profile \(prefill, decode\)"):
        seg.session.run(feeds, ["hidden_out"])
    feeds.update(hidden=np.zeros((1, 5, 64), np.float16), keep_index=np.arange(5), position_ids=np.arange(5)[None])
    with pytest.raises(BackendError, match=r"input hidden is float16, the engine takes float32"):
        seg.session.run(feeds, ["hidden_out"])


def test_foreign_or_changed_engines_are_refused_in_one_line(built):
    folder, trt, _ = built
    with pytest.raises(BackendError, match=(
            r"^engines/vision\.engine: built for Fake GPU \(compute 8\.7\) with TensorRT 10\.3\.0; this machine "
            r"has Orin \(compute 8\.7\) with TensorRT 10\.3\.0; rebuild: feather-build .*export$")):
        _pipe(folder, trt, FakeCuda(gpu="Orin"))
    with pytest.raises(BackendError, match=r"with TensorRT 10\.3\.0; this machine has Fake GPU \(compute 8\.7\) "
                                           r"with TensorRT 10\.8\.0; rebuild"):
        _pipe(folder, make_trt(FakeCuda(), "10.8.0"), FakeCuda())
    engine = folder / "engines" / "segment1.engine"
    engine.write_bytes(engine.read_bytes() + b" ")
    with pytest.raises(BackendError, match=r"segment1\.engine: sha256 mismatch \(changed after feather-build\); "
                                           r"rebuild: feather-build"):
        _pipe(folder, trt, FakeCuda())
    m = load_manifest(folder)
    m.engines[3].graph_sha256 = "0" * 64
    save_manifest(m, folder)
    with pytest.raises(BackendError, match=r"^engines/segment1\.engine: built from another version of "
                                           r"segment1\.onnx; rebuild: feather-build"):
        _pipe(folder, trt, FakeCuda())
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["engines"] = []
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BackendError, match=r"^vision\.onnx: no TensorRT engine recorded in feather\.json; build "
                                           r"them on this machine: feather-build"):
        _pipe(folder, trt, FakeCuda())


def test_a_phased_chain_decodes_on_its_decode_engine(export_feather, tmp_path, sample_image, fake):
    folder = tmp_path / "phased"
    shutil.copytree(export_feather, folder)
    m = load_manifest(folder)
    for seg in m.segments:
        seg.decode_file, seg.decode_method = seg.file.replace(".onnx", ".decode.onnx"), "float"
        shutil.copy(folder / seg.file, folder / seg.decode_file)
    save_manifest(m, folder)
    trt, cuda = fake
    engines.build(folder, trt=trt, cuda=cuda, log=lambda s: None)
    got = _pipe(folder, trt, cuda).generate(sample_image, PROMPT, max_new_tokens=4)
    assert got.tokens == Pipeline.load(export_feather).generate(sample_image, PROMPT, max_new_tokens=4).tokens
    runs = [(name, p) for name, p, _ in trt.runs if name.startswith("segment")]
    assert runs.count(("segment0.onnx", 0)) == 1 and runs.count(("segment0.decode.onnx", 0)) == 3
    assert len(runs) == 3 * 4


def test_device_tensor_nbytes():
    assert DeviceTensor(0, (1, 2, 3), np.dtype(np.float16)).nbytes == 12


@pytest.mark.trt
def test_real_tensorrt_builds_and_matches_onnxruntime(export_feather, tmp_path, sample_image):
    """Needs tensorrt and cuda-python on a CUDA GPU: never run in this project's CI."""
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (NVIDIA's index only; see docs/tensorrt.md)")
    pytest.importorskip("cuda", reason="cuda-python is not installed")
    folder = tmp_path / "export"
    shutil.copytree(export_feather, folder)
    engines.build(folder, log=lambda s: None)
    got = Pipeline.load(folder, provider="tensorrt-native").generate(sample_image, PROMPT, max_new_tokens=8)
    want = Pipeline.load(export_feather).generate(sample_image, PROMPT, max_new_tokens=8)
    assert got.tokens == want.tokens and got.stages == want.stages
