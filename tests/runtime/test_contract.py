"""The manifest is the whole contract, and caches are written in place.

- Renaming every graph tensor (graphs and feather.json together) changes nothing.
- A decode step neither moves nor copies a cache: buffer addresses are constant, rows
  before the live length are untouched, and ONNX Runtime's profile of the decode steps
  shows no node producing a cache-sized tensor (no Concat, Transpose or Expand of a cache).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from feather.errors import ManifestError
from feather.manifest import MANIFEST_NAME, Manifest, load_manifest, save_manifest
from feather.runtime import Pipeline
from feather.runtime.backends.onnxruntime import OrtBackend
from feather.runtime.pipeline import _Run

PROMPT = "What is in the image?"
KV_TEMPLATES = {"cache_key": "kv:%d:K:in", "cache_value": "kv:%d:V:in", "new_key": "kv:%d:K:out",
                "new_value": "kv:%d:V:out"}


def _rename_graph(path: Path, mapping: dict[str, str]) -> None:
    model = onnx.load(str(path))
    g = model.graph
    for node in g.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for v in [*g.input, *g.output, *g.value_info]:
        v.name = mapping.get(v.name, v.name)
    onnx.save(model, str(path))


def _renamed_copy(src: Path, dst: Path) -> Manifest:
    """Copy an export, give every graph input and output a new name, and rewrite feather.json."""
    shutil.copytree(src, dst)
    m = load_manifest(dst)
    for graph in (m.vision, m.embed, *m.segments):
        mapping = {}
        for roles in (graph.inputs, graph.outputs):
            for role, name in roles.items():
                mapping[name] = roles[role] = f"T{len(mapping)}/{role}"
        if graph.kv is not None:
            for layer in range(*graph.layers):
                old = graph.kv.names(layer)
                new = tuple(KV_TEMPLATES[k] % layer for k in ("cache_key", "cache_value", "new_key", "new_value"))
                mapping.update(zip(old, new))
            for key, template in KV_TEMPLATES.items():
                setattr(graph.kv, key, template)
        _rename_graph(dst / graph.file, mapping)
    save_manifest(m, dst)
    return m


def test_renamed_tensors_give_the_same_tokens(export_feather, tmp_path, sample_image):
    m = _renamed_copy(export_feather, tmp_path / "renamed")
    assert m.segments[1].inputs["hidden"] != "hidden" and m.segments[1].kv.cache_key == "kv:%d:K:in"
    graph = onnx.load(str(tmp_path / "renamed" / "segment1.onnx"), load_external_data=False).graph
    assert "kv:8:K:in" in [v.name for v in graph.input] and "hidden" not in [v.name for v in graph.input]
    want = Pipeline.load(export_feather).generate(sample_image, PROMPT, max_new_tokens=10)
    got = Pipeline.load(tmp_path / "renamed").generate(sample_image, PROMPT, max_new_tokens=10)
    assert got.tokens == want.tokens and got.stages == want.stages
    assert max(float(np.abs(a - b).max()) for a, b in zip(got.logits, want.logits)) == 0.0


def test_a_manifest_that_does_not_describe_its_graph_is_one_line(export_feather, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export_feather, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    data["segments"][2]["kv"]["cache_key"] = "cache.%d.k"
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"^segment2\.onnx: the graph has no tensor 'cache\.16\.k' that feather"):
        Pipeline.load(copy)


def test_decode_writes_only_new_rows_into_fixed_buffers(export_feather, sample_image):
    pipe = Pipeline.load(export_feather)
    ids, offset = pipe.encoder.encode(PROMPT)
    run = _Run()
    logits = pipe.prefill(sample_image, ids, offset, run, max_new_tokens=6)
    addresses = [b.address for bufs in run.caches for b in bufs]
    token = int(np.argmax(logits))
    for _ in range(5):
        before = [b.array.copy() for bufs in run.caches for b in bufs]
        lengths = list(run.lengths)
        token = int(np.argmax(pipe.decode_step(token, run)))
        assert [b.address for bufs in run.caches for b in bufs] == addresses
        bufs = [(b, n) for bufs, n in zip(run.caches, lengths) for b in bufs]
        for (buf, live), old in zip(bufs, before):
            assert np.array_equal(buf.array[:, :, :live], old[:, :, :live])  # history untouched
            assert not np.array_equal(buf.array[:, :, live], old[:, :, live])  # the new row written
            assert np.array_equal(buf.array[:, :, live + 1 :], old[:, :, live + 1 :])
    assert [bufs[0].array.shape[2] for bufs in run.caches] == [n for n in run.lengths]  # filled to capacity


def test_profile_of_decode_has_no_cache_sized_tensor(export_feather, tmp_path, sample_image):
    """Per decode step, each layer's cache is [1, KV, C, hd]; no node of a decode run may
    produce that many elements (a Concat, Transpose, Expand or copy of the cache would)."""
    pipe = Pipeline.load(export_feather, backend=OrtBackend(profile_dir=tmp_path))
    result = pipe.generate(sample_image, PROMPT, max_new_tokens=6)
    assert len(result.tokens) == 6
    d = pipe.manifest.dims
    for seg in pipe.segments:
        events = json.loads(Path(seg.session.end_profiling()).read_text())
        runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
        prefill_end = runs[0]["ts"] + runs[0]["dur"]
        capacity = result.prompt_tokens  # a lower bound on every segment's capacity ...
        capacity = seg.spec.n_image_in + (capacity - d.n_image)  # ... this segment's live rows at prefill
        cache_elems = d.kv_heads * capacity * d.head_dim
        decode_nodes = [e for e in events if e.get("cat") == "Node" and e["ts"] > prefill_end
                        and e["name"].endswith("_kernel_time")]
        assert len(decode_nodes) > 100
        biggest = max(int(np.prod(next(iter(s.values())))) for e in decode_nodes
                      for s in e["args"].get("output_type_shape", []))
        ops = {e["args"]["op_name"] for e in decode_nodes}
        assert biggest < cache_elems // 2, (seg.spec.file, biggest, cache_elems)
        assert "FusedMatMul" in ops or "MatMul" in ops


def test_decode_steps_run_the_manifests_decode_graph(export_feather, tmp_path, sample_image):
    """A segment may name a second graph for decode steps (a quantized chain runs prefill on
    INT8 graphs and decode on INT4 ones); the runtime opens it and decodes with it."""
    copy = tmp_path / "phased"
    shutil.copytree(export_feather, copy)
    m = load_manifest(copy)
    for seg in m.segments:
        seg.decode_file = seg.file.replace(".onnx", ".decode.onnx")
        seg.decode_method = "float"
        shutil.copy(copy / seg.file, copy / seg.decode_file)
    save_manifest(m, copy)
    pipe = Pipeline.load(copy)
    calls = {"prefill": 0, "decode": 0}
    for seg in pipe.segments:
        assert seg.decode is not seg.session
        for name, session in (("prefill", seg.session), ("decode", seg.decode)):
            run = session.run
            session.run = lambda feeds, outputs, run=run, name=name: (calls.__setitem__(name, calls[name] + 1),
                                                                       run(feeds, outputs))[1]
    got = pipe.generate(sample_image, PROMPT, max_new_tokens=5)
    assert calls == {"prefill": 3, "decode": 3 * 4}
    assert got.tokens == Pipeline.load(export_feather).generate(sample_image, PROMPT, max_new_tokens=5).tokens
    (copy / "segment1.decode.onnx").unlink()
    with pytest.raises(ManifestError, match=r"segment1\.decode\.onnx: missing \(named by feather.json "
                                            r"segments\[1\]\.decode_file\)"):
        Pipeline.load(copy)
