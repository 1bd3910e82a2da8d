"""``feather-bench --points``: ONE FEATHER export measured at several operating points in one run.

    feather-bench --points 0.3,0.5,0.7,0.9 [--strides 2,3] [--mode paper] --json points.json --plot points.png

An export fixes the pruning layers K (here the bench's, K = 8 16); the keep ratio R, the grid
stride s and the mode are per-call choices (``feather.points``). The sweep exports the
checkpoint once with FEATHER and once unpruned (row c of the bench: its LLM prefill is what
each point's measured speed-up is taken against), then runs every point in ONE child process
over the one FEATHER export (``feather.bench.rows.chain_points``: a warm-up per point, then
``repeats`` interleaved rounds). Per point: the medians of LLM prefill, TTFT and decode tok/s,
the kept counts per stage (and ``feather.points.keep_counts``' plan beside them), the KV bytes,
the FLOPs-predicted LLM-prefill speed-up (``feather.flops.prefill_speedup`` at the kept counts)
and the measured one.

Every point is checked against the range the export will record before any work (the
checkpoint's grid and ``feather.points.export_range``), and again against the export's own
manifest once it exists (``feather.points.resolve``).

Python twin: ``feather.bench.sweep.sweep(geometry="bench", ratios=[0.3, 0.5, 0.7], repeats=5)``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

from feather import points
from feather.bench import checkpoint, machine
from feather.bench.proc import BenchError, run_child
from feather.bench.run import FEATHER, METRICS, ROWS, _export, _image, _measure, _row
from feather.config import PruneConfig
from feather.flops import kv_cache_bytes, prefill_flops, prefill_speedup
from feather.rules import MODES

BASELINE = next(r for r in ROWS if r.id == "c")  # the unpruned chain


def _vision_spec(geometry: str):
    if geometry == "tiny":
        from feather import tiny

        return tiny.SPEC.vision
    specs = {"bench": checkpoint.SPEC, "interleave-0.5b": checkpoint.INTERLEAVE_SPEC}
    if geometry not in specs:
        raise BenchError(f"geometry: got {geometry!r}, expected one of {', '.join(checkpoint.GEOMETRIES)}")
    return specs[geometry].vision


def planned_export(geometry: str, prune: dict = FEATHER):
    """What ``feather.points.resolve`` reads of the export the sweep will make, known before
    any work: the config's own point and the range ``feather-export`` records by default
    (``points.export_range`` over the geometry's grid). A stand-in for its manifest."""
    config = PruneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in prune.items()})
    v = _vision_spec(geometry)
    ratio, stride = points.export_range(config.ratio, config.stride, v.image_size // v.patch_size)
    rng = SimpleNamespace(ratio=list(ratio), stride=list(stride), modes=list(MODES))
    return SimpleNamespace(pruning=SimpleNamespace(criterion=config.criterion, K=list(config.K),
                                                   ratio=float(config.ratio), stride=config.stride,
                                                   mode=config.mode, stages=config.stages, points=rng))


def plan(geometry: str, ratios: Sequence[float], strides: Sequence[int] | None = None,
         mode: str | None = None, prune: dict = FEATHER) -> list[points.Point]:
    """The sweep's points (every ratio x every stride; strides / mode default to the export's),
    each checked against the range the export will accept: ``InputError`` (one line) otherwise."""
    if not ratios:
        raise BenchError("--points: expected at least one ratio, e.g. --points 0.3,0.5,0.7")
    manifest = planned_export(geometry, prune)
    base = points.default(manifest)
    if mode is not None:
        base = points.Point(base.ratio, base.stride, mode)
    pts = points.grid_points(list(ratios), list(strides) if strides else None, base)
    seen = set()
    for p in pts:
        if (p.ratio, p.stride) in seen:
            raise BenchError(f"--points: {p.label()} is asked twice")
        seen.add((p.ratio, p.stride))
    return [points.resolve(manifest, p, where="point") for p in pts]


def sweep(geometry: str = "bench", ratios: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
          strides: Sequence[int] | None = None, mode: str | None = None, repeats: int = 5, new_tokens: int = 32,
          threads: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure the FEATHER export (K = 8 16) at every point of ``ratios`` x ``strides`` and the
    unpruned chain once; return ``{"kind": "points", "rows", "baseline", "export", "geometry",
    "machine", "source", "settings", "steps"}`` (one row per point, in order)."""
    if repeats < 1 or new_tokens < 1 or (threads is not None and threads < 1):
        raise BenchError(f"repeats={repeats}, new_tokens={new_tokens}, threads={threads}: expected each >= 1")
    pts = plan(geometry, ratios, strides, mode)  # before any work: a point out of range is one line
    threads = threads or len(os.sched_getaffinity(0))
    path = checkpoint.resolve(geometry)
    log(f"checkpoint: {path}")
    common = {"model": str(path), "prompt": checkpoint.PROMPT, "image": str(_image()), "new_tokens": new_tokens,
              "repeats": repeats, "threads": threads}
    load_before = os.getloadavg()
    steps: dict = {}
    with tempfile.TemporaryDirectory(prefix="feather-bench-points-") as tmp:
        work = Path(tmp)
        base = _measure(BASELINE, common, work, log, steps)
        folder = _export(common["model"], FEATHER, work, log, steps)
        from feather.manifest import load_manifest

        manifest = load_manifest(folder, verify=False)
        pts = [points.resolve(manifest, p, where="point") for p in pts]  # the export's own word
        planned = [points.keep_counts(manifest, p) for p in pts]
        log(f"points: {len(pts)} x ({repeats} + 1 warm-up) runs of one export ({points.describe(manifest)})")
        job = {**common, "kind": "chain_points", "export": str(folder), "points": [p.to_json() for p in pts]}
        raw = run_child([sys.executable, "-m", "feather.bench.rows"], job, work, "points")
    report = summarize(raw, base, pts, planned, path, geometry, new_tokens)
    report["export"] = {"K": list(manifest.pruning.K), "point": points.default(manifest).to_json(),
                        "range": points.describe(manifest)}
    report["steps"] = steps
    report["machine"] = machine.describe(threads, load_before)
    report["source"] = machine.source()
    report["settings"] = {"repeats": repeats, "new_tokens": new_tokens, "threads": threads, "warmup_runs": 1,
                          "statistic": "median", "order": "interleaved: every point once per round"}
    return report


def summarize(raw: dict, base: dict, pts: list[points.Point], planned: list[list[int]], path: Path,
              geometry: str, new_tokens: int) -> dict:
    """The point rows and the unpruned row (``run._row``) with FLOPs and KV predictions."""
    fgeom = checkpoint.flops_geometry(path)
    n_image = checkpoint.image_tokens(path)
    n_text = raw["seq_len"] - n_image
    baseline = _row(base, fgeom, base["seq_len"] - n_image, n_image, {})
    rows = []
    for p, plan_counts, r in zip(pts, planned, raw["points"]):
        stages = list(zip(FEATHER["K"], r["kept"]))
        med = {m: statistics.median(r["samples"][m]) for m in METRICS}
        new = max(len(r["tokens"]) - 1, 0)
        rows.append({
            "label": p.label(), **p.to_json(), "kept": r["kept"], "kept_planned": plan_counts, **med,
            "kv_cache_bytes": r["kv_cache_bytes"],
            "kv_cache_bytes_predicted": kv_cache_bytes(fgeom, n_text, n_image, stages, new_tokens=new),
            "flops_llm_speedup": prefill_speedup(fgeom, n_text, n_image, stages),
            "llm_prefill_speedup": baseline["llm_prefill_s"] / med["llm_prefill_s"],
            "ttft_speedup": baseline["ttft_s"] / med["ttft_s"],
            "llm_prefill_gflops": prefill_flops(fgeom, n_text, n_image, stages, include_vision=False)["llm"] / 1e9,
            "new_tokens": new, "n_text": n_text, "tokens": r["tokens"], "samples": r["samples"]})
    geom = {"name": geometry, "checkpoint": str(path), "prompt": checkpoint.PROMPT, "n_text": n_text,
            "n_image": n_image, "grid": int(n_image**0.5), **vars(fgeom)}
    child = {"peak_rss_bytes": raw["peak_rss_bytes"], "torch_loaded": raw["torch_loaded"],
             "foreign_cpu_cores": raw.get("foreign_cpu_cores")}
    return {"kind": "points", "rows": rows, "baseline": baseline, "sweep_child": child, "geometry": geom}
