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


PEER_ROWS = ("f", "n", "o")
ALL_IDS = "".join(r.id for r in ROWS + QUANT_ROWS) + "".join(PEER_ROWS)


def select_rows(rows: str | None, quantized: bool) -> tuple[tuple[RowSpec, ...], tuple[str, ...]]:
    """The row specs and OpenVINO row ids a run measures: every row (h-m and n, o only with
    ``quantized``), or exactly the ids in ``rows`` (e.g. ``"acdhijklmfno"``)."""
    if rows is None:
        specs = ROWS + (QUANT_ROWS if quantized else ())
        return specs, PEER_ROWS if quantized else PEER_ROWS[:1]
    wanted = set(rows.replace(",", ""))
    unknown = sorted(wanted - set(ALL_IDS))
    if unknown or not wanted:
        raise BenchError(f"rows: {rows!r}; expected row ids among {ALL_IDS} (e.g. 'acd')")
    specs = tuple(r for r in ROWS + QUANT_ROWS if r.id in wanted)
    return specs, tuple(r for r in PEER_ROWS if r in wanted)


def benchmark(geometry: str = "bench", repeats: int = 5, new_tokens: int = 32, threads: int | None = None,
              openvino_python: str | None = None, log: Callable[[str], None] = print, quantized: bool = False,
              rows: str | None = None) -> dict:
    """Run every row and return ``{"rows", "ratios", "targets", "checks", "peer", "steps",
    "geometry", "machine", "source", "settings"}``; ``quantized`` adds rows h-m
    (feather-quantize); ``rows`` picks row ids instead (see ``select_rows``)."""
    if repeats < 1 or new_tokens < 1 or (threads is not None and threads < 1):
        raise BenchError(f"repeats={repeats}, new_tokens={new_tokens}, threads={threads}: expected each >= 1")
    specs, peer_ids = select_rows(rows, quantized)
    threads = threads or len(os.sched_getaffinity(0))
    path = checkpoint.resolve(geometry)
    log(f"checkpoint: {path}")
    common = {"model": str(path), "prompt": checkpoint.PROMPT, "image": str(_image()), "new_tokens": new_tokens,
              "repeats": repeats, "threads": threads}
    load_before = os.getloadavg()
    steps: dict = {}
    with tempfile.TemporaryDirectory(prefix="feather-bench-") as work:
        raw = {spec.id: _measure(spec, common, Path(work), log, steps) for spec in specs}
        peer = _peer(openvino_python, common, Path(work), raw, log, peer_ids)
    report = summarize(raw, path, geometry, new_tokens)
    report["peer"] = peer
    report["steps"] = steps
    report["machine"] = machine.describe(threads, load_before)
    report["source"] = machine.source()
    report["settings"] = {"repeats": repeats, "new_tokens": new_tokens, "threads": threads,
                          "warmup_runs": 1, "statistic": "median"}
    return report


def _peer(python: str | None, common: dict, work: Path, raw: dict, log, ids: tuple[str, ...] = ("f",)) -> dict:
    """Add the OpenVINO rows in ``ids`` (f: fp32, n: INT8 weights, o: INT4 weights) when
    ``python`` has optimum-intel; otherwise say why they are missing."""
    python = python or os.environ.get(openvino.ENV_VAR)
    if not ids:
        return {"status": "not run", "reason": "no OpenVINO row asked for"}
    if not python:
        return {"status": "not run", "reason": f"no --openvino-python (or ${openvino.ENV_VAR}) given"}
    for weights in (w for w, rid in openvino.WEIGHT_ROWS.items() if rid in ids):
        try:
            raw[openvino.WEIGHT_ROWS[weights]] = openvino.measure(python, common, work, log, weights)
        except BenchError as err:  # the peer is optional: its failure is a finding, not a crash
            log(f"peer skipped: {err}")
            return {"status": "failed", "reason": str(err), "python": python}
    return {"status": "ok", "python": python}


def _image() -> Path:
    from feather.cli import SAMPLE_IMAGE

    return SAMPLE_IMAGE


def _measure(spec: RowSpec, common: dict, work: Path, log, steps: dict) -> dict:
    job = {**common, "kind": spec.kind, "prune": spec.prune}
    if spec.long_prompt:
        job["prompt"] = long_prompt()
    if spec.kind == "chain":
        max_seq = LONG_MAX_SEQ if spec.long_prompt else None
        job["export"] = str(_export(common["model"], spec.prune, work, log, steps, max_seq))
        if spec.quant:
            job["export"] = str(_quantize(Path(job["export"]), spec.quant, log, steps))
    log(f"row {spec.id}: {spec.name}")
    result = run_child([sys.executable, "-m", "feather.bench.rows"], job, work, spec.id)
    return {"spec": spec, **result}


