"""``feather-build EXPORT_DIR``: TensorRT engines for this GPU, beside the graphs (feather/build/engines.py).

    feather-build feather-export --dry-run              # the plan; needs no TensorRT
    feather-build feather-export --workspace-gb 4 --timing-cache ~/.cache/feather-vlm/trt.cache
"""

from __future__ import annotations

import argparse

from feather import cli
from feather.build import engines


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="feather-build", description="Build TensorRT engines for an export folder.")
    parser.add_argument("folder", help="export folder (feather-export's output)")
    parser.add_argument("--precision", default="as-exported", choices=engines.BUILD_MODES,
                        help="as-exported (strongly typed: the graphs' dtypes decide; default), fp16 or bf16 "
                             "(builder flag over an fp32 export; TensorRT 10 only)")
    parser.add_argument("--workspace-gb", type=_workspace_gb, default=None, metavar="N",
                        help=f"cap TensorRT's builder workspace, in (0, {engines.MAX_WORKSPACE_GB}] "
                             "(default: TensorRT's, the device memory)")
    parser.add_argument("--timing-cache", default=None, metavar="FILE",
                        help="read and update this timing cache, so later builds skip measured tactics")
    parser.add_argument("--dry-run", action="store_true", help="print the build plan and exit (no TensorRT needed)")
    return parser


def _workspace_gb(text: str) -> float:
    """An argparse type: GiB in (0, MAX_WORKSPACE_GB], checked with --dry-run too."""
    value = cli.finite_float(text)
    if not 0 < value <= engines.MAX_WORKSPACE_GB:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a number in (0, {engines.MAX_WORKSPACE_GB}]")
    return value


def _check_timing_cache(path: str | None) -> None:
    """--timing-cache names a file (read if present, then replaced): not a folder, not empty."""
    from pathlib import Path

    from feather.errors import ConfigError

    if path is not None and (not path.strip() or Path(path).is_dir()):
        raise ConfigError(f"--timing-cache {cli.shown(path) or repr(path)}: is a folder or empty; expected a file "
                          "name (read if it exists, then updated)")


def _body(args: argparse.Namespace) -> int:
    _check_timing_cache(args.timing_cache)
    if args.dry_run:
        print("\n".join(engines.plan(args.folder, precision=args.precision).lines()))
        return 0
    built = engines.build(args.folder, precision=args.precision, workspace_gb=args.workspace_gb,
                          timing_cache=args.timing_cache)
    first = built.engines[-1]
    print(f"{len(built.engines)} engines for {first.gpu} (compute {first.compute_capability}), "
          f"TensorRT {first.tensorrt}, recorded in {cli.shown(args.folder)}/feather.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
