"""Ask a feather model served by Triton Inference Server (``feather-serve --triton-repo``).

    pip install "tritonclient[http]"
    python examples/triton_client.py photo.jpg "What is on the table?" --url 127.0.0.1:8000

Sends the encoded file as IMAGE_BYTES (a camera frame: encode it to PNG or JPEG first) and
prints the answer; --json prints the tokens, the kept image indices per pruning stage and
the timings as well.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def ask(url: str, image_path: str, prompt: str, max_tokens: int = 32, model: str = "feather") -> dict:
    """One request; -> {"text", "tokens", "stages", "timings"}."""
    import tritonclient.http as http

    inputs = []

    def add(name: str, value: np.ndarray, dtype: str) -> None:
        tensor = http.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)

    add("PROMPT", np.array([prompt.encode()], dtype=np.object_), "BYTES")
    with open(image_path, "rb") as f:
        add("IMAGE_BYTES", np.array([f.read()], dtype=np.object_), "BYTES")
    add("MAX_TOKENS", np.array([max_tokens], dtype=np.int32), "INT32")
    client = http.InferenceServerClient(url)
    result = client.infer(model, inputs)
    extra = json.loads(result.as_numpy("FEATHER")[0])
    return {"text": result.as_numpy("TEXT")[0].decode(), "tokens": result.as_numpy("TOKENS").tolist(), **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("prompt")
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP endpoint (default: %(default)s)")
    parser.add_argument("--model", default="feather")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    answer = ask(args.url, args.image, args.prompt, args.max_tokens, args.model)
    print(json.dumps(answer) if args.json else answer["text"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
