"""Writing one graph: torch -> ONNX, then the checks every graph must pass.

The exporter is torch's TorchScript-based ``torch.onnx.export(dynamo=False)``: it keeps our
tensor names, handles zero-length pasts, and exports the tiny chain in well under a
second per graph (the dynamo exporter took ~30x longer on the same module here).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from feather.errors import ValidationError
from feather.text import first_line

# Operators TensorRT's ONNX parser supports (onnx-tensorrt operators.md, TRT 10) that our
# graphs may use. Anything else (Unique, NonZero, Loop, If, Scan, sequence ops, ...) is
# refused: data-dependent shapes and control flow do not build into static engines.
ALLOWED_OPS = frozenset(
    """Abs Add And ArgMax Cast Ceil Clip Concat Constant ConstantOfShape Conv Cos CumSum Div
    Einsum Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm Greater
    GreaterOrEqual Identity LayerNormalization Less LessOrEqual Log MatMul Max Min Mod Mul Neg Not
    Or Pow Range Reciprocal ReduceMax ReduceMean ReduceMin ReduceSum Relu Reshape Shape Sigmoid Sin
    Slice Softmax Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu Unsqueeze Where Xor
    DequantizeLinear QuantizeLinear""".split()
)
ORT_OPS = frozenset("MatMulInteger DynamicQuantizeLinear QLinearMatMul ConvInteger QLinearConv".split())
"""Standard-domain operators ONNX Runtime runs well and TensorRT does not parse."""
TARGET_OPS = {"portable": (ALLOWED_OPS, frozenset()),
              "onnxruntime": (ALLOWED_OPS | ORT_OPS, frozenset({"com.microsoft"}))}
"""Per export target (``feather.manifest.TARGETS``): (standard operators allowed, extra domains
whose every operator is allowed).
``portable`` graphs build as TensorRT engines and run in any ONNX runtime (QDQ included);
``onnxruntime`` graphs may also use ONNX Runtime's own fused operators (``com.microsoft``:
MatMulNBits, FusedMatMul, ...) where they pay, e.g. quantized graphs."""
EXTERNAL_DATA_BYTES = 1 << 31  # protobuf's 2 GB limit


def export_module(module, args: tuple, path: Path, opset: int) -> None:
    """Trace ``module`` on ``args`` into ``path`` with its declared names and dynamic axes."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=module.input_names, output_names=module.output_names,
            dynamic_axes=module.dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def check_graph(path: Path, target: str = "portable") -> set[str]:
    """``onnx.checker`` full check plus the ``target``'s operator allow-list. Returns the op
    types used; raises ``ValidationError`` naming the graph and the refused operators."""
    import onnx

    if target not in TARGET_OPS:
        raise ValidationError(f"target: got {target!r}, expected one of {', '.join(TARGET_OPS)}")
    allowed, domains = TARGET_OPS[target]
    model = onnx.load(str(path), load_external_data=False)
    nodes = list(_all_nodes(model.graph))
    ops = {node.op_type for node in nodes}
    refused = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in nodes
                      if not (n.domain in domains or (n.domain in ("", "ai.onnx") and n.op_type in allowed))})
    if refused:
        why = "not TensorRT-buildable as static shapes" if target == "portable" else "not for ONNX Runtime"
        raise ValidationError(
            f"{path.name}: operators {', '.join(refused)} are not allowed for target {target} ({why}); "
            f"expected only operators from feather.export.onnx_io.TARGET_OPS[{target!r}]"
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ValidationError(f"{path.name}: onnx.checker failed: {first_line(err)}") from None
    return ops


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:  # subgraphs (If/Loop bodies) count too
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)


def weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def output_shapes(module, args: tuple) -> dict[str, tuple[int, ...]]:
    """The concrete output shapes of ``module`` on ``args`` (the traced example)."""
    import torch

    with torch.no_grad():
        outs = module(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {name: tuple(t.shape) for name, t in zip(module.output_names, outs)}


def finalize(work: Path, final: Path, dynamic_axes: dict, shapes: dict[str, tuple[int, ...]], external: bool) -> None:
    """Re-save the traced graph ``work`` as ``final``: output dims that are not dynamic get
    their fixed size (the tracer names them ``Addhidden_out_dim_0``), dynamic ones their axis
    name; weights go into one ``final.data`` file when ``external`` (graphs over 2 GB, where
    the tracer itself scatters one file per tensor beside ``work``)."""
    import onnx

    model = onnx.load(str(work))  # also reads any external data the tracer wrote beside it
    for out in model.graph.output:
        dyn = dynamic_axes.get(out.name, {})
        for i, dim in enumerate(out.type.tensor_type.shape.dim):
            dim.Clear()
            if i in dyn:
                dim.dim_param = dyn[i]
            else:
                dim.dim_value = shapes[out.name][i]
    if external:
        onnx.save_model(model, str(final), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=final.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(final))
