"""feather-run: answer a question about an image with an exported FEATHER chain."""

from __future__ import annotations

import argparse
import json
import sys

from feather import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feather-run", description="Run an exported FEATHER chain (ONNX Runtime; no torch needed)."
    )
    parser.add_argument("folder", help="export folder written by feather-export")
    cli.add_generation_args(parser)
    parser.add_argument("--provider", default="cpu", help="cpu, cuda or tensorrt (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per graph")
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--json", action="store_true", help="print tokens, text, kept indices and timings as JSON")
    parser.add_argument("--check", action="store_true",
                        help="compare with the PyTorch reference on the source checkpoint (needs [export])")
    parser.add_argument("--model", default=None, help="with --check: checkpoint to compare with (default: manifest's)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no timing line on stderr")
    return parser


def _body(args: argparse.Namespace) -> int:
    from feather.runtime import Pipeline

    pipe = Pipeline.load(args.folder, provider=args.provider, threads=args.threads)
    sampling = cli.sampling(args)
    if args.check:
        return _check(pipe, args)
    if args.stream and not args.json:
        for piece in pipe.stream(args.image, args.prompt, args.max_new_tokens, sampling):
            print(piece, end="", flush=True)
        print()
        return 0
    result = pipe.generate(args.image, args.prompt, args.max_new_tokens, sampling)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.text)
        if not args.quiet:
            print(_timing_line(result.timings), file=sys.stderr)
    return 0


def _check(pipe, args) -> int:
    from feather.runtime.check import check

    result, report = check(pipe, args.image, args.prompt, args.max_new_tokens, args.model)
    print(result.text)
    for line in report.lines():
        print(line, file=sys.stderr)
    return 0 if report.ok else 1


def _timing_line(t: dict) -> str:
    tps = t.get("decode_tokens_per_s")
    segs = " + ".join(f"{s * 1000:.0f}" for s in t["segments_s"])
    return (f"[vision {t['vision_s'] * 1000:.0f} ms | LLM prefill {segs} ms | "
            f"first token {t['ttft_s'] * 1000:.0f} ms | decode {f'{tps:.1f} tok/s' if tps else 'n/a'}]")


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
