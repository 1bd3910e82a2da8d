"""``benchmark()``: every row of feather-bench in one run, as one report dict.

Rows (each measured in its own child process, see ``feather.bench.rows``):

    a  transformers' eager ``generate``, unpruned          (torch)
    b  the PyTorch FEATHER reference, K = 8 16             (torch)
    c  the ONNX Runtime chain, unpruned (criterion none)   (feather.runtime, no torch)
    d  the chain with FEATHER, K = 8 16                    (feather.runtime, no torch)
    e  the chain with FastV (original, K = 3, R = 0.75)    (feather.runtime, no torch)
    f  OpenVINO through optimum-intel, unpruned (optional: only with a Python that has it)

The chain rows' exports go to one temporary folder, made once per run and removed at
the end. Beside each row: the FLOPs-predicted LLM-prefill speed-up
(``feather.flops.prefill_speedup``) for the prompt's measured text-token count and the
row's kept counts, and the KV-cache bytes that those counts predict.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from feather.bench import checkpoint, machine, openvino
from feather.bench.proc import BenchError, run_child
from feather.flops import kv_cache_bytes, prefill_flops, prefill_speedup

METRICS = ("vision_s", "llm_prefill_s", "ttft_s", "decode_s", "decode_tokens_per_s")


@dataclass(frozen=True)
class RowSpec:
    id: str
    name: str  # short: the table's and the plot's label
    kind: str  # a feather.bench.rows kind
    prune: dict = field(default_factory=lambda: {"criterion": "none"})
    baseline: str | None = None  # the unpruned row its measured speed-up is taken against


FEATHER = {"criterion": "feather", "K": [8, 16]}
FASTV = {"criterion": "original", "K": [3], "ratio": 0.75}
ROWS = (
    RowSpec("a", "torch eager, unpruned", "torch_eager"),
    RowSpec("b", "torch ref, FEATHER", "reference", FEATHER, baseline="a"),
    RowSpec("c", "chain, unpruned", "chain"),
    RowSpec("d", "chain, FEATHER", "chain", FEATHER, baseline="c"),
    RowSpec("e", "chain, FastV", "chain", FASTV, baseline="c"),
)


def benchmark(geometry: str = "bench", repeats: int = 5, new_tokens: int = 32, threads: int | None = None,
              openvino_python: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Run every row and return ``{"rows", "ratios", "targets", "checks", "peer", "geometry",
    "machine", "source", "settings"}``."""
    if repeats < 1 or new_tokens < 1 or (threads is not None and threads < 1):
        raise BenchError(f"repeats={repeats}, new_tokens={new_tokens}, threads={threads}: expected each >= 1")
    threads = threads or len(os.sched_getaffinity(0))
    path = checkpoint.resolve(geometry)
    log(f"checkpoint: {path}")
    common = {"model": str(path), "prompt": checkpoint.PROMPT, "image": str(_image()), "new_tokens": new_tokens,
              "repeats": repeats, "threads": threads}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="feather-bench-") as work:
        raw = {spec.id: _measure(spec, common, Path(work), log) for spec in ROWS}
        peer = _peer(openvino_python, common, Path(work), raw, log)
    report = summarize(raw, path, geometry, new_tokens)
    report["peer"] = peer
    report["machine"] = machine.describe(threads, load_before)
    report["source"] = machine.source()
    report["settings"] = {"repeats": repeats, "new_tokens": new_tokens, "threads": threads,
                          "warmup_runs": 1, "statistic": "median"}
    return report


def _peer(python: str | None, common: dict, work: Path, raw: dict, log) -> dict:
    """Add row f when ``python`` has optimum-intel; otherwise say why it is missing."""
    python = python or os.environ.get(openvino.ENV_VAR)
    if not python:
        return {"status": "not run", "reason": f"no --openvino-python (or ${openvino.ENV_VAR}) given"}
    try:
        raw["f"] = openvino.measure(python, common, work, log)
    except BenchError as err:  # the peer is optional: its failure is a finding, not a crash
        log(f"peer skipped: {err}")
        return {"status": "failed", "reason": str(err), "python": python}
    return {"status": "ok", "python": python}


def _image() -> Path:
    from feather.cli import SAMPLE_IMAGE

    return SAMPLE_IMAGE


def _measure(spec: RowSpec, common: dict, work: Path, log) -> dict:
    job = {**common, "kind": spec.kind, "prune": spec.prune}
    if spec.kind == "chain":
        job["export"] = str(_export(common["model"], spec.prune, work, log))
    log(f"row {spec.id}: {spec.name}")
    result = run_child([sys.executable, "-m", "feather.bench.rows"], job, work, spec.id)
    return {"spec": spec, **result}


def _export(model: str, prune: dict, work: Path, log) -> Path:
    """Export once per pruning config per run; later rows with the same config reuse it."""
    from feather.config import PruneConfig
    from feather.export import export

    out = work / ("export-" + "-".join(f"{k}{v}" for k, v in sorted(prune.items())).replace(" ", ""))
    if not (out / "feather.json").exists():
        log(f"export: {prune}")
        export(model=model, config=PruneConfig(**_config_args(prune)), output=out, quiet=True)
    return out


def _config_args(prune: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in prune.items()}


