"""The quantization methods: one entry per ``--method``, each built on onnxruntime.quantization.

    method     target        graphs (MatMuls with a constant weight; see ``weight_matmuls``)
    int8       onnxruntime   dynamic INT8: DynamicQuantizeLinear + MatMulInteger, per-channel weights
                             in [-64, 63] (REDUCE_RANGE: headroom for x86 without VNNI)
    int4       onnxruntime   weight-only INT4: com.microsoft MatMulNBits, block 128, accuracy_level 4
    int8-int4  onnxruntime   prefill runs the int8 graph, decode steps the int4 graph (decode_file)
    int8-qdq   portable      static INT8 QDQ (calibrated), symmetric (zero points 0), opset 17,
                             weights in [-64, 63] as for int8
    int4-qdq   portable      weight-only INT4 QDQ: DequantizeLinear(block_size 128), opset 21
    fp8-qdq    portable      static FP8 E4M3 QDQ (calibrated), opset 19

Only MatMuls whose second input is an initializer (the linear layers) are quantized: the
attention MatMuls between activations and the KV cache, the masks' Add and the softmaxes stay
in float (quantizing the causal mask's Add is the known NaN trap). The LM head stays float
unless asked (it is the last segment's [d, vocab] MatMul).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feather.errors import ConfigError

BLOCK = 128
ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (the fast CPU path)
REDUCE_RANGE = True  # int8 weights in [-64, 63]: no u8 x s8 pair sum overflows 16 bits (docs/quantization.md)


@dataclass(frozen=True)
class Method:
    """One ``--method``: its target, opset, the quantizer of the prefill graph and, where the
    method splits by phase, of the decode graph; ``bound``: the per-segment relative error the
    accuracy report accepts (see docs/quantization.md for why); ``logits_abs``: the tolerance
    recorded in the manifest for ``feather-run --check``."""

    name: str
    target: str
    weights: str  # what the prefill graph's weights are: the manifest's per-graph method
    decode_weights: str | None
    opset: int | None  # the opset the graphs are converted to first (None: keep the export's)
    calibrated: bool  # needs activation ranges from the capture
    bound: float
    logits_abs: float
    head: bool = False  # the LM head quantized by default too (measured: docs/quantization.md, "What is
    # quantized"); ``--no-quantize-lm-head`` keeps it float. The vision tower stays float unless asked.


METHODS = {
    m.name: m for m in (
        # bounds and tolerances: docs/quantization.md ("The check"); 4-bit and FP8 bounds only
        # catch a broken quantization until a trained checkpoint can judge them
        Method("int8", "onnxruntime", "int8", None, None, False, 0.6, 6.0, head=True),
        Method("int4", "onnxruntime", "int4", None, None, False, 1.5, 30.0),
        Method("int8-int4", "onnxruntime", "int8", "int4", None, False, 1.5, 30.0, head=True),
        Method("int8-qdq", "portable", "int8-qdq", None, None, True, 0.6, 6.0),
        Method("int4-qdq", "portable", "int4-qdq", None, 21, False, 1.5, 30.0),
        Method("fp8-qdq", "portable", "fp8-qdq", None, 19, True, 1.5, 30.0),
    )
}


KERNEL_SLACK = 1.25
KERNEL_FLOOR = 0.005
"""The kernel check, the same for every method and every CPU: run by run, a quantized graph's
relative error against the float graph may be at most ``KERNEL_SLACK`` times what its exact
integer reference gives on the same feeds (``emulate``: the same rounding, no fast kernel),
plus ``KERNEL_FLOOR``. The host's kernels may round differently (a fused kernel's float order
flips an activation's quantization level now and then, and random layers amplify it:
||q - r|| / ||r|| reached 0.05 on the bench geometry's segment 0 on a VNNI host) but must not
add error. Measured per-run ratios of healthy kernels: 1.00-1.05 (tiny, every method, on
AVX-512 VNNI, AVX2 under qemu Haswell and aarch64 under qemu cortex-a76; int4's 1.046 is its
reference's missing activation rounding), up to 1.08 (bench geometry, VNNI). Full-range
int8 weights on AVX2: 3.3-13.7x (tiny), 3.3x on one bench decode run.
docs/quantization.md ("Every CPU")."""


def get(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method: got {name!r}, expected one of {', '.join(METHODS)}")
    return METHODS[name]


def weight_matmuls(model, skip_lm_head: bool, logits: str | None) -> tuple[list[str], list[str]]:
    """(names of MatMuls with a 2-D initializer weight, the LM-head ones among them). The LM
    head is found by the graph, not by its shape: the weight MatMul that the ``logits`` output
    comes from (a [d, vocab] weight can have the shape of a [d, d] projection: the benchmark
    checkpoint has d = vocab = 512). With ``skip_lm_head`` it is left out of the first list."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2
               and len(inits.get(n.input[1], ())) == 2]
    heads = [lm_head(model, logits)] if logits else []
    heads = [h for h in heads if h is not None]
    names = [n.name for n in weights if not (skip_lm_head and n.name in heads)]
    return names, heads


