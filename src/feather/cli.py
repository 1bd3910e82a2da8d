"""Pieces every CLI shares (torch-free): pruning, sampling, provider and thread options, error handling.

User errors (``FeatherError``, and ``OSError``s from the file system such as a full disk)
print one line on stderr and exit 1; an interrupt (Ctrl-C, SIGTERM, SIGHUP) prints one
line and exits 128 + the signal number (130 for Ctrl-C); a closed stdout (``| head``)
exits 1 quietly. Anything else is a bug and keeps its traceback. See docs/hardening.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from feather.config import CRITERIA, MODES, PruneConfig
from feather.errors import ConfigError, FeatherError
from feather.sampling import Sampling
from feather.text import shown  # the CLIs print paths with cli.shown

SAMPLE_IMAGE = Path(__file__).parent / "assets" / "sample.png"
DEFAULT_PROMPT = "What is in this image?"
MAX_NEW_TOKENS = 1 << 20
"""An upper bound for --max-new-tokens before the export's max_seq bounds it further."""


EXTRAS = {"torch": "export", "transformers": "export", "onnx": "export", "onnxscript": "export",
          "starlette": "serve", "uvicorn": "serve", "psutil": "bench", "matplotlib": "bench",
          "tensorrt": "trt", "cuda": "trt"}
"""Modules of the optional extras (pyproject.toml) -> the extra that installs them: a command
that needs one on the base install says which extra to add, in one line."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C so that ``finally`` blocks
    (an export's clean-up of its work folder) run before the process exits."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit 1, like every other user error."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {one_line(message)}\n")


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


# ---------------------------------------------------------------- argument types
def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"got {value}, expected an integer in {low}..{high}")
        return value

    parse.__name__ = "integer"
    return parse


def finite_float(text: str) -> float:
    """An argparse type: a finite number (no inf, no nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a finite number")
    return value


finite_float.__name__ = "number"


# ---------------------------------------------------------------- shared options
def add_prune_args(parser: argparse.ArgumentParser) -> None:
    """--criterion --K --ratio --stride --mode, defaulting to the paper's FEATHER run."""
    g = parser.add_argument_group("pruning (defaults: the paper's FEATHER run)")
    g.add_argument("--criterion", default="feather",
                   help=f"one of {', '.join(sorted(CRITERIA))} (default: %(default)s)")
    g.add_argument("--K", type=int_in(0, 1 << 16), nargs="+", default=None, metavar="K",
                   help="pruning layers, ascending (default: 8 16; not with none or text_only)")
    g.add_argument("--ratio", type=finite_float, default=0.7,
                   help="fraction of image tokens pruned, R (default: 0.7)")
    g.add_argument("--stride", type=int_in(1, 1 << 16), default=3, help="uniform grid stride s (default: 3)")
    g.add_argument("--mode", default="static", help=f"one of {', '.join(MODES)} (default: %(default)s)")


def prune_config(args: argparse.Namespace) -> PruneConfig:
    """The ``PruneConfig`` of the parsed flags. ``--K`` given with a criterion that takes no
    K list (``none`` prunes nothing; ``text_only`` always drops at 0) is refused rather than
    silently ignored."""
    crit = CRITERIA.get(args.criterion)
    if args.K is not None and crit is not None and (not crit.rules or crit.fixed_k is not None):
        raise ConfigError(f"K: criterion {args.criterion!r} takes no K list; drop --K")
    k = None if args.K is None else tuple(args.K)
    return PruneConfig(criterion=args.criterion, K=k, ratio=args.ratio, stride=args.stride, mode=args.mode)


def add_point_args(parser: argparse.ArgumentParser) -> None:
    """--ratio --stride --mode for a run: the operating point (``feather.points``), each
    defaulting to the export's own, chosen within the range the export accepts."""
    g = parser.add_argument_group("operating point (default: the export's own; docs/operating-points.md)")
    g.add_argument("--ratio", type=finite_float, default=None, help="fraction of image tokens pruned, R")
    g.add_argument("--stride", type=int_in(1, 1 << 16), default=None, help="uniform grid stride s")
    g.add_argument("--mode", default=None, choices=MODES, help="static or paper")


def point(args: argparse.Namespace) -> dict | None:
    """The ``prune`` mapping of ``add_point_args``' flags (None when none was given)."""
    asked = {k: getattr(args, k) for k in ("ratio", "stride", "mode") if getattr(args, k, None) is not None}
    return asked or None


def add_provider_arg(parser: argparse.ArgumentParser) -> None:
    """--provider, one of ``feather.providers.PROVIDERS`` (choices and help from that one
    table, so every CLI that runs a chain lists the same providers)."""
    from feather.providers import ORT_PROVIDERS, PROVIDERS

    native = [p for p in PROVIDERS if p not in ORT_PROVIDERS]
    parser.add_argument("--provider", default="cpu", choices=PROVIDERS,
                        help=f"{', '.join(ORT_PROVIDERS)} (ONNX Runtime's execution providers) or {', '.join(native)} "
                             "(engines from feather-build) (default: %(default)s)")


def add_threads_arg(parser: argparse.ArgumentParser, what: str = "intra-op threads per graph",
                    default: int | None = None) -> None:
    """--threads N, an integer in 1..``feather.runtime.backends.MAX_THREADS`` (the bound the
    ONNX Runtime backend checks too), refused in one line otherwise; ``what`` is its help."""
    from feather.providers import MAX_THREADS

    parser.add_argument("--threads", type=int_in(1, MAX_THREADS), default=default, metavar="N",
                        help=f"{what}, 1..{MAX_THREADS} (default: {'all cores' if default is None else default})")


def add_generation_args(parser: argparse.ArgumentParser, image_required: bool = False) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--image", default=None if image_required else str(SAMPLE_IMAGE), required=image_required,
                   help="image file (default: the bundled sample picture)")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="question about the image (default: %(default)r)")
    g.add_argument("--max-new-tokens", type=int_in(1, MAX_NEW_TOKENS), default=32, help="default: %(default)s")
    g.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=finite_float, default=1.0)
    g.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)


