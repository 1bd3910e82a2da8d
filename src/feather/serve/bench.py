"""Throughput and latency of feather-serve: requests/s and p50/p95 latency for 1, 2 and 4
concurrent clients, against a server this script starts on a free loopback port.

    python -m feather.serve.bench feather-export --image photo.png --requests 24 --max-tokens 8
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("feather-serve did not start")


def measure(url: str, body: dict, clients: int, requests: int) -> dict:
    """``requests`` requests from ``clients`` threads, each with its own connection."""
    import httpx

    def worker(n: int) -> list[float]:
        times = []
        with httpx.Client(timeout=300) as client:
            for _ in range(n):
                t = time.perf_counter()
                r = client.post(f"{url}/v1/chat/completions", json=body)
                r.raise_for_status()
                times.append(time.perf_counter() - t)
        return times

    per = [requests // clients + (i < requests % clients) for i in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(x for times in pool.map(worker, per) for x in times)
    wall = time.perf_counter() - t0
    pick = lambda q: latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))]
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": pick(0.50) * 1000, "p95_ms": pick(0.95) * 1000}


def main(argv: list[str] | None = None) -> int:
    from feather import cli

    parser = argparse.ArgumentParser(prog="python -m feather.serve.bench", description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--image", default=str(cli.SAMPLE_IMAGE))
    parser.add_argument("--prompt", default=cli.DEFAULT_PROMPT)
    parser.add_argument("--requests", type=int, default=24, help="per concurrency level (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--max-concurrency", type=int, default=2, help="the server's slots (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    with open(args.image, "rb") as f:
        uri = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": args.prompt},
                                                      {"type": "image_url", "image_url": {"url": uri}}]}],
            "max_tokens": args.max_tokens}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "feather.serve.cli", args.folder, "--port", str(port),
                             "--max-concurrency", str(args.max_concurrency), "--max-queue", "64",
                             "--log-level", "warning"])
    try:
        _wait(url, proc)
        measure(url, body, 1, 2)  # warm-up
        rows = [measure(url, body, c, args.requests) for c in args.clients]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"| clients | requests | requests/s | p50 latency (ms) | p95 latency (ms) |  "
          f"server slots: {args.max_concurrency}, max_tokens: {args.max_tokens}")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['rps']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
