"""ONNX Runtime session options the backend sets for speed, checked by their effect."""

from __future__ import annotations

import numpy as np

from feather.runtime.backends.onnxruntime import OrtBackend


def test_sessions_flush_denormals_to_zero(tmp_path):
    """Softmax weights of far-off scores land below float32's normal range; the backend's
    sessions treat them as zero (x86 computes on denormals many times slower)."""
    from types import SimpleNamespace

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Mul", ["x", "y"], ["z"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "xy"],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    path = tmp_path / "mul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x, y = np.array([1e-39, 1.0], np.float32), np.array([1.0, 1e-20], np.float32)  # a denormal, and a normal product
    spec = SimpleNamespace(file="mul.onnx", axes={})
    got = OrtBackend("cpu").open(path, spec, None).run({"x": x, "y": y}, ["z"])["z"].numpy()
    assert got[0] == 0.0 and got[1] == np.float32(1e-20)
    plain = OrtBackend("cpu", session_config={}).open(path, spec, None).run({"x": x, "y": y}, ["z"])["z"].numpy()
    assert plain[0] == np.float32(1e-39)  # without the setting ONNX Runtime keeps it
