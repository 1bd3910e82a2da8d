"""Pieces every CLI shares (torch-free): pruning options, sampling options, error handling.

User errors (``FeatherError``) print one line on stderr and exit 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from feather.config import CRITERIA, MODES, PruneConfig
from feather.errors import FeatherError
from feather.sampling import Sampling

SAMPLE_IMAGE = Path(__file__).parent / "assets" / "sample.png"
DEFAULT_PROMPT = "What is in this image?"


def add_prune_args(parser: argparse.ArgumentParser) -> None:
    """--criterion --K --ratio --stride --mode, defaulting to the paper's FEATHER run."""
    g = parser.add_argument_group("pruning (defaults: the paper's FEATHER run)")
    g.add_argument("--criterion", default="feather",
                   help=f"one of {', '.join(sorted(CRITERIA))} (default: %(default)s)")
    g.add_argument("--K", type=int, nargs="+", default=[8, 16], metavar="K",
                   help="pruning layers, ascending (default: 8 16)")
    g.add_argument("--ratio", type=float, default=0.7, help="fraction of image tokens pruned, R (default: 0.7)")
    g.add_argument("--stride", type=int, default=3, help="uniform grid stride s (default: 3)")
    g.add_argument("--mode", default="static", help=f"one of {', '.join(MODES)} (default: %(default)s)")


def prune_config(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(criterion=args.criterion, K=tuple(args.K), ratio=args.ratio, stride=args.stride,
                       mode=args.mode)


def add_generation_args(parser: argparse.ArgumentParser, image_required: bool = False) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--image", default=None if image_required else str(SAMPLE_IMAGE), required=image_required,
                   help="image file (default: the bundled sample picture)")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="question about the image (default: %(default)r)")
    g.add_argument("--max-new-tokens", type=int, default=32, help="default: %(default)s")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)


def sampling(args: argparse.Namespace) -> Sampling:
    return Sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def _quiet_transformers() -> None:
    """CLIs show our own progress only: no transformers advisories or weight-loading bars
    (set before transformers is imported; a user's explicit setting wins)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def run(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv) -> int:
    """Parse ``argv`` and run ``body``; a ``FeatherError`` becomes one line and exit 1."""
    args = parser.parse_args(argv)
    _quiet_transformers()
    try:
        return body(args)
    except FeatherError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
