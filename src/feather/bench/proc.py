"""Child processes for benchmark rows: one JSON spec in, one JSON result out."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from feather.errors import FeatherError


class BenchError(FeatherError):
    """A benchmark row could not run (its child process failed, or a needed piece is missing)."""


def run_child(command: list[str], job: dict, work: Path, tag: str, timeout: float | None = None) -> dict:
    """Run ``command SPEC OUT`` in a child process; return OUT's JSON or raise ``BenchError``
    with the child's last line of stderr."""
    spec_file, out_file = work / f"spec-{tag}.json", work / f"out-{tag}.json"
    spec_file.write_text(json.dumps(job))
    out_file.unlink(missing_ok=True)
    load = _ForeignLoad()
    try:
        proc = subprocess.run([*command, str(spec_file), str(out_file)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"row {tag}: child ran past {timeout:.0f} s") from None
    if proc.returncode != 0 or not out_file.exists():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise BenchError(f"row {tag}: child exited {proc.returncode}: {lines[-1] if lines else 'no message'}")
    return {**json.loads(out_file.read_text()), "foreign_cpu_cores": load.cores()}


class _ForeignLoad:
    """CPU used by OTHER processes while a child ran, in cores (0 = a quiet machine): the
    machine's busy CPU time minus the children's own, over the wall time. On a shared
    machine this says which rows were measured under someone else's load."""

    def __init__(self):
        import resource

        import psutil

        self._busy, self._wall = self._cpu_busy(psutil), time.perf_counter()
        self._child = self._child_cpu(resource)

    @staticmethod
    def _cpu_busy(psutil) -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _child_cpu(resource) -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def cores(self) -> float:
        import resource

        import psutil

        busy = self._cpu_busy(psutil) - self._busy
        child = self._child_cpu(resource) - self._child
        return max(busy - child, 0.0) / max(time.perf_counter() - self._wall, 1e-9)