def _export(model: str, prune: dict, work: Path, log, steps: dict, max_seq: int | None = None) -> Path:
    """Export once per pruning config (and max_seq) per run, in a child process whose time,
    peak RSS and folder size go to ``steps``; later rows with the same config reuse it."""
    name = "export-" + "-".join(f"{k}{v}" for k, v in sorted(prune.items())).replace(" ", "")
    out = work / (name + (f"-seq{max_seq}" if max_seq else ""))
    if not (out / "feather.json").exists():
        log(f"export: {prune}" + (f", max_seq {max_seq}" if max_seq else ""))
        job = {"step": "export", "model": model, "prune": prune, "output": str(out), "max_seq": max_seq}
        steps[out.name] = _step(job, work, log)
    return out


def _quantize(export: Path, method: str, log, steps: dict) -> Path:
    """``export`` quantized with ``method`` beside it, in a child process (captures the float
    chain itself, as ``feather-quantize`` does); its time, peak RSS and size go to ``steps``."""
    out = export.with_name(f"{export.name}-{method}")
    if not (out / "feather.json").exists():
        log(f"quantize: {export.name} {method}")
        job = {"step": "quantize", "export": str(export), "method": method, "output": str(out)}
        steps[out.name] = _step(job, work=export.parent, log=log)
    return out


def _step(job: dict, work: Path, log) -> dict:
    result = run_child([sys.executable, "-m", "feather.bench.steps"], job, work, f"step-{Path(job['output']).name}")
    log(f"{job['step']}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB, "
        f"folder {result['folder_bytes'] / 2**30:.2f} GiB")
    return {"step": job["step"], **{k: result[k] for k in ("seconds", "peak_rss_bytes", "folder_bytes")}}


# -- summaries ------------------------------------------------------------------------------
def summarize(raw: dict, path: Path, geometry: str, new_tokens: int) -> dict:
    """Medians per row, FLOPs and KV predictions beside them, the ratios and the targets."""
    fgeom = checkpoint.flops_geometry(path)
    n_image = checkpoint.image_tokens(path)  # n_patches - 1 was right for CLIP only (SigLIP has no CLS)
    n_text = raw["a" if "a" in raw else next(iter(raw))]["seq_len"] - n_image
    rows = [_row(r, fgeom, r["seq_len"] - n_image, n_image, raw) for r in raw.values()]
    by_id = {r["id"]: r for r in rows}
    ratios = _ratios(by_id)
    if {"d", "g"} <= set(by_id):
        d, g = by_id["d"], by_id["g"]
        stages = _stages(FEATHER, d["kept"])
        short = decode_flops(fgeom, d["n_text"], n_image, stages, d["new_tokens"] or 1)
        long = decode_flops(fgeom, g["n_text"], n_image, stages, g["new_tokens"] or 1)
        ratios["decode_long_vs_short"] = g["decode_tokens_per_s"] / d["decode_tokens_per_s"]
        ratios["decode_long_vs_short_predicted"] = short / long
    geom = {"name": geometry, "checkpoint": str(path), "prompt": checkpoint.PROMPT, "n_text": n_text,
            "n_image": n_image, "grid": int(n_image**0.5), **vars(fgeom)}
    targets = _targets(ratios, rows)
    if geometry == "interleave-0.5b":
        targets.update(_real_size_targets(ratios, by_id))
    return {"rows": rows, "ratios": ratios, "targets": targets, "checks": _checks(raw), "geometry": geom}


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
    """Every ratio whose rows ran (a run with ``rows`` picked may lack some)."""
    have = set(rows)
    ratios: dict = {}
    if {"c", "d"} <= have:
        c, d = rows["c"], rows["d"]
        ratios.update(llm_prefill_speedup=c["llm_prefill_s"] / d["llm_prefill_s"],
                      flops_predicted_speedup=d["flops_llm_speedup"],
                      decode_speedup=d["decode_tokens_per_s"] / c["decode_tokens_per_s"],
                      ttft_speedup_vs_unpruned_chain=c["ttft_s"] / d["ttft_s"])
        ratios["llm_prefill_vs_flops"] = ratios["llm_prefill_speedup"] / ratios["flops_predicted_speedup"]
    if {"a", "d"} <= have:
        ratios["ttft_vs_torch_eager"] = rows["d"]["ttft_s"] / rows["a"]["ttft_s"]
    if {"a", "c"} <= have:
        ratios["chain_vs_torch_eager_ttft_unpruned"] = rows["c"]["ttft_s"] / rows["a"]["ttft_s"]
    if {"c", "e"} <= have:
        ratios["fastv_llm_prefill_speedup"] = rows["c"]["llm_prefill_s"] / rows["e"]["llm_prefill_s"]
        ratios["fastv_flops_predicted_speedup"] = rows["e"]["flops_llm_speedup"]
    ratios.update(_quant_ratios(rows))
    if {"c", "d", "f"} <= have:
        c, d, f = rows["c"], rows["d"], rows["f"]
        ratios["openvino_ttft_vs_unpruned_chain"] = f["ttft_s"] / c["ttft_s"]
        ratios["openvino_decode_vs_unpruned_chain"] = f["decode_tokens_per_s"] / c["decode_tokens_per_s"]
        ratios["feather_decode_vs_openvino"] = d["decode_tokens_per_s"] / f["decode_tokens_per_s"]
        ratios["unpruned_decode_vs_openvino"] = c["decode_tokens_per_s"] / f["decode_tokens_per_s"]
    if {"j", "n", "o"} <= have:  # the int8-int4 FEATHER chain against OpenVINO at the same weights
        j = rows["j"]
        ratios["ttft_vs_openvino_same_precision"] = j["ttft_s"] / rows["n"]["ttft_s"]
        ratios["decode_vs_openvino_same_precision"] = j["decode_tokens_per_s"] / rows["o"]["decode_tokens_per_s"]
    if {"j", "f"} <= have:
        ratios["int8_int4_ttft_vs_openvino_fp32"] = rows["j"]["ttft_s"] / rows["f"]["ttft_s"]
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


