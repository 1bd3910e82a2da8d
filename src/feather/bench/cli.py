"""feather-bench: what FEATHER pruning buys on the chain, against FLOPs and against PyTorch.

    feather-bench --json docs/bench.json --plot docs/bench.png
    feather-bench --quick                      # 3 repeats, 8 new tokens: under 5 minutes
    feather-bench --points 0.3,0.5,0.7,0.9     # one FEATHER export at several operating points

Python twin: ``feather.bench.run.benchmark(geometry="bench", repeats=5, new_tokens=32)``;
``--points``: ``feather.bench.sweep.sweep(geometry="bench", ratios=[0.3, 0.5], repeats=5)``.
"""

from __future__ import annotations

import argparse
import sys

from feather import cli
from feather.bench.checkpoint import GEOMETRIES
from feather.bench.proc import BenchError
from feather.rules import MODES


def _list_of(kind, what: str):
    """An argparse type: comma-separated ``kind`` values (``0.3,0.5``), each through ``kind``."""

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or not all(items):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected comma-separated {what}")
        return [kind(t) for t in items]

    parse.__name__ = what
    return parse


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
    g = parser.add_argument_group("operating points (a mode of its own: only the point sweep runs; "
                                  "docs/operating-points.md)")
    g.add_argument("--points", type=_list_of(cli.finite_float, "ratios"), default=None, metavar="R1,R2,...",
                   help="run ONE FEATHER export (K = 8 16) at these ratios R, against the unpruned chain")
    g.add_argument("--strides", type=_list_of(cli.int_in(1, 1 << 16), "strides"), default=None,
                   metavar="S1,...", help="with --points: every ratio at each of these grid strides "
                                          "(default: the export's, 3)")
    g.add_argument("--mode", choices=MODES, default=None, help="with --points: static or paper (default: static)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="write a bar chart of the stage times (--points: times and speed-ups against R)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return parser


def _body(args: argparse.Namespace) -> int:
    _check_mode(args)
    from feather.bench import report as report_mod
    from feather.bench.run import benchmark

    repeats = args.repeats if args.repeats is not None else 3 if args.quick else 5
    new_tokens = args.new_tokens if args.new_tokens is not None else 8 if args.quick else 32
    log = (lambda _: None) if args.quiet else (lambda msg: print(f"feather-bench: {msg}", file=sys.stderr))
    if args.points is not None:
        return _points(args, repeats, new_tokens, log)
    report = benchmark(geometry=args.geometry, repeats=repeats, new_tokens=new_tokens, threads=args.threads,
                       openvino_python=args.openvino_python, log=log, quantized=args.quantized,
                       rows=args.rows)
    report_mod.print_report(report)
    if args.json:
        report_mod.write_json(report, args.json)
    if args.plot:
        report_mod.plot(report, args.plot)
    return 0


def _points(args: argparse.Namespace, repeats: int, new_tokens: int, log) -> int:
    from feather.bench import report as report_mod
    from feather.bench.sweep import sweep

    report = sweep(geometry=args.geometry, ratios=args.points, strides=args.strides, mode=args.mode,
                   repeats=repeats, new_tokens=new_tokens, threads=args.threads, log=log)
    report_mod.print_points(report)
    if args.json:
        report_mod.write_json(report, args.json)
    if args.plot:
        report_mod.plot_points(report, args.plot)
    return 0


def _check_mode(args: argparse.Namespace) -> None:
    """--points is a run of its own: the row options do not mix with it, nor its options without it."""
    if args.points is None:
        given = [flag for flag, v in (("--strides", args.strides), ("--mode", args.mode)) if v is not None]
        if given:
            raise BenchError(f"{given[0]} goes with --points")
        return
    given = [flag for flag, v in (("--rows", args.rows), ("--quantized", args.quantized),
                                  ("--openvino-python", args.openvino_python)) if v]
    if given:
        raise BenchError(f"{given[0]} picks rows of the full run; --points runs only the point sweep")


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