# -- summaries ------------------------------------------------------------------------------
def summarize(raw: dict, path: Path, geometry: str, new_tokens: int) -> dict:
    """Medians per row, FLOPs and KV predictions beside them, the ratios and the targets."""
    fgeom = checkpoint.flops_geometry(path)
    n_image = fgeom.n_patches - 1
    n_text = raw["a"]["seq_len"] - n_image
    rows = [_row(r, fgeom, n_text, n_image, raw) for r in raw.values()]
    by_id = {r["id"]: r for r in rows}
    ratios = _ratios(by_id)
    geom = {"name": geometry, "checkpoint": str(path), "prompt": checkpoint.PROMPT, "n_text": n_text,
            "n_image": n_image, "grid": int(n_image**0.5), **vars(fgeom)}
    return {"rows": rows, "ratios": ratios, "targets": _targets(ratios, rows), "checks": _checks(raw),
            "geometry": geom}


def _stages(prune: dict, kept: list[int]) -> list[tuple[int, int]]:
    return list(zip(prune.get("K", []), kept)) if prune.get("criterion", "none") != "none" else []


def _row(r: dict, fgeom, n_text: int, n_image: int, raw: dict) -> dict:
    spec: RowSpec = r["spec"]
    stages = _stages(spec.prune, r["kept"])
    med = {m: statistics.median(r["samples"][m]) for m in METRICS}
    new = max(len(r["tokens"]) - 1, 0)
    full, pruned = (prefill_flops(fgeom, n_text, n_image, s) for s in ([], stages))
    row = {"id": spec.id, "name": spec.name, "kind": spec.kind, "prune": spec.prune, "kept": r["kept"], **med,
           "peak_rss_bytes": r["peak_rss_bytes"], "kv_cache_bytes": r["kv_cache_bytes"],
           "kv_cache_bytes_predicted": kv_cache_bytes(fgeom, n_text, n_image, stages, new_tokens=new),
           "flops_llm_speedup": prefill_speedup(fgeom, n_text, n_image, stages),
           "flops_prefill_speedup": full["total"] / pruned["total"], "llm_prefill_gflops": pruned["llm"] / 1e9,
           "torch_loaded": r["torch_loaded"], "foreign_cpu_cores": r.get("foreign_cpu_cores"), "new_tokens": new,
           "tokens": r["tokens"], "samples": r["samples"]}
    base = raw.get(spec.baseline) if spec.baseline else None
    if base is not None:
        row["llm_prefill_speedup"] = statistics.median(base["samples"]["llm_prefill_s"]) / med["llm_prefill_s"]
    return row


def _ratios(rows: dict) -> dict:
    a, c, d, e = (rows[k] for k in "acde")
    ratios = {
        "llm_prefill_speedup": c["llm_prefill_s"] / d["llm_prefill_s"],
        "flops_predicted_speedup": d["flops_llm_speedup"],
        "ttft_vs_torch_eager": d["ttft_s"] / a["ttft_s"],
        "decode_speedup": d["decode_tokens_per_s"] / c["decode_tokens_per_s"],
        "fastv_llm_prefill_speedup": c["llm_prefill_s"] / e["llm_prefill_s"],
        "fastv_flops_predicted_speedup": e["flops_llm_speedup"],
        "chain_vs_torch_eager_ttft_unpruned": c["ttft_s"] / a["ttft_s"],
        "ttft_speedup_vs_unpruned_chain": c["ttft_s"] / d["ttft_s"],
    }
    ratios["llm_prefill_vs_flops"] = ratios["llm_prefill_speedup"] / ratios["flops_predicted_speedup"]
    if "f" in rows:
        ratios["openvino_ttft_vs_unpruned_chain"] = rows["f"]["ttft_s"] / c["ttft_s"]
        ratios["openvino_decode_vs_unpruned_chain"] = rows["f"]["decode_tokens_per_s"] / c["decode_tokens_per_s"]
    return ratios


def _targets(ratios: dict, rows: list[dict]) -> dict:
    """The issue's targets, each with the measured value and whether it was met."""
    kv = all(r["kv_cache_bytes"] == r["kv_cache_bytes_predicted"] for r in rows if r["kind"] != "openvino")
    return {
        "llm_prefill_vs_flops": {"value": ratios["llm_prefill_vs_flops"], "target": ">= 0.8",
                                 "met": ratios["llm_prefill_vs_flops"] >= 0.8},
        "ttft_vs_torch_eager": {"value": ratios["ttft_vs_torch_eager"], "target": "<= 0.5",
                                "met": ratios["ttft_vs_torch_eager"] <= 0.5},
        "decode_speedup": {"value": ratios["decode_speedup"], "target": ">= 1.0",
                           "met": ratios["decode_speedup"] >= 1.0},
        "kv_bytes_match_kept_counts": {"value": kv, "target": "true", "met": kv},
    }


def _checks(raw: dict) -> dict:
    """Same greedy tokens where the design says they must match (fp32)."""
    checks = {
        "chain_unpruned_tokens_equal_torch_eager": raw["c"]["tokens"] == raw["a"]["tokens"],
        "chain_feather_tokens_equal_reference": raw["d"]["tokens"] == raw["b"]["tokens"],
        "chain_feather_kept_equal_reference": raw["d"]["kept"] == raw["b"]["kept"],
    }
    if "f" in raw:
        checks["openvino_tokens_equal_torch_eager"] = raw["f"]["tokens"] == raw["a"]["tokens"]
    return checks
