"""feather-export: a LLaVA checkpoint -> segmented ONNX graphs with FEATHER built in."""

from __future__ import annotations

import argparse
import time

from feather import cli
from feather.hf.checkpoint import DEFAULT_MODEL
from feather.manifest import BOUNDS, EXPORT_OPSETS, MAX_IMAGE_SIDE, PRECISIONS, TARGETS


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="feather-export",
        description="Export a HF LLaVA checkpoint with FEATHER pruning into a chain of ONNX graphs "
        "whose token count shrinks from segment to segment.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="HF id (from the local cache), local folder, or 'tiny' (default: %(default)s)")
    parser.add_argument("--output", "-o", default="feather-export", help="output folder (default: %(default)s)")
    cli.add_prune_args(parser)
    parser.add_argument("--precision", default="fp32",  # checked by api.check_options, before torch
                        help=f"{' or '.join(PRECISIONS)} (default: %(default)s)")
    parser.add_argument("--max-seq", type=cli.int_in(*BOUNDS["max_seq"]), default=2048,
                        help="longest prompt + answer, {}..{} (default: %(default)s)".format(*BOUNDS["max_seq"]))
    parser.add_argument("--opset", type=cli.int_in(*EXPORT_OPSETS), default=17,
                        help="ONNX opset (default: %(default)s)")
    parser.add_argument("--max-graph-layers", type=cli.int_in(1, 1 << 16), default=None, metavar="N",
                        help="at most N decoder layers per graph (bounds export memory: 4 for 7B peaks at 8.5 GB)")
    parser.add_argument("--target", default="portable", choices=TARGETS,
                        help="runtime the graphs are for: portable (TensorRT and any ONNX runtime: standard ops "
                             "and QDQ) or onnxruntime (may use com.microsoft ops) (default: %(default)s)")
    parser.add_argument("--image-size", type=_frame, default=None, metavar="WxH",
                        help="LLaVA-NeXT only: the one frame size the export takes (e.g. 640x480, the camera's); "
                             "it fixes the tile layout and every token count, and other sizes are refused at run time")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export folder (one with feather.json; nothing else)")
    g = parser.add_argument_group(
        "operating points (a call may choose R, s and mode inside these; docs/operating-points.md)")
    g.add_argument("--ratio-range", type=cli.finite_float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="ratios a call may choose (default: 0.05 0.95, widened to hold --ratio)")
    g.add_argument("--stride-range", type=cli.int_in(1, BOUNDS["pruning.stride"][1]), nargs=2, default=None,
                   metavar=("LO", "HI"), help="strides a call may choose (default: 1 to the grid side)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return parser


def _frame(text: str) -> tuple[int, int]:
    """``WxH`` -> (width, height), each 1..MAX_IMAGE_SIDE (4096)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and 1 <= int(p) <= MAX_IMAGE_SIDE for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT with sides 1..{MAX_IMAGE_SIDE} (e.g. 640x480), "
                                         f"got {text!r}")
    return int(parts[0]), int(parts[1])


def _body(args: argparse.Namespace) -> int:
    from feather import folder
    from feather.export import api  # torch-free until a model loads

    # every flag and the output folder are checked before torch is imported (~4 s, 200 MB)
    config = cli.prune_config(args)
    api.check_options(args.precision, args.max_seq, args.opset, args.max_graph_layers, args.target)
    if config.stages:  # the range refused before torch loads (the grid side is checked once the config is read)
        from feather import points

        points.export_range(config.ratio, config.stride, BOUNDS["pruning.stride"][1], args.ratio_range,
                            args.stride_range)
    folder.check_output(args.output, args.overwrite, args.model)
    start = time.perf_counter()
    out = api.export(model=args.model, config=config, output=args.output, precision=args.precision,
                 max_seq=args.max_seq, opset=args.opset, overwrite=args.overwrite, quiet=args.quiet,
                 max_graph_layers=args.max_graph_layers, target=args.target, image_size=args.image_size,
                 ratio_range=args.ratio_range, stride_range=args.stride_range)
    if not args.quiet:
        print(f"exported {cli.shown(args.model)} -> {cli.shown(out)} in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
