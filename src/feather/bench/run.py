"""``benchmark()``: every row of feather-bench in one run, as one report dict.

Rows (each measured in its own child process, see ``feather.bench.rows``):

    a  transformers' eager ``generate``, unpruned          (torch)
    b  the PyTorch FEATHER reference, K = 8 16             (torch)
    c  the ONNX Runtime chain, unpruned (criterion none)   (feather.runtime, no torch)
    d  the chain with FEATHER, K = 8 16                    (feather.runtime, no torch)
    e  the chain with FastV (original, K = 3, R = 0.75)    (feather.runtime, no torch)
    f  OpenVINO through optimum-intel, unpruned (optional: only with a Python that has it)
    n, o  (with ``quantized`` and the peer) OpenVINO with INT8 / INT4 weights (optimum-intel's
       weight compression), against the int8-int4 FEATHER chain (row j)
    g  the FEATHER chain with a long prompt (~1,500 text tokens), from an export with a
       larger --max-seq: decode at a long context, against row d and against what
       attention's extra work alone predicts (``feather.flops.decode_flops``)
    h-m  (only with ``quantized=True``) the FEATHER chain (h, i, j) and the unpruned chain
       (k, l, m) quantized by feather-quantize: int8, int4, int8-int4, each against row d / c

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
from feather.flops import decode_flops, kv_cache_bytes, prefill_flops, prefill_speedup

METRICS = ("vision_s", "llm_prefill_s", "ttft_s", "decode_s", "decode_tokens_per_s")


@dataclass(frozen=True)
class RowSpec:
    id: str
    name: str  # short: the table's and the plot's label
    kind: str  # a feather.bench.rows kind
    prune: dict = field(default_factory=lambda: {"criterion": "none"})
    baseline: str | None = None  # the unpruned row its measured speed-up is taken against
    long_prompt: bool = False  # the ~1,500-text-token prompt, on an export with LONG_MAX_SEQ
    quant: str | None = None  # a feather-quantize method applied to the row's export


FEATHER = {"criterion": "feather", "K": [8, 16]}
FASTV = {"criterion": "original", "K": [3], "ratio": 0.75}
ROWS = (
    RowSpec("a", "torch eager, unpruned", "torch_eager"),
    RowSpec("b", "torch ref, FEATHER", "reference", FEATHER, baseline="a"),
    RowSpec("c", "chain, unpruned", "chain"),
    RowSpec("d", "chain, FEATHER", "chain", FEATHER, baseline="c"),
    RowSpec("e", "chain, FastV", "chain", FASTV, baseline="c"),
    RowSpec("g", "chain, FEATHER, long prompt", "chain", FEATHER, long_prompt=True),
)
QUANT_ROWS = tuple(
    RowSpec(rid, f"chain, {label}, {method}", "chain", prune, baseline=base, quant=method)
    for rids, label, prune, base in (("hij", "FEATHER", FEATHER, "d"), ("klm", "unpruned", {"criterion": "none"}, "c"))
    for rid, method in zip(rids, ("int8", "int4", "int8-int4"))
)
LONG_MAX_SEQ = 4096
LONG_REPEATS = 68  # copies of the bench prompt: ~1,500 text tokens with the template (tiny BPE)


def long_prompt() -> str:
    """The bench prompt repeated: the same words, ~1,500 text tokens (the count is measured)."""
    return " ".join([checkpoint.PROMPT] * LONG_REPEATS)


def benchmark(geometry: str = "bench", repeats: int = 5, new_tokens: int = 32, threads: int | None = None,
              openvino_python: str | None = None, log: Callable[[str], None] = print, quantized: bool = False) -> dict:
    """Run every row and return ``{"rows", "ratios", "targets", "checks", "peer", "geometry",
    "machine", "source", "settings"}``; ``quantized`` adds rows h-m (feather-quantize)."""
    if repeats < 1 or new_tokens < 1 or (threads is not None and threads < 1):
        raise BenchError(f"repeats={repeats}, new_tokens={new_tokens}, threads={threads}: expected each >= 1")
    threads = threads or len(os.sched_getaffinity(0))
    path = checkpoint.resolve(geometry)
    log(f"checkpoint: {path}")
    common = {"model": str(path), "prompt": checkpoint.PROMPT, "image": str(_image()), "new_tokens": new_tokens,
              "repeats": repeats, "threads": threads}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="feather-bench-") as work:
        rows = ROWS + (QUANT_ROWS if quantized else ())
        raw = {spec.id: _measure(spec, common, Path(work), log) for spec in rows}
        peer = _peer(openvino_python, common, Path(work), raw, log, quantized)
    report = summarize(raw, path, geometry, new_tokens)
    report["peer"] = peer
    report["machine"] = machine.describe(threads, load_before)
    report["source"] = machine.source()
    report["settings"] = {"repeats": repeats, "new_tokens": new_tokens, "threads": threads,
                          "warmup_runs": 1, "statistic": "median"}
    return report


def _peer(python: str | None, common: dict, work: Path, raw: dict, log, quantized: bool = False) -> dict:
    """Add row f (and, with ``quantized``, rows n and o: OpenVINO with INT8 and INT4 weights)
    when ``python`` has optimum-intel; otherwise say why they are missing."""
    python = python or os.environ.get(openvino.ENV_VAR)
    if not python:
        return {"status": "not run", "reason": f"no --openvino-python (or ${openvino.ENV_VAR}) given"}
    for weights in ("fp32", "int8", "int4") if quantized else ("fp32",):
        try:
            raw[openvino.WEIGHT_ROWS[weights]] = openvino.measure(python, common, work, log, weights)
        except BenchError as err:  # the peer is optional: its failure is a finding, not a crash
            log(f"peer skipped: {err}")
            return {"status": "failed", "reason": str(err), "python": python}
    return {"status": "ok", "python": python}


def _image() -> Path:
    from feather.cli import SAMPLE_IMAGE

    return SAMPLE_IMAGE


def _measure(spec: RowSpec, common: dict, work: Path, log) -> dict:
    job = {**common, "kind": spec.kind, "prune": spec.prune}
    if spec.long_prompt:
        job["prompt"] = long_prompt()
    if spec.kind == "chain":
        job["export"] = str(_export(common["model"], spec.prune, work, log, LONG_MAX_SEQ if spec.long_prompt else None))
        if spec.quant:
            job["export"] = str(_quantize(Path(job["export"]), spec.quant, log))
    log(f"row {spec.id}: {spec.name}")
    result = run_child([sys.executable, "-m", "feather.bench.rows"], job, work, spec.id)
    return {"spec": spec, **result}


def _export(model: str, prune: dict, work: Path, log, max_seq: int | None = None) -> Path:
    """Export once per pruning config (and max_seq) per run; later rows with the same reuse it."""
    from feather.config import PruneConfig
    from feather.export import export

    name = "export-" + "-".join(f"{k}{v}" for k, v in sorted(prune.items())).replace(" ", "")
    out = work / (name + (f"-seq{max_seq}" if max_seq else ""))
    if not (out / "feather.json").exists():
        log(f"export: {prune}" + (f", max_seq {max_seq}" if max_seq else ""))
        extra = {"max_seq": max_seq} if max_seq else {}
        export(model=model, config=PruneConfig(**_config_args(prune)), output=out, quiet=True, **extra)
    return out


def _quantize(export: Path, method: str, log) -> Path:
    """``export`` quantized with ``method`` beside it (the float chain captured once per export)."""
    from feather.calibration import quantize, record
    from feather.calibration.data import default_set

    out = export.with_name(f"{export.name}-{method}")
    if not (out / "feather.json").exists():
        log(f"quantize: {export.name} {method}")
        if export not in _CAPTURES:
            _CAPTURES[export] = record(export, default_set())
        done = quantize(export, method=method, output=out, quiet=True, captured=_CAPTURES[export])
        log(f"quantize: {method} max rel err {done.report.max_rel_error:.3g} "
            f"({'PASS' if done.report.ok else 'FAIL'}), {sum(done.timings.values()):.1f} s")
    return out


_CAPTURES: dict = {}


def _config_args(prune: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in prune.items()}


# -- summaries ------------------------------------------------------------------------------
def summarize(raw: dict, path: Path, geometry: str, new_tokens: int) -> dict:
    """Medians per row, FLOPs and KV predictions beside them, the ratios and the targets."""
    fgeom = checkpoint.flops_geometry(path)
    n_image = fgeom.n_patches - 1
    n_text = raw["a"]["seq_len"] - n_image
    rows = [_row(r, fgeom, r["seq_len"] - n_image, n_image, raw) for r in raw.values()]
    by_id = {r["id"]: r for r in rows}
    ratios = _ratios(by_id)
    if "g" in by_id:
        d, g = by_id["d"], by_id["g"]
        stages = _stages(FEATHER, d["kept"])
        short = decode_flops(fgeom, d["n_text"], n_image, stages, d["new_tokens"] or 1)
        long = decode_flops(fgeom, g["n_text"], n_image, stages, g["new_tokens"] or 1)
        ratios["decode_long_vs_short"] = g["decode_tokens_per_s"] / d["decode_tokens_per_s"]
        ratios["decode_long_vs_short_predicted"] = short / long
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
           "tokens": r["tokens"], "samples": r["samples"], "n_text": n_text}
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
    ratios.update(_quant_ratios(rows))
    if "f" in rows:
        f = rows["f"]
        ratios["openvino_ttft_vs_unpruned_chain"] = f["ttft_s"] / c["ttft_s"]
        ratios["openvino_decode_vs_unpruned_chain"] = f["decode_tokens_per_s"] / c["decode_tokens_per_s"]
        ratios["feather_decode_vs_openvino"] = d["decode_tokens_per_s"] / f["decode_tokens_per_s"]
        ratios["unpruned_decode_vs_openvino"] = c["decode_tokens_per_s"] / f["decode_tokens_per_s"]
    if {"j", "n", "o"} <= set(rows):  # the int8-int4 FEATHER chain against OpenVINO at the same weights
        j = rows["j"]
        ratios["ttft_vs_openvino_same_precision"] = j["ttft_s"] / rows["n"]["ttft_s"]
        ratios["decode_vs_openvino_same_precision"] = j["decode_tokens_per_s"] / rows["o"]["decode_tokens_per_s"]
    return ratios


def _quant_ratios(rows: dict) -> dict:
    """Each quantized FEATHER chain against the fp32 FEATHER chain (row d), when rows h-j ran."""
    if not {"h", "i", "j"} <= set(rows):
        return {}
    d, h, i, j = (rows[k] for k in "dhij")
    return {"int8_ttft_speedup": d["ttft_s"] / h["ttft_s"],
            "int4_decode_speedup": i["decode_tokens_per_s"] / d["decode_tokens_per_s"],
            "int8_int4_ttft_speedup": d["ttft_s"] / j["ttft_s"],
            "int8_int4_decode_speedup": j["decode_tokens_per_s"] / d["decode_tokens_per_s"]}


def _targets(ratios: dict, rows: list[dict]) -> dict:
    """The issue's targets, each with the measured value and whether it was met."""
    kv = all(r["kv_cache_bytes"] == r["kv_cache_bytes_predicted"] for r in rows if r["kind"] != "openvino")
    targets = {
        "llm_prefill_vs_flops": {"value": ratios["llm_prefill_vs_flops"], "target": ">= 0.8",
                                 "met": ratios["llm_prefill_vs_flops"] >= 0.8},
        "ttft_vs_torch_eager": {"value": ratios["ttft_vs_torch_eager"], "target": "<= 0.5",
                                "met": ratios["ttft_vs_torch_eager"] <= 0.5},
        "decode_speedup": {"value": ratios["decode_speedup"], "target": ">= 1.0",
                           "met": ratios["decode_speedup"] >= 1.0},
        "kv_bytes_match_kept_counts": {"value": kv, "target": "true", "met": kv},
    }
    if "decode_long_vs_short" in ratios:
        off = ratios["decode_long_vs_short"] / ratios["decode_long_vs_short_predicted"] - 1
        targets["decode_long_vs_short_within_10pct_of_predicted"] = {"value": off, "target": "|x| <= 0.10",
                                                                     "met": abs(off) <= 0.10}
    if "int8_int4_ttft_speedup" in ratios:  # the issue: TTFT at most 0.55x, decode at least 2.2x row d
        ttft = 1 / ratios["int8_int4_ttft_speedup"]
        targets["int8_int4_ttft_vs_fp32"] = {"value": ttft, "target": "<= 0.55", "met": ttft <= 0.55}
        dec = ratios["int8_int4_decode_speedup"]
        targets["int8_int4_decode_speedup"] = {"value": dec, "target": ">= 2.2", "met": dec >= 2.2}
    if "ttft_vs_openvino_same_precision" in ratios:  # the issue: <= 0.5x OpenVINO INT8 TTFT, >= 1.0x its INT4 decode
        v = ratios["ttft_vs_openvino_same_precision"]
        targets["ttft_vs_openvino_same_precision"] = {"value": v, "target": "<= 0.5", "met": v <= 0.5}
        v = ratios["decode_vs_openvino_same_precision"]
        targets["decode_vs_openvino_same_precision"] = {"value": v, "target": ">= 1.0", "met": v >= 1.0}
    for key, target in (("feather_decode_vs_openvino", 1.0), ("unpruned_decode_vs_openvino", 0.9)):
        if key in ratios:
            targets[key] = {"value": ratios[key], "target": f">= {target}", "met": ratios[key] >= target}
    return targets


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
