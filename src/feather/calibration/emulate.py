"""The kernel reference: a quantized graph's own integer arithmetic, computed exactly in float.

A quantized graph's error against the float graph has two parts: what the quantization itself
costs (the weights' and activations' rounding: a property of the method and the model) and
what the host's kernels add on top. The second part should be nothing: ONNX Runtime's u8 x s8
kernels on x86 without VNNI add product pairs in 16 bits with saturation (``vpmaddubsw``), and
a weight format without headroom turns that into a 0.46 relative error where the same folder
gives 0.07 on a VNNI host (docs/quantization.md). The report separates the two by running each
quantized graph a second time as this reference, with the same rounding and no fast kernel:

    MatMulInteger(a, w, za, zw)  ->  Cast(MatMul(float(a) - za, float(w - zw)), int32)
    QDQ graphs                   ->  unchanged, run with graph optimizations off, so ONNX
                                     Runtime does not fuse DequantizeLinear -> MatMul into an
                                     integer kernel (DequantizeLinear is exact)
    MatMulNBits                  ->  accuracy_level 1 (fp32 compute on the dequantized weights)

The first two are exact (integer sums below 2^24 per term, float32 accumulation); the third
drops the int8 rounding of activations that accuracy_level 4 applies, so its bound allows for
that (``methods.KERNEL_SLACK``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def reference_session(path: Path, threads: int | None = None):
    """An ``InferenceSession`` computing the graph at ``path`` by the reference above."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    rewrite(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    with tempfile.TemporaryDirectory(prefix="feather-emulate-") as work:
        dst = Path(work) / "reference.onnx"
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="reference.onnx.data", size_threshold=1 << 20)
        # the session reads the external data while it is created; the folder may go after
        return ort.InferenceSession(str(dst), sess_options=options, providers=["CPUExecutionProvider"])


def rewrite(model) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place; returns how many nodes changed."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, changed = [], 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = 1
            changed += 1
        if node.op_type != "MatMulInteger" or node.input[1] not in inits:
            nodes.append(node)
            continue
        a, w = node.input[0], node.input[1]
        za = node.input[2] if len(node.input) > 2 else ""
        zw = node.input[3] if len(node.input) > 3 else ""
        wq = numpy_helper.to_array(inits[w]).astype(np.float32)
        if zw:
            wq = wq - numpy_helper.to_array(inits[zw]).astype(np.float32)
        base = f"{node.name or node.output[0]}/emulate"
        wf = f"{base}/weight"
        model.graph.initializer.append(numpy_helper.from_array(wq.astype(np.float32), wf))
        af = f"{base}/a"
        nodes.append(helper.make_node("Cast", [a], [af], to=onnx_float(), name=f"{base}/cast_a"))
        if za:
            nodes.append(helper.make_node("Cast", [za], [f"{base}/za"], to=onnx_float(), name=f"{base}/cast_za"))
            nodes.append(helper.make_node("Sub", [af, f"{base}/za"], [f"{base}/a0"], name=f"{base}/sub_za"))
            af = f"{base}/a0"
        nodes.append(helper.make_node("MatMul", [af, wf], [f"{base}/y"], name=f"{base}/matmul"))
        nodes.append(helper.make_node("Cast", [f"{base}/y"], [node.output[0]], to=onnx_int32(), name=f"{base}/cast_y"))
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)  # the integer weights the float copies replaced
    return changed


def onnx_float() -> int:
    from onnx import TensorProto

    return TensorProto.FLOAT


def onnx_int32() -> int:
    from onnx import TensorProto

    return TensorProto.INT32
