"""python -m feather.reference: answer a question with the PyTorch FEATHER reference."""

from __future__ import annotations

import argparse
import json

from feather import cli
from feather.hf.checkpoint import DEFAULT_MODEL


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m feather.reference",
        description="Run FEATHER on a HF LLaVA checkpoint in PyTorch (the reference every graph is checked against).",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder, or 'tiny' (default: %(default)s)")
    cli.add_prune_args(parser)
    cli.add_generation_args(parser)
    parser.add_argument("--json", action="store_true", help="print tokens, text and kept indices as JSON")
    parser.add_argument("--viz", metavar="OUT.png", default=None,
                        help="draw each stage's kept image tokens over the image into OUT.png")
    return parser


def _body(args: argparse.Namespace) -> int:
    from feather.reference import Reference

    config = cli.prune_config(args)
    ref = Reference.load(args.model, config)
    result = ref.generate(args.image, args.prompt, args.max_new_tokens, cli.sampling(args))
    if args.viz:
        from feather.hf.processor import image_spec_from_processor
        from feather.overlay import save_overlay

        save_overlay(args.image, result.stages, image_spec_from_processor(ref.processor.image_processor),
                     ref.geom.grid, config.criterion, args.viz)
    print(json.dumps(result.to_json()) if args.json else result.text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
