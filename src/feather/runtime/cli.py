"""feather-run: answer a question about an image with an exported FEATHER chain."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings

from PIL import Image

from feather import cli
from feather.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="feather-run", description="Run an exported FEATHER chain (ONNX Runtime; no torch needed)."
    )
    parser.add_argument("folder", help="export folder written by feather-export")
    cli.add_generation_args(parser)
    cli.add_point_args(parser)
    cli.add_provider_arg(parser)
    cli.add_threads_arg(parser)
    parser.add_argument("--stream", action="store_true",
                        help="print the answer as it is generated (with --json: one JSON line per piece)")
    parser.add_argument("--json", action="store_true", help="print tokens, text, kept indices and timings as JSON")
    parser.add_argument("--check", action="store_true",
                        help="compare with the PyTorch reference on the source checkpoint (needs [export])")
    parser.add_argument("--model", default=None, help="with --check: checkpoint to compare with (default: manifest's)")
    parser.add_argument("--viz", metavar="OUT.png", default=None,
                        help="draw each stage's kept image tokens over the image into OUT.png")
    parser.add_argument("--quiet", "-q", action="store_true", help="no timing or status line on stderr")
    return parser


def _check_viz(pipe, args) -> None:
    if args.viz and pipe.manifest.tiles is not None:
        raise InputError("--viz: the overlay draws one square token grid; LLaVA-NeXT's tiled exports "
                         "(base image + tiles + newlines) are not drawn yet")


def _viz(pipe, args, result) -> None:
    if args.viz:
        from feather.overlay import save_overlay
        from feather.text import shown

        m = pipe.manifest
        path = save_overlay(args.image, result.stages, m.image, m.dims.grid, m.pruning.criterion, args.viz)
        if not args.quiet:
            print(f"overlay: {shown(path)}", file=sys.stderr)


def _check_args(args: argparse.Namespace) -> None:
    """What argparse cannot say: empty paths and flags that do nothing together."""
    if not args.folder.strip():
        raise InputError("folder: empty path; expected an export folder")
    if not args.image:
        raise InputError("image: empty path; expected an image file")
    if args.check and args.stream:
        raise InputError("--check and --stream: pick one (--check compares a whole answer)")


def _body(args: argparse.Namespace) -> int:
    _check_args(args)
    sampling = cli.sampling(args)
    # we refuse images over 64 MP ourselves; Pillow's own warning would be a second line
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    from feather.runtime import Pipeline

    pipe = Pipeline.load(args.folder, provider=args.provider, threads=args.threads)
    _check_viz(pipe, args)
    args.prune = pipe.resolve(cli.point(args))  # a point outside the export's range: one line, before any work
    if args.check:
        return _check(pipe, args)
    if args.stream:
        result = pipe.generate(args.image, args.prompt, args.max_new_tokens, sampling, on_token=_Printer(args.json),
                               prune=args.prune)
        _viz(pipe, args, result)
        if args.json:
            print(json.dumps(result.to_json()), flush=True)
        else:
            print(flush=True)
            if not args.quiet:
                print(_timing_line(result), file=sys.stderr)
        return 0
    result = pipe.generate(args.image, args.prompt, args.max_new_tokens, sampling, prune=args.prune)
    _viz(pipe, args, result)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.text)
        if not args.quiet:
            print(_timing_line(result), file=sys.stderr)
    return 0


class _Printer:
    """``on_token`` for --stream: prints each token's piece of the answer (``generate`` hands
    it over, from the pipeline's incremental detokenizer) in the main thread, so Ctrl-C and a
    closed stdout land here, not in a worker thread. A token that ends inside a multi-byte
    character has no piece; the one that completes it carries it. With ``as_json``:
    ``{"piece": ..., "token": ...}`` lines, ``token`` being the id that completed the piece."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def __call__(self, token: int, piece: str) -> None:
        if not piece:
            return
        if self.as_json:
            print(json.dumps({"piece": piece, "token": token}), flush=True)
        else:
            print(piece, end="", flush=True)


def _check(pipe, args) -> int:
    import importlib.util

    from feather.runtime.check import check

    for name in ("torch", "transformers"):  # a base install: one line naming the extra, before any status line
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    with cli.status("--check: loading torch and the checkpoint, running the PyTorch reference", args.quiet):
        result, report = check(pipe, args.image, args.prompt, args.max_new_tokens, args.model, args.prune)
    if args.json:
        print(json.dumps({**result.to_json(), "check": {**dataclasses.asdict(report), "ok": report.ok}}))
    else:
        print(result.text)
        for line in report.lines():
            print(line, file=sys.stderr)
    return 0 if report.ok else 1


def _timing_line(result) -> str:
    t = result.timings
    tps = t.get("decode_tokens_per_s")
    segs = " + ".join(f"{s * 1000:.0f}" for s in t["segments_s"])
    p = result.point
    kept = "/".join(str(len(s["kept"])) for s in result.stages)
    where = f"R={p['ratio']:g} s={p['stride']} {p['mode']}, kept {kept} | " if p else ""
    return (f"[{where}vision {t['vision_s'] * 1000:.0f} ms | LLM prefill {segs} ms | "
            f"first token {t['ttft_s'] * 1000:.0f} ms | decode {f'{tps:.1f} tok/s' if tps else 'n/a'}]")


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
