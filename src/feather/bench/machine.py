"""What the benchmark ran on: CPU model, cores, RAM, library versions, load."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata


def cpu_model() -> str:
    """``lscpu``'s model name (falls back to /proc/cpuinfo, then ``platform.processor``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for source in (out, _read("/proc/cpuinfo")):
        for line in source.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("model name",):
                return value.strip()
    return platform.processor() or "unknown"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe(threads: int, load_before: tuple[float, float, float]) -> dict:
    """The machine section of the report. ``load_*`` are 1/5/15-minute load averages at the
    start and end of the run: a shared machine's other work shows up there."""
    import psutil

    from feather.runtime import cpu

    host = cpu.detect()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        # the ISA features that pick ONNX Runtime's kernels (CPUID, so an emulated CPU reports itself)
        "cpu": {**host.to_json(), "line": host.line()},
        "ram_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "threads": threads,
        "versions": {n: _version(n) for n in ("onnxruntime", "torch", "transformers", "numpy", "feather-vlm")},
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }


def _git(*args: str) -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:  # --no-optional-locks: status must not refresh (write) the index
        proc = subprocess.run(["git", "--no-optional-locks", "-C", root, *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def source() -> dict:
    """The project's git commit and whether the working tree differs from it (read-only git)."""
    commit, status = _git("rev-parse", "HEAD"), _git("status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status)}