def _target(value, wanted: str) -> dict:
    op, bound = wanted.split()
    met = value if isinstance(value, bool) else value <= float(bound) if op == "<=" else value >= float(bound)
    return {"value": value, "target": wanted, "met": met}


def _targets(ratios: dict, rows: list[dict]) -> dict:
    """The issues' targets whose rows ran, each with the measured value and whether it was met."""
    kv = all(r["kv_cache_bytes"] == r["kv_cache_bytes_predicted"] for r in rows if r["kind"] != "openvino")
    targets = {"kv_bytes_match_kept_counts": {"value": kv, "target": "true", "met": kv}}
    for key, wanted in (("llm_prefill_vs_flops", ">= 0.8"), ("ttft_vs_torch_eager", "<= 0.5"),
                        ("decode_speedup", ">= 1.0"), ("feather_decode_vs_openvino", ">= 1.0"),
                        ("unpruned_decode_vs_openvino", ">= 0.9"),
                        ("ttft_vs_openvino_same_precision", "<= 0.5"),  # <= 0.5x OpenVINO INT8's TTFT
                        ("decode_vs_openvino_same_precision", ">= 1.0")):  # >= its INT4 decode
        if key in ratios:
            targets[key] = _target(ratios[key], wanted)
    if "decode_long_vs_short" in ratios:
        off = ratios["decode_long_vs_short"] / ratios["decode_long_vs_short_predicted"] - 1
        targets["decode_long_vs_short_within_10pct_of_predicted"] = {"value": off, "target": "|x| <= 0.10",
                                                                     "met": abs(off) <= 0.10}
    if "int8_int4_ttft_speedup" in ratios:  # the issue: TTFT at most 0.55x, decode at least 2.2x row d
        targets["int8_int4_ttft_vs_fp32"] = _target(1 / ratios["int8_int4_ttft_speedup"], "<= 0.55")
        targets["int8_int4_decode_speedup"] = _target(ratios["int8_int4_decode_speedup"], ">= 2.2")
    return dict(sorted(targets.items(), key=lambda kv_: kv_[0] == "kv_bytes_match_kept_counts"))


def _real_size_targets(ratios: dict, rows: dict) -> dict:
    """Issue 20's targets at the interleave-0.5b geometry (int8-int4 FEATHER, row j, against
    OpenVINO unpruned at fp32 / INT8 / INT4, rows f / n / o), where the rows ran."""
    targets = {}
    for key, wanted in (("int8_int4_ttft_vs_openvino_fp32", "<= 0.35"),
                        ("ttft_vs_openvino_same_precision", "<= 0.6"),
                        ("decode_vs_openvino_same_precision", ">= 1.2"),
                        ("llm_prefill_vs_flops", ">= 0.9")):
        if key in ratios:
            targets[key] = _target(ratios[key], wanted)
    for chain, peer in (("c", "f"), ("k", "n"), ("l", "o")):  # peak RSS at the same weight precision
        if chain in rows and peer in rows:
            ratio = rows[chain]["peak_rss_bytes"] / rows[peer]["peak_rss_bytes"]
            targets[f"peak_rss_{chain}_vs_openvino_{peer}"] = _target(ratio, "<= 1.0")
    return targets


def _checks(raw: dict) -> dict:
    """Same greedy tokens where the design says they must match (fp32)."""
    checks = {}
    if {"a", "c"} <= set(raw):
        checks["chain_unpruned_tokens_equal_torch_eager"] = raw["c"]["tokens"] == raw["a"]["tokens"]
    if {"b", "d"} <= set(raw):
        checks["chain_feather_tokens_equal_reference"] = raw["d"]["tokens"] == raw["b"]["tokens"]
        checks["chain_feather_kept_equal_reference"] = raw["d"]["kept"] == raw["b"]["kept"]
    if {"a", "f"} <= set(raw):
        checks["openvino_tokens_equal_torch_eager"] = raw["f"]["tokens"] == raw["a"]["tokens"]
    return checks
