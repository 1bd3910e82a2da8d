"""Soak and thread check, on demand: RSS drift and file descriptors over many generates,
and several threads sharing one Pipeline giving the single-thread answer every time.

    python -m feather.bench.soak                       # the tiny checkpoint, exported on the fly
    python -m feather.bench.soak FOLDER --count 1000 --threads 8 --calls 50

Prints one JSON object (figures in docs/hardening.md). Exit 1 when RSS grows by more than
``--max-drift`` percent after warm-up, the open file descriptors grow, or a thread's answer
differs. Linux only (reads /proc/self).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from feather import cli


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak(pipe, image, prompt: str, count: int, new_tokens: int, warmup: int = 20) -> dict:
    """``count`` generates after ``warmup``; RSS and fds after warm-up and at the end."""
    for _ in range(warmup):
        pipe.generate(image, prompt, new_tokens)
    rss0, fds0, start = rss_mb(), open_fds(), time.perf_counter()
    for _ in range(count):
        pipe.generate(image, prompt, new_tokens)
    rss1, fds1 = rss_mb(), open_fds()
    return {"generates": count, "new_tokens": new_tokens, "seconds": round(time.perf_counter() - start, 1),
            "rss_mb_start": round(rss0, 1), "rss_mb_end": round(rss1, 1),
            "rss_drift_pct": round(100 * (rss1 - rss0) / rss0, 3), "fds_start": fds0, "fds_end": fds1}


def threads_agree(pipe, image, prompt: str, threads: int, calls: int, new_tokens: int) -> dict:
    """``threads`` threads x ``calls`` generates on one Pipeline; every answer must equal the
    single-thread one (tokens and kept indices)."""
    want = pipe.generate(image, prompt, new_tokens)
    wrong, errors = [], []

    def work() -> None:
        try:
            for _ in range(calls):
                got = pipe.generate(image, prompt, new_tokens)
                if got.tokens != want.tokens or got.stages != want.stages:
                    wrong.append(got.tokens)
        except Exception as err:  # reported, not raised: the soak prints its figures
            errors.append(repr(err))

    start = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"threads": threads, "calls_each": calls, "seconds": round(time.perf_counter() - start, 1),
            "differing": len(wrong), "errors": errors[:3]}


def _tiny_export(root: Path) -> Path:
    from feather.config import PruneConfig
    from feather.export import export

    return export(model="tiny", config=PruneConfig(), output=root / "tiny-export", max_seq=1024, quiet=True)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m feather.bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=None, help="export folder (default: the tiny checkpoint, exported)")
    p.add_argument("--count", type=cli.int_in(1, 10**6), default=1000, help="generates in the soak (default: 1000)")
    p.add_argument("--new-tokens", type=cli.int_in(1, 512), default=8, help="tokens per generate (default: 8)")
    cli.add_threads_arg(p, "Python threads generating at once in the check", default=8)
    p.add_argument("--calls", type=cli.int_in(1, 10**5), default=50, help="generates per thread (default: 50)")
    p.add_argument("--max-drift", type=cli.finite_float, default=1.0, help="allowed RSS growth, %% (default: 1)")
    return p


def _body(args: argparse.Namespace) -> int:
    from feather.runtime import Pipeline

    with tempfile.TemporaryDirectory() as root:
        folder = Path(args.folder) if args.folder else _tiny_export(Path(root))
        pipe = Pipeline.load(folder, threads=1)
        image, prompt = cli.SAMPLE_IMAGE, cli.DEFAULT_PROMPT
        report = {"folder": str(args.folder or "tiny (exported)"), "cpus": os.cpu_count(),
                  "soak": soak(pipe, image, prompt, args.count, args.new_tokens),
                  "threads": threads_agree(pipe, image, prompt, args.threads, args.calls, args.new_tokens)}
    print(json.dumps(report, indent=2))
    s, t = report["soak"], report["threads"]
    ok = s["rss_drift_pct"] <= args.max_drift and s["fds_end"] <= s["fds_start"] and not t["differing"] \
        and not t["errors"]
    if not ok:
        print("soak: FAIL", file=sys.stderr)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    return cli.run(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
