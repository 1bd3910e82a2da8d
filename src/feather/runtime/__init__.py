"""feather.runtime: run an exported FEATHER chain with ONNX Runtime (no torch, no transformers).

    from feather.runtime import Pipeline
    pipe = Pipeline.load("feather-export")
    print(pipe.generate("photo.jpg", "What is on the table?").text)

``Detokenizer`` (``pipe.encoder.stream()``) turns an answer's ids into text one id at a time.
"""

from feather.runtime.detokenize import Detokenizer
from feather.runtime.pipeline import Pipeline, Result

__all__ = ["Detokenizer", "Pipeline", "Result"]
