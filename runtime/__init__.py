"""feather.runtime: run an exported FEATHER chain with ONNX Runtime (no torch, no transformers).

    from feather.runtime import Pipeline
    pipe = Pipeline.load("feather-export")
    print(pipe.generate("photo.jpg", "What is on the table?").text)
"""

from feather.runtime.pipeline import Pipeline, Result

__all__ = ["Pipeline", "Result"]