def sampling(args: argparse.Namespace) -> Sampling:
    return Sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def _quiet_transformers() -> None:
    """CLIs show our own progress only: no transformers advisories or weight-loading bars.
    Set before transformers is imported; a user's explicit setting wins. HF ids are fetched
    from the hub as transformers does (``HF_HUB_OFFLINE=1`` keeps them to the local cache;
    without a network, ``feather.hf.checkpoint.load_config`` says so in one line)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# ---------------------------------------------------------------- status lines
@contextlib.contextmanager
def status(message: str, quiet: bool = False) -> Iterator[None]:
    """A status line on stderr around a step that takes more than a couple of seconds (loading
    torch and a checkpoint, a model for feather-eval): a rich spinner on a terminal, a plain
    ``message ...`` line otherwise (CI logs), then ``message: N.N s`` once it is done. Nothing
    with ``quiet``."""
    if quiet:
        yield
        return
    from rich.console import Console

    console, start = Console(file=sys.stderr), time.perf_counter()
    if console.is_terminal:
        with console.status(f"{message} ..."):
            yield
    else:
        print(f"{message} ...", file=sys.stderr, flush=True)
        yield
    print(f"{message}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- running a CLI
def _raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> dict:
    """SIGTERM and SIGHUP raise ``Interrupted`` in the main thread (SIGINT already raises
    ``KeyboardInterrupt``); returns the previous handlers. A no-op off the main thread."""
    old = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            old[signum] = signal.signal(signum, _raise_interrupted)
        except ValueError:  # not the main thread: leave the process's handlers alone
            break
    return old


def _restore_signal_handlers(old: dict) -> None:
    for signum, handler in old.items():
        signal.signal(signum, handler)


def _stdout_closed() -> int:
    """stdout's reader went away (``| head``): point stdout at /dev/null so the interpreter's
    final flush cannot raise again, and exit 1 without a word."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 1


def run(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv) -> int:
    """Parse ``argv`` and run ``body``; user errors become one line (see the module doc)."""
    old = install_signal_handlers()
    if sys.stdout is None:  # started with stdout closed (>&-): what it prints is discarded, not a traceback
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help, or a bad flag (one line already printed)
            return done.code if isinstance(done.code, int) else 1
        _quiet_transformers()
        code = body(args)
        sys.stdout.flush()
        return code
    except FeatherError as err:
        print(f"{parser.prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _stdout_closed()
    except OSError as err:
        if err.errno is None:
            raise
        where = f"{shown(err.filename)}: " if err.filename else ""
        print(f"{parser.prog}: error: {where}{one_line(err.strerror or err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        return _interrupted(parser.prog, err)
    except ModuleNotFoundError as err:
        extra = EXTRAS.get((err.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"{parser.prog}: error: needs the [{extra}] extra ({err.name} is not installed): "
              f"pip install 'feather-vlm[{extra}]'", file=sys.stderr)
        return 1
    except Exception as err:
        # a signal that lands inside a C extension's import (onnxruntime, torch) surfaces as
        # "ImportError: initialization failed" caused by the KeyboardInterrupt: still an interrupt
        cause = _interrupt_cause(err)
        if cause is None:
            raise
        return _interrupted(parser.prog, cause)
    finally:
        _restore_signal_handlers(old)


def _interrupted(prog: str, err: KeyboardInterrupt) -> int:
    signum = getattr(err, "signum", signal.SIGINT)
    print(f"{prog}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
    return 128 + signum


def _interrupt_cause(err: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt in ``err``'s cause / context chain, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
