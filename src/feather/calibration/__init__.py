"""feather.calibration: ``feather-quantize``, INT8 / INT4 / FP8 graphs calibrated through the pruned chain.

    from feather.calibration import quantize
    done = quantize("feather-export", method="int8-int4", output="feather-int8-int4")
    print("\\n".join(done.report.lines()))

Calibration sets (``data``), capture through the float chain behind the runtime's backend
seam (``capture``), the methods on onnxruntime.quantization (``methods``), the accuracy
report (``report``); the output is an export folder like any other (docs/quantization.md).
"""

from feather.calibration.api import Quantized, quantize
from feather.calibration.capture import Capture, RecordingBackend, record
from feather.calibration.data import Sample, default_set, load_set
from feather.calibration.methods import METHODS, Method
from feather.calibration.report import Report, evaluate

__all__ = ["METHODS", "Capture", "Method", "Quantized", "RecordingBackend", "Report", "Sample", "record",
           "default_set", "evaluate", "load_set", "quantize"]
