"""feather-bench: what FEATHER pruning buys on the chain, against FLOPs and against PyTorch.

    feather-bench --json docs/bench.json --plot docs/bench.png
    feather-bench --quick                      # 3 repeats, 8 new tokens: under 5 minutes

Python twin: ``feather.bench.run.benchmark(geometry="bench", repeats=5, new_tokens=32)``.
"""

from __future__ import annotations

import argparse
import sys

from feather import cli
from feather.bench.checkpoint import GEOMETRIES


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="feather-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", choices=GEOMETRIES, default="bench",
                        help="bench: LLaVA-1.5-7B proportions at width 512; tiny: the test checkpoint; "
                             "interleave-0.5b: llava-interleave-qwen-0.5b-hf's full configuration, "
                             "random weights (0.86B parameters) (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="3 repeats and 8 new tokens instead of 5 and 32")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row after one warm-up (default: 5)")
    parser.add_argument("--new-tokens", type=int, default=None, help="decoded tokens after the first (default: 32)")
    cli.add_threads_arg(parser, "threads for torch and ONNX Runtime")
    parser.add_argument("--openvino-python", default=None,
                        help="a Python with optimum-intel, for the optional OpenVINO row "
                             "(default: $FEATHER_OPENVINO_PYTHON; none: row left out)")
    parser.add_argument("--quantized", action="store_true",
                        help="add feather-quantize rows (int8, int4, int8-int4; FEATHER and unpruned chains)")
    parser.add_argument("--rows", default=None, metavar="IDS",
                        help="measure only these row ids, e.g. acdjfno (default: every row; see docs/benchmarks.md)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="write a bar chart of the stage times")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return parser


def _body(args: argparse.Namespace) -> int:
    from feather.bench import report as report_mod
    from feather.bench.run import benchmark

    repeats = args.repeats if args.repeats is not None else 3 if args.quick else 5
    new_tokens = args.new_tokens if args.new_tokens is not None else 8 if args.quick else 32
    log = (lambda _: None) if args.quiet else (lambda msg: print(f"feather-bench: {msg}", file=sys.stderr))
    report = benchmark(geometry=args.geometry, repeats=repeats, new_tokens=new_tokens, threads=args.threads,
                       openvino_python=args.openvino_python, log=log, quantized=args.quantized,
                       rows=args.rows)
    report_mod.print_report(report)
    if args.json:
        report_mod.write_json(report, args.json)
    if args.plot:
        report_mod.plot(report, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
