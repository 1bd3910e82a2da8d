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
    return parser


def _body(args: argparse.Namespace) -> int:
    from feather.reference import Reference

    config = cli.prune_config(args)
    ref = Reference.load(args.model, config)
    result = ref.generate(args.image, args.prompt, args.max_new_tokens, cli.sampling(args))
    print(json.dumps(result.to_json()) if args.json else result.text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
