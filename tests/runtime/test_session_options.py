"""What the runtime does against denormal numbers (x86 computes on them many times slower),
checked by effect: the session option, and the exported graphs' floor on softmax exponents."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx

PROBE = """
import numpy as np, onnx, sys
from pathlib import Path
from types import SimpleNamespace
from onnx import TensorProto, helper
from feather.runtime.backends.onnxruntime import OrtBackend
g = helper.make_graph([helper.make_node("Mul", ["x", "y"], ["z"])], "g",
                      [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "xy"],
                      [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])
backend = OrtBackend("cpu") if sys.argv[2] == "default" else OrtBackend("cpu", session_config={})
session = backend.open(Path(sys.argv[1]), SimpleNamespace(file="mul.onnx", axes={}), None)
x, y = np.array([1e-39, 1.0], np.float32), np.array([1.0, 1e-20], np.float32)
print(repr([float(v) for v in session.run({"x": x, "y": y}, ["z"])["z"].numpy()]))
"""


def _probe(tmp_path, which: str) -> list[float]:
    # a fresh process each: ONNX Runtime applies the option to the calling thread only for the
    # first session a process creates, so this test's own process (many sessions) cannot tell
    run = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / f"{which}.onnx"), which],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return [float(v) for v in run.stdout.strip().splitlines()[-1].strip("[]").split(",")]


def test_sessions_flush_denormals_to_zero(tmp_path):
    assert _probe(tmp_path, "default") == [0.0, float(np.float32(1e-20))]  # the denormal product is 0
    assert _probe(tmp_path, "plain")[0] == float(np.float32(1e-39))  # without the option it stays


def test_softmax_exponents_are_floored(export_feather):
    """Every Exp of a segment graph takes Clip(s - max, min = EXP_FLOOR): no weight can become
    denormal, whatever the thread's floating-point mode (see docs/architecture.md)."""
    from feather.export.segments import EXP_FLOOR

    for name in ("segment0.onnx", "segment1.onnx", "segment2.onnx"):
        graph = onnx.load(str(export_feather / name), load_external_data=False).graph
        producer = {out: node for node in graph.node for out in node.output}
        consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                       if n.op_type == "Constant" and n.attribute[0].type == onnx.AttributeProto.TENSOR})
        exps = [n for n in graph.node if n.op_type == "Exp"]
        assert exps, name
        for node in exps:
            clip = producer[node.input[0]]
            assert clip.op_type == "Clip", (name, clip.op_type)
            assert float(consts[clip.input[1]]) == EXP_FLOOR
