"""feather-serve: an OpenAI-compatible HTTP server for one export folder, or (with
``--triton-repo``) a Triton Inference Server model repository for it."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from feather import cli
from feather.errors import ConfigError
from feather.image import MAX_IMAGE_PIXELS

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
MAX_BODY_MB = 1024.0
MAX_BODY_TIMEOUT_S = 3600.0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="feather-serve",
        description="Serve an exported FEATHER chain over HTTP (OpenAI /v1/chat/completions), "
                    "or write a Triton model repository for it (--triton-repo).")
    parser.add_argument("folder", help="export folder written by feather-export")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=cli.int_in(0, 65535), default=8000,
                        help="0..65535, 0 picks a free one (default: %(default)s)")
    parser.add_argument("--max-concurrency", type=cli.int_in(1, 1024), default=1,
                        help="generations running at once (default: %(default)s)")
    parser.add_argument("--max-queue", type=cli.int_in(0, 1 << 20), default=16,
                        help="requests waiting for a slot; more get 429 (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("FEATHER_API_KEY"),
                        help="require Authorization: Bearer KEY on /v1/* (default: $FEATHER_API_KEY, else none)")
    parser.add_argument("--max-body-mb", type=cli.finite_float, default=16.0,
                        help=f"largest request body in MiB, > 0 and <= {MAX_BODY_MB:g} (default: %(default)s)")
    parser.add_argument("--body-timeout", type=cli.finite_float, default=30.0, metavar="S",
                        help="seconds a client has to send the whole request body; slower ones get 408 "
                             "(default: %(default)s)")
    parser.add_argument("--max-image-pixels", type=cli.int_in(1, MAX_IMAGE_PIXELS), default=4096 * 4096,
                        help="largest image, width x height (default: %(default)s)")
    parser.add_argument("--max-tokens", type=cli.int_in(1, 1 << 20), default=128, dest="default_max_tokens",
                        help="max_tokens when a request gives none (default: %(default)s)")
    parser.add_argument("--served-model-name", default=None, help="model id clients use (default: the folder's name)")
    cli.add_provider_arg(parser)
    cli.add_threads_arg(parser)
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="default: %(default)s")
    g = parser.add_argument_group("Triton model repository (writes files and exits; serves nothing)")
    g.add_argument("--triton-repo", metavar="DIR", default=None, help="write a Triton model repository into DIR")
    g.add_argument("--triton-name", default="feather", help="model name in the repository (default: %(default)s)")
    g.add_argument("--triton-instances", type=int, default=1, help="instances per device (default: %(default)s)")
    g.add_argument("--triton-kind", choices=["cpu", "gpu"], default="cpu", help="instance kind (default: %(default)s)")
    g.add_argument("--triton-copy", action="store_true",
                   help="copy the export into the repository (default: refer to it by absolute path)")
    g.add_argument("--triton-site-packages", default="", metavar="DIR",
                   help="site-packages of a venv with feather-vlm for Triton's Python stub (default: the stub's own)")
    return parser


def _body(args: argparse.Namespace) -> int:
    if args.triton_repo is not None:
        return _triton(args)
    if not 0 < args.max_body_mb <= MAX_BODY_MB:
        raise ConfigError(f"--max-body-mb: got {args.max_body_mb:g}, expected a number > 0 and <= {MAX_BODY_MB:g}")
    if not 0 < args.body_timeout <= MAX_BODY_TIMEOUT_S:
        raise ConfigError(f"--body-timeout: got {args.body_timeout:g}, expected seconds > 0 and <= "
                          f"{MAX_BODY_TIMEOUT_S:g}")
    import uvicorn

    from feather.runtime import Pipeline
    from feather.serve.app import create_app
    from feather.serve.protocol import Limits

    pipe = Pipeline.load(args.folder, provider=args.provider, threads=args.threads)
    limits = Limits(max_body_bytes=max(1, int(args.max_body_mb * 2**20)), max_image_pixels=args.max_image_pixels,
                    default_max_tokens=args.default_max_tokens, body_timeout_s=args.body_timeout)
    name = args.served_model_name or Path(args.folder).resolve().name
    app = create_app(pipe, name, limits, args.max_concurrency, args.max_queue, args.api_key)
    _log_to_stderr(args.log_level)
    # uvicorn's own bounds: request headers <= 16 KiB (h11_max_incomplete_event_size), idle
    # keep-alive connections closed after 5 s (timeout_keep_alive); it bounds neither the size nor
    # the arrival time of a body, which the app does (Limits.max_body_bytes, body_timeout_s).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def _log_to_stderr(level: str) -> None:
    """Give the ``feather.serve`` logger (disconnects, failures) a handler in uvicorn's format:
    uvicorn configures only its own loggers."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
    logger = logging.getLogger("feather.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if level == "trace" else level.upper())


def _triton(args: argparse.Namespace) -> int:
    from feather.serve.triton import write_repository

    path = write_repository(args.folder, args.triton_repo, name=args.triton_name, instances=args.triton_instances,
                            kind=args.triton_kind, provider=args.provider, threads=args.threads,
                            copy=args.triton_copy, site_packages=args.triton_site_packages)
    print(f"wrote {path}; serve it with: tritonserver --model-repository {Path(args.triton_repo).resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
