"""For a machine with TensorRT and a CUDA GPU: build the engines of an export folder, check
the engine chain against the PyTorch reference (``feather-run --check``'s comparison), and
time it against ONNX Runtime (CUDA provider when present, else CPU), printing one table.

    python scripts/trt_check.py feather-export --model llava-hf/llava-1.5-7b-hf --runs 5

It builds into a copy unless ``--in-place``; ``--model`` is the checkpoint for the reference
(default: the manifest's source). Times are medians over ``--runs`` generations in this one
process, so compare the rows with each other (ratios), not with other runs.

Not run in this project (no TensorRT on its machines): the first user with TensorRT to run
it should report its table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from feather.build import engines
from feather.cli import SAMPLE_IMAGE
from feather.runtime import Pipeline
from feather.runtime.check import check


def _time(pipe: Pipeline, image, prompt: str, tokens: int, runs: int) -> dict:
    pipe.generate(image, prompt, max_new_tokens=tokens)  # warm-up: allocations, kernel choice
    results = [pipe.generate(image, prompt, max_new_tokens=tokens) for _ in range(runs)]
    med = lambda key: statistics.median(r.timings[key] for r in results)  # noqa: E731
    rates = [r.timings["decode_tokens_per_s"] for r in results if r.timings["decode_tokens_per_s"]]
    return {"ttft_s": med("ttft_s"), "llm_prefill_s": med("llm_prefill_s"),
            "decode_tok_s": statistics.median(rates) if rates else float("nan"), "tokens": results[0].tokens}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--model", default=None, help="checkpoint for the PyTorch reference (default: manifest's)")
    parser.add_argument("--image", default=str(SAMPLE_IMAGE))
    parser.add_argument("--prompt", default="What is in this image?")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--precision", default="as-exported", choices=engines.BUILD_MODES)
    parser.add_argument("--workspace-gb", type=float, default=None)
    parser.add_argument("--in-place", action="store_true", help="build into FOLDER itself")
    args = parser.parse_args(argv)

    folder = Path(args.folder)
    if not args.in_place:
        folder = Path(tempfile.mkdtemp(prefix="trt-check-")) / folder.name
        shutil.copytree(args.folder, folder)
    engines.build(folder, precision=args.precision, workspace_gb=args.workspace_gb)
    trt_pipe = Pipeline.load(folder, provider="tensorrt-native")
    _, report = check(trt_pipe, args.image, args.prompt, args.max_new_tokens, args.model)
    print("\n".join(f"check (tensorrt-native vs PyTorch): {line}" for line in report.lines()))

    from feather.runtime.backends.tensorrt import TrtBackend

    rows = [("tensorrt-native", trt_pipe),  # decode steps replayed as CUDA graphs
            ("trt, no cuda graphs", Pipeline.load(folder, backend=TrtBackend(cuda_graphs=False)))]
    for provider in ("cuda", "cpu"):
        try:
            rows.append((f"onnxruntime-{provider}", Pipeline.load(folder, provider=provider)))
            break
        except Exception as err:  # no CUDA provider in this onnxruntime: fall back to CPU
            print(f"onnxruntime-{provider}: {err}", file=sys.stderr)
    timed = [(name, _time(pipe, args.image, args.prompt, args.max_new_tokens, args.runs)) for name, pipe in rows]
    base = timed[-1][1]
    print(f"\n{'backend':<20} {'TTFT s':>9} {'prefill s':>10} {'decode tok/s':>13} {'TTFT x':>7} "
          f"{'decode x':>9} {'same tokens':>12}")
    for name, t in timed:
        print(f"{name:<20} {t['ttft_s']:>9.4f} {t['llm_prefill_s']:>10.4f} {t['decode_tok_s']:>13.1f} "
              f"{base['ttft_s'] / t['ttft_s']:>7.2f} {t['decode_tok_s'] / base['decode_tok_s']:>9.2f} "
              f"{str(t['tokens'] == base['tokens']):>12}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
