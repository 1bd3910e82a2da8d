"""feather-eval: localization accuracy of a pruned LLaVA (export folder or checkpoint) on a
referring-expression JSONL, with where its kept tokens sit. See docs/evaluation.md."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from feather import cli
from feather.config import CRITERIA, MODES, PruneConfig
from feather.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="feather-eval",
        description="Score referring-expression localization (Acc@0.5, Acc@0.25, IoU) of an export folder "
                    "or a checkpoint, per pruning criterion, and report where the kept tokens sit.",
    )
    parser.add_argument("target", metavar="DIR_OR_CHECKPOINT",
                        help="export folder (feather.json), or a checkpoint: HF id, local folder or 'tiny'")
    parser.add_argument("--data", required=True, metavar="FILE.jsonl",
                        help='one {"image", "expression", "bbox": [x, y, w, h]} per line (COCO pixels)')
    parser.add_argument("--split", default=None, help="only the lines with this \"split\"")
    parser.add_argument("--limit", type=cli.int_in(1, 1 << 31), default=None, metavar="N",
                        help="the first N samples only")
    parser.add_argument("--max-new-tokens", type=cli.int_in(1, cli.MAX_NEW_TOKENS), default=128,
                        help="default: %(default)s (the paper's)")
    parser.add_argument("--json", default=None, metavar="OUT",
                        help="write every answer and the summary here; samples already in it are skipped (resume)")
    parser.add_argument("--plot", default=None, metavar="OUT.png", help="accuracy and kept-row distribution plot")
    cli.add_threads_arg(parser, "ONNX Runtime intra-op threads per graph (export folders)")
    add_points_args(parser, "export folders only: score each operating point from the same export, one row each "
                            "(docs/operating-points.md)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or status line")
    g = parser.add_argument_group("pruning (checkpoints only; defaults: the paper's FEATHER run)")
    g.add_argument("--criterion", default=None, help=f"one of {', '.join(sorted(CRITERIA))} (default: feather)")
    g.add_argument("--K", type=cli.int_in(0, 1 << 16), nargs="+", default=None, metavar="K",
                   help="pruning layers (default: 8 16)")
    g.add_argument("--ratio", type=cli.finite_float, default=None,
                   help="fraction of image tokens pruned, R (default: 0.7)")
    g.add_argument("--stride", type=cli.int_in(1, 1 << 16), default=None, help="uniform grid stride s (default: 3)")
    g.add_argument("--mode", default=None, help=f"one of {', '.join(MODES)} (default: static)")
    g.add_argument("--sweep", default=None, metavar="SPEC",
                   help="several configs, comma-separated criterion[@K[+K2]][:rR][:sS][:paper], "
                        "e.g. none,original@3:r0.75,feather; 'poster' = the poster's rows")
    return parser


def number_list(kind: Callable[[str], float | int], what: str) -> Callable[[str], list]:
    """An argparse type: comma-separated values of ``kind`` (``0.5,0.7,0.9``)."""

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected comma-separated {what}")
        return [kind(t) for t in items]

    parse.__name__ = what
    return parse


def add_points_args(parser: argparse.ArgumentParser, title: str) -> None:
    """--points R1,R2,... and --strides S1,...: the operating points ratios x strides (each
    left out: the export's own), checked against the export's range before any work."""
    g = parser.add_argument_group("operating points", title)
    g.add_argument("--points", type=number_list(cli.finite_float, "ratios"), default=None, metavar="R1,R2,...",
                   help="keep ratios R (fraction of image tokens pruned), e.g. 0.5,0.7,0.9")
    g.add_argument("--strides", type=number_list(cli.int_in(1, 1 << 16), "strides"), default=None,
                   metavar="S1,S2,...", help="grid strides s, each with every ratio (default: the export's)")


def points_report(report: dict, models) -> list[dict]:
    """One entry per operating point: the point, its run name, the static keep counts per
    stage and the summary's numbers (what ``--json``'s ``points`` list holds)."""
    from feather import points
    from feather.eval.models import label

    out = []
    for model in models:
        s = report["runs"][label(model.config)]["summary"]
        point = model.point or points.default(model.pipe.manifest)
        out.append({"point": point.to_json(), "run": label(model.config),
                    "keep": points.keep_counts(model.pipe.manifest, point),
                    "kept": [t["mean_kept"] for t in s.get("stages", [])],
                    **{k: s[k] for k in ("n", "acc@0.5", "acc@0.25", "mean_iou", "parse_rate", "flops_reduction")}})
    return out


def configs(args: argparse.Namespace) -> list[PruneConfig] | None:
    """The configs the options ask for; None when no pruning option was given."""
    from feather.eval.sweep import parse_sweep

    given = {k: getattr(args, k) for k in ("criterion", "K", "ratio", "stride", "mode") if getattr(args, k) is not None}
    if args.sweep is None and not given:
        return None
    if "K" in given:
        given["K"] = tuple(given["K"])
    if args.sweep is None:  # without --K, a one-stage criterion takes the first default K (8)
        name = given.get("criterion", "feather")
        criterion = CRITERIA.get(name)
        if "K" not in given and criterion is not None and criterion.rules and criterion.fixed_k is None:
            given["K"] = PruneConfig().K[: len(criterion.rules)]
        return [PruneConfig(**given)]
    return parse_sweep(args.sweep, PruneConfig(**{k: v for k, v in given.items() if k != "criterion"}))


def _no_pruning_options(args: argparse.Namespace) -> bool:
    return all(getattr(args, k) is None for k in ("criterion", "K", "ratio", "stride", "mode", "sweep"))


def _body(args: argparse.Namespace) -> int:
    from feather.eval import evaluate, load_samples, open_models, plot, table
    from feather.eval.harness import write_report
    from feather.eval.models import export_points, is_export
    from feather.eval.report import check_plot_path

    export = is_export(args.target)
    if export and not _no_pruning_options(args):
        hint = " (--points and --strides choose its operating points)" \
            if args.ratio is not None or args.stride is not None else ""
        raise ConfigError(f"{args.target}: an export folder runs the criterion it was exported with; "
                          "--criterion, --K, --ratio, --stride, --mode and --sweep need a checkpoint" + hint)
    swept = args.points is not None or args.strides is not None
    if swept and not export:
        raise ConfigError(f"{args.target}: --points and --strides choose operating points of an export folder; "
                          "for a checkpoint use --sweep (e.g. feather:r0.5,feather:r0.9)")
    at = export_points(args.target, args.points, args.strides) if swept else None  # refused before any work
    chosen = None if export else configs(args)
    if args.plot is not None:
        check_plot_path(args.plot)  # before the evaluation, not after it
    samples = load_samples(args.data, limit=args.limit, split=args.split)
    with cli.status(f"loading {cli.shown(args.target)}", quiet=args.no_progress):
        models = open_models(args.target, chosen, threads=args.threads, at=at)
    report = evaluate(models, samples, max_new_tokens=args.max_new_tokens, json_out=args.json,
                      progress=not args.no_progress, data=str(Path(args.data).resolve()))
    if at is not None:
        report["points"] = points_report(report, models)
        if args.json is not None:
            write_report(args.json, report)
    print(table(report))
    if args.plot is not None:
        plot(report, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