def lm_head(model, logits: str) -> str | None:
    """The name of the weight MatMul upstream of the graph output ``logits`` (the LM head;
    ``feather.export.tied.lm_head`` finds it)."""
    from feather.export.tied import lm_head as find

    node = find(model, logits)
    return node.name if node is not None else None


Quantizer = Callable[..., None]


def int8_dynamic(src: Path, dst: Path, nodes: list[str], reader=None) -> None:
    """ONNX Runtime's dynamic INT8: weights int8 per output channel, activations uint8 per
    tensor at run time (DynamicQuantizeLinear), MatMulInteger between them."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, per_channel=True,
                         weight_type=QuantType.QInt8, reduce_range=REDUCE_RANGE,
                         extra_options={"MatMulConstBOnly": True}, use_external_data_format=_large(src))


def int4_nbits(src: Path, dst: Path, nodes: list[str], reader=None, qdq: bool = False) -> None:
    """Weight-only INT4, symmetric, block 128 along K: ``MatMulNBits`` (accuracy_level 4) or,
    with ``qdq``, ``DequantizeLinear(block_size=128)`` + MatMul (opset 21)."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    fmt = QuantFormat.QDQ if qdq else QuantFormat.QOperator
    # nodes_to_include alone is not honoured by every onnxruntime version (the LM head was
    # quantized with it); excluding the other MatMuls by name is
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in set(nodes)]
    quant = MatMulNBitsQuantizer(model, bits=4, block_size=BLOCK, is_symmetric=True,
                                 accuracy_level=None if qdq else ACCURACY_LEVEL, nodes_to_include=nodes,
                                 nodes_to_exclude=exclude, quant_format=fmt, op_types_to_quantize=("MatMul",))
    with _quiet():
        quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=_large(src))


def int4_qdq(src: Path, dst: Path, nodes: list[str], reader=None) -> None:
    int4_nbits(src, dst, nodes, reader, qdq=True)


def int8_qdq(src: Path, dst: Path, nodes: list[str], reader=None) -> None:
    """Static INT8 QDQ, the form TensorRT consumes: activations per tensor, weights per output
    channel, both symmetric (zero points 0), ranges from the capture (MinMax)."""
    from onnxruntime.quantization import QuantType

    _static(src, dst, nodes, reader, QuantType.QInt8, per_channel=True)


def fp8_qdq(src: Path, dst: Path, nodes: list[str], reader=None) -> None:
    """Static FP8 (E4M3) QDQ: per-tensor scales for activations and weights, zero points 0."""
    from onnxruntime.quantization import QuantType

    _static(src, dst, nodes, reader, QuantType.QFLOAT8E4M3FN, per_channel=False)


