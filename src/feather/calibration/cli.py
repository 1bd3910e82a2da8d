"""feather-quantize: a floating-point export folder -> an INT8 / INT4 / FP8 export folder."""

from __future__ import annotations

import argparse
import json
import sys

from feather import cli
from feather.calibration.methods import METHODS


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="feather-quantize",
        description="Quantize a feather export (fp32) with onnxruntime.quantization, calibrated on the activations "
        "the pruned chain really sees, and report what it does to each graph and to the kept tokens.",
    )
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="a floating-point feather export folder")
    parser.add_argument("--method", default="int8", choices=tuple(METHODS), metavar="METHOD",
                        help="int8, int4, int8-int4 (ONNX Runtime target); int8-qdq, int4-qdq, fp8-qdq "
                             "(TensorRT target: QDQ, standard operators) (default: %(default)s)")
    parser.add_argument("--output", "-o", default=None,
                        help="output folder (default: EXPORT_DIR-METHOD)")
    parser.add_argument("--calibration", default=None, metavar="FILE.jsonl",
                        help='JSONL of {"image": path, "prompt": text} lines, paths relative to the file '
                             "(default: the sample picture with a few prompts)")
    parser.add_argument("--steps", type=cli.int_in(1, 256), default=8,
                        help="greedy tokens per calibration prompt for the chain comparison (default: %(default)s)")
    parser.add_argument("--quantize-vision", action=argparse.BooleanOptionalAction, default=None,
                        help="quantize the vision tower too (default: no; docs/quantization.md says what it "
                             "buys and costs)")
    parser.add_argument("--quantize-lm-head", action=argparse.BooleanOptionalAction, default=None,
                        help="quantize the LM head too (default: yes for int8 and int8-int4, no for the others)")
    cli.add_threads_arg(parser, "ONNX Runtime intra-op threads")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    parser.add_argument("--json", action="store_true", help="print the accuracy report as JSON on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def _body(args: argparse.Namespace) -> int:
    from feather.calibration.api import quantize

    done = quantize(args.export_dir, method=args.method, output=args.output, calibration=args.calibration,
                    overwrite=args.overwrite, quiet=args.quiet or args.json, quantize_vision=args.quantize_vision,
                    quantize_lm_head=args.quantize_lm_head, max_new_tokens=args.steps, threads=args.threads)
    if args.json:
        data = {"output": str(done.folder), "timings_s": done.timings, **done.report.to_json()}
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(done.report.lines()))
        t = done.timings
        print(f"quantized {cli.shown(args.export_dir)} -> {cli.shown(done.folder)} ({args.method}) in "
              f"{sum(t.values()):.1f} s (capture {t['capture_s']:.1f}, quantize {t['quantize_s']:.1f}, "
              f"report {t['report_s']:.1f})")
    if not done.report.ok:
        print(f"feather-quantize: the accuracy check failed: {done.report.failure()}; the folder was written, "
              "inspect it before use", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
