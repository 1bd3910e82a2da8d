"""A tied embedding stored once: the embed graph and the last segment's LM head read one file.

A checkpoint with ``tie_word_embeddings`` (Qwen1.5-0.5B: a 151,936 x 1024 matrix, 622 MB in
fp32) has one matrix E that the embedding looks rows up in and the LM head multiplies by. Traced
apart, the embed graph stores E and the last segment stores E^T (the head's MatMul weight): the
same numbers twice on disk, and twice in memory once ONNX Runtime has loaded both.

After export, ``share`` writes E^T once, to ``SHARED_FILE`` in the head's [d, V] layout, and
points both graphs at it as external data (same file, same offset):

* the LM head is unchanged (its MatMul reads the same [d, V] weight, so its numbers are too);
* the embed graph looks a row up as ``Gather(E^T, ids, axis=1) -> [d, 1, S]`` then
  ``Transpose(perm=[1, 2, 0]) -> [1, S, d]``: exact, and a column gather of S (prefill) or 1
  (decode) ids.

ONNX Runtime maps external data from the file, so the two sessions share its pages. feather.json
hashes the file like any other. ``reshare`` does the same for the graphs ``feather-quantize``
rewrites, when the head was left in float (``--no-quantize-lm-head``; int4 and QDQ by default):
a quantizer copies the float weight into its own output, and ``reshare`` points it back at the
shared file. A quantized head (int8 and int8-int4 by default) has its own weight; the embed graph
keeps the shared float matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHARED_FILE = "tied_embedding.data"
"""The one file holding a tied checkpoint's E^T ([hidden, vocab]), beside the graphs."""


def lm_head(model, logits: str):
    """The weight ``MatMul`` node upstream of the graph output ``logits``, through the ops that
    follow it (Gather / Slice / Reshape / Squeeze of the last position); None if there is none."""
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    frontier, seen = [logits], set()
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
            return node
        frontier.extend(i for i in node.input if i not in inits)
    return None


def share(folder: Path, embed_file: str, final_file: str, logits: str) -> bool:
    """Store the tied matrix of ``folder``'s embed graph and last segment once (see the module
    docstring). Returns False, changing nothing, when the head's weight is not the embedding's
    transpose (an untied checkpoint)."""
    import onnx
    from onnx import helper, numpy_helper

    embed = onnx.load(str(folder / embed_file))
    final = onnx.load(str(folder / final_file))
    gather = next((n for n in embed.graph.node if n.op_type == "Gather"), None)
    head = lm_head(final, logits)
    if gather is None or head is None:
        return False
    e_init = _initializer(embed, gather.input[0])
    w_init = _initializer(final, head.input[1])
    e, w = numpy_helper.to_array(e_init), numpy_helper.to_array(w_init)
    if e.ndim != 2 or w.shape != e.shape[::-1] or e.dtype != w.dtype or not np.array_equal(e.T, w):
        return False
    np.ascontiguousarray(w).tofile(folder / SHARED_FILE)
    _point_at_shared(w_init, w)
    # the embed graph: Gather(E^T, ids, axis=1) [d, 1, S] -> Transpose [1, S, d], E^T shared
    ids, out = gather.input[1], gather.output[0]
    et_init = onnx.TensorProto()
    et_init.CopyFrom(w_init)
    et_init.name = e_init.name + ".T"
    embed.graph.initializer.remove(e_init)
    embed.graph.initializer.append(et_init)
    index = list(embed.graph.node).index(gather)
    embed.graph.node.remove(gather)
    cols = out + ".columns"
    embed.graph.node.insert(index, helper.make_node("Gather", [et_init.name, ids], [cols], axis=1,
                                                    name="embed_columns"))
    embed.graph.node.insert(index + 1, helper.make_node("Transpose", [cols], [out], perm=[1, 2, 0],
                                                        name="embed_rows"))
    _save(embed, folder / embed_file)
    _save(final, folder / final_file)
    return True


def reshare(folder: Path, graph_files: list[str]) -> list[str]:
    """Point every initializer of ``graph_files`` whose bytes equal ``SHARED_FILE``'s at that
    file (a quantizer copied the float head into its own output). Returns the files changed;
    nothing happens in a folder without the shared file."""
    import onnx
    from onnx import numpy_helper

    shared_path = folder / SHARED_FILE
    if not shared_path.exists():
        return []
    size, shared, changed = shared_path.stat().st_size, None, []
    for name in graph_files:
        model = onnx.load(str(folder / name))
        hits = 0
        for init in model.graph.initializer:
            if _nbytes(init) != size:
                continue
            w = numpy_helper.to_array(init)
            shared = np.fromfile(shared_path, dtype=w.dtype) if shared is None or shared.dtype != w.dtype else shared
            if shared.size == w.size and np.array_equal(shared, w.reshape(-1)):
                _point_at_shared(init, w)
                hits += 1
        if hits:
            _save(model, folder / name)
            changed.append(name)
    return changed


def _initializer(model, name: str):
    return next(i for i in model.graph.initializer if i.name == name)


def _nbytes(init) -> int:
    from onnx import helper

    n = int(np.prod(init.dims)) if init.dims else 1
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def _point_at_shared(init, array: np.ndarray) -> None:
    """Make ``init`` an external-data reference to the whole of ``SHARED_FILE``."""
    from onnx import TensorProto

    init.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        init.ClearField(field)
    del init.external_data[:]
    init.data_location = TensorProto.EXTERNAL
    for key, value in (("location", SHARED_FILE), ("offset", "0"), ("length", str(array.nbytes))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value


def _save(model, path: Path) -> None:
    """Re-save ``path`` (loaded whole in memory): its own weights in ``path.data`` when they need
    external data (over protobuf's 2 GB), else inline; the shared reference is kept as it is."""
    import onnx

    from feather.export.onnx_io import EXTERNAL_DATA_BYTES

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # its contents are in memory; onnx would append to the old file
    if sum(len(i.raw_data) for i in model.graph.initializer) >= EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