def _static(src: Path, dst: Path, nodes: list[str], reader, qtype, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # onnxruntime calibrates FP8 only from histograms (Distribution); INT8 takes min/max
    how = CalibrationMethod.Distribution if qtype == QuantType.QFLOAT8E4M3FN else CalibrationMethod.MinMax
    with _quiet():
        quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        nodes_to_quantize=nodes, per_channel=per_channel, activation_type=qtype,
                        weight_type=qtype, calibrate_method=how, reduce_range=REDUCE_RANGE and qtype == QuantType.QInt8,
                        use_external_data_format=_large(src),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "MatMulConstBOnly": True, "CalibStridedMinMax": 1})


QUANTIZERS: dict[str, Quantizer] = {"int8": int8_dynamic, "int4": int4_nbits, "int8-qdq": int8_qdq,
                                    "int4-qdq": int4_qdq, "fp8-qdq": fp8_qdq}
"""The per-graph quantizer for each weights kind a manifest records."""


class Reader:
    """A ``CalibrationDataReader`` over captured feeds (prefill and decode runs alike).

    Runs differ in shape (prompt lengths, S = 1 at decode), which onnxruntime's histogram
    calibration cannot stack; ``set_range`` lets ``quantize_static`` feed them one at a time
    (its ``CalibStridedMinMax`` option, stride 1), merging the ranges or histograms."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], input_names: set[str]):
        self.feeds = [{k: v for k, v in f.items() if k in input_names} for f in feeds]
        self.set_range(0, len(self.feeds))

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter: Iterator = iter(self.feeds[start_index:end_index])

    def get_next(self):
        return next(self._iter, None)

    def __len__(self) -> int:
        return len(self.feeds)


def reader_class():
    """``Reader`` as a subclass of onnxruntime's ``CalibrationDataReader`` (imported lazily)."""
    from onnxruntime.quantization import CalibrationDataReader

    return type("CaptureReader", (Reader, CalibrationDataReader), {})


def infer_shapes(src: Path, work: Path) -> Path:
    """``src`` with ONNX shape inference run on it, in ``work``: the pre-processing ONNX Runtime's
    quantizers ask for (they read activation types from value_info). ``infer_shapes_path`` keeps
    external data where it is, so a graph over 2 GB (and a tied embedding's shared file) gets its
    data file copied beside the new one."""
    import onnx

    dst = work / f"shaped-{src.name}"
    onnx.shape_inference.infer_shapes_path(str(src), str(dst))
    from feather.export.tied import SHARED_FILE

    for data in (Path(str(src) + ".data"), src.parent / SHARED_FILE):  # its own data, a tied embedding's
        if data.exists() and not (work / data.name).exists():
            _link(data, work / data.name)
    return dst


def _link(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src``: onnx refuses external data behind a symbolic link or a file
    with several hard links (its guard against link attacks), so the work folder gets its own."""
    import shutil

    shutil.copyfile(src, dst)


def convert_opset(src: Path, dst: Path, opset: int) -> None:
    """``src`` rewritten at ``opset`` by onnx's version converter (ReduceMean's axes become an
    input at 18, and so on), saved as ``dst``."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    model = version_converter.convert_version(model, opset)
    model.ir_version = max(model.ir_version, 10 if opset >= 21 else 9)
    onnx.save_model(model, str(dst), save_as_external_data=_large(src), all_tensors_to_one_file=True,
                    location=dst.name + ".data")


def _large(src: Path) -> bool:
    """Whether a graph's own weights need external data (a shared tied embedding, which the
    quantizers load inline and ``tied.reshare`` points back at, does not count)."""
    return Path(src).stat().st_size >= (1 << 31) or Path(str(src) + ".data").exists()


class _quiet:
    """onnxruntime.quantization logs lines per tensor (logging) and prints calibration notes
    (stdout); keep the CLI's output (and its --json on stdout) ours."""

    def __enter__(self):
        self.level = logging.root.level
        logging.root.setLevel(logging.ERROR)
        self.stdout = contextlib.redirect_stdout(io.StringIO())
        self.stdout.__enter__()

    def __exit__(self, *exc):
        self.stdout.__exit__(*exc)
        logging.root.setLevel(self.level)
