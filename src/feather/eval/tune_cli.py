"""feather-tune: the operating point to run on this device. Measures the time to first token
of each point (median of repeats after a warm-up) and its accuracy on the user's referring
expressions (the feather-eval harness), prints the Pareto table and the most accurate point
within a TTFT budget, with the feather-run flags, the Python call and the feather-serve
request field that choose it. Torch-free. See docs/operating-points.md."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from feather import cli
from feather.eval import tune
from feather.eval.cli import add_points_args

NO_POINT_FITS = 2
"""The exit status when no point meets the budget (1: an error, as every feather command)."""


def positive_ms(text: str) -> float:
    value = cli.finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected milliseconds > 0")
    return value


positive_ms.__name__ = "milliseconds"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="feather-tune",
        description="Measure time to first token and Acc@0.5 per operating point of an export on this device, "
                    "and pick the most accurate point within a TTFT budget.",
    )
    parser.add_argument("export", metavar="EXPORT", help="export folder written by feather-export")
    parser.add_argument("--data", required=True, metavar="FILE.jsonl",
                        help='referring expressions, one {"image", "expression", "bbox": [x, y, w, h]} per line '
                             "(feather-eval's format)")
    parser.add_argument("--budget-ms", required=True, type=positive_ms, metavar="MS",
                        help="the time-to-first-token budget, in milliseconds")
    add_points_args(parser, f"the points compared (default: ratios {', '.join(map(str, tune.DEFAULT_RATIOS))} "
                            "inside the export's range, and its own, at its own stride)")
    parser.add_argument("--repeats", type=cli.int_in(1, 1000), default=5, metavar="N",
                        help="timed runs per point; the median counts (default: %(default)s)")
    parser.add_argument("--warmup", type=cli.int_in(0, 100), default=1, metavar="N",
                        help="untimed runs per point before them (default: %(default)s)")
    parser.add_argument("--image", default=None,
                        help="the image TTFT is measured on (default: the data's first sample's; "
                             "its prompt either way)")
    parser.add_argument("--split", default=None, help="only the lines with this \"split\"")
    parser.add_argument("--limit", type=cli.int_in(1, 1 << 31), default=None, metavar="N",
                        help="score the first N samples only")
    parser.add_argument("--max-new-tokens", type=cli.int_in(1, cli.MAX_NEW_TOKENS), default=128,
                        help="for the accuracy (default: %(default)s, feather-eval's); TTFT generates one")
    cli.add_provider_arg(parser)
    cli.add_threads_arg(parser)
    parser.add_argument("--json", default=None, metavar="OUT", help="write every row and the choice here")
    parser.add_argument("--plot", default=None, metavar="OUT.png",
                        help="TTFT against Acc@0.5, the Pareto front and the budget (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no status lines or progress bar on stderr")
    return parser


def _body(args: argparse.Namespace) -> int:
    from feather import points
    from feather.errors import InputError
    from feather.eval.data import load_samples
    from feather.eval.models import export_points, is_export
    from feather.eval.report import check_plot_path
    from feather.image import load_image
    from feather.manifest import load_manifest

    if not is_export(args.export):
        raise InputError(f"{cli.shown(args.export)}: not an export folder (no feather.json); "
                         "feather-tune compares the operating points of an export")
    manifest = load_manifest(args.export, verify=False)
    ratios = args.points if args.points is not None else tune.default_ratios(manifest)
    pts = export_points(args.export, ratios, args.strides)  # a point outside the range: one line, before any work
    if args.plot is not None:
        check_plot_path(args.plot)
    warning = None
    if tune.random_weights(manifest.source.model):
        warning = (f"this export comes from the toolkit's random-weight checkpoint {manifest.source.model!r}: its "
                   "answers are noise, so Acc@0.5 cannot rank the points; the TTFT column is real, the accuracy "
                   "column and the choice are not")
        print(f"feather-tune: warning: {warning}", file=sys.stderr, flush=True)
    samples = load_samples(args.data, limit=args.limit, split=args.split)
    image_path = args.image if args.image is not None else samples[0].image
    image, prompt = load_image(image_path), samples[0].prompt

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    from feather.runtime import Pipeline

    with cli.status(f"loading {cli.shown(args.export)}", quiet=args.quiet):
        pipe = Pipeline.load(args.export, provider=args.provider, threads=args.threads)
    say(f"{len(pts)} points, TTFT: median of {args.repeats} after {args.warmup} warm-up; "
        f"accuracy: {len(samples)} samples")
    rows = tune.tune(
        pts,
        ttft=lambda p: tune.measure_ttft(pipe, image, prompt, p, args.repeats, args.warmup),
        score=lambda ps: tune.score_points(pipe, ps, samples, args.max_new_tokens, progress=not args.quiet),
        keep=lambda p: points.keep_counts(manifest, p),
        progress=say,
    )
    chosen = tune.choose(rows, args.budget_ms)
    print(tune.table(rows, args.budget_ms, chosen))
    print()
    if chosen is not None:
        print(f"chosen: {chosen.point.label()} (Acc@0.5 {100 * chosen.acc:.1f} %, TTFT {chosen.ttft_ms:.1f} ms, "
              f"within the {args.budget_ms:g} ms budget)")
        print("\n".join(tune.usage(chosen.point, args.export)))
    else:
        quick = tune.fastest(rows)
        print(f"no point meets the {args.budget_ms:g} ms budget on this device; the fastest is "
              f"{quick.point.label()} at {quick.ttft_ms:.1f} ms (Acc@0.5 {100 * quick.acc:.1f} %):")
        print("\n".join(tune.usage(quick.point, args.export)))
    if args.json is not None:
        tune.write_json(args.json, tune.report(
            rows, args.budget_ms, chosen, export=str(Path(args.export).resolve()),
            data=str(Path(args.data).resolve()), image=str(Path(image_path).resolve()), repeats=args.repeats,
            warmup=args.warmup, max_new_tokens=args.max_new_tokens,
            device={"provider": args.provider, "threads": args.threads, "machine": platform.machine(),
                    "cpus": os.cpu_count()},
            warnings=[warning] if warning else []))
    if args.plot is not None:
        tune.plot(rows, args.budget_ms, chosen, args.plot)
    return 0 if chosen is not None else NO_POINT_FITS


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
