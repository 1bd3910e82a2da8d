"""``quantize()``: a floating-point export folder -> a quantized export folder + its accuracy report.

    capture   run the float chain (pruning included) on the calibration set, recording every
              graph's feeds (feather.calibration.capture)
    quantize  each selected graph with onnxruntime.quantization (feather.calibration.methods),
              check it against the target's operator allow-list, write feather.json
    report    teacher-forced per-graph errors and chain agreement (feather.calibration.report),
              written beside the graphs as quantization.json

Everything happens in a work folder beside the output, moved into place only at the end
(``feather.folder.staged_output``, the export's own folder rules and transaction: missing
parents created, leftovers of killed runs removed, the clean-up held against signals), so a
refusal, a failure or an interrupt leaves nothing on disk. Which graphs are quantized: every
decoder segment; the vision tower and the LM head as ``quantize_vision`` / ``quantize_lm_head``
say: by default the tower stays float and the head follows the method (``Method.head``: int8
and int8-int4 quantize it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from feather.calibration import capture as capture_mod
from feather.calibration import methods as methods_mod
from feather.calibration import report as report_mod
from feather.calibration.data import Sample, default_set, load_set
from feather.errors import InputError, OutputError
from feather.export.progress import Steps
from feather.folder import check_output, staged_output
from feather.manifest import GraphSpec, Manifest, Tolerance, graphs, load_manifest, save_manifest
from feather.text import shown

REPORT_FILE = "quantization.json"


@dataclass
class Quantized:
    """The output folder, its accuracy report and the seconds each phase took."""

    folder: Path
    report: report_mod.Report
    timings: dict


def quantize(export_dir: str | os.PathLike, method: str = "int8", output: str | os.PathLike | None = None,
             calibration: str | os.PathLike | None = None, overwrite: bool = False, quiet: bool = False,
             quantize_vision: bool | None = None, quantize_lm_head: bool | None = None, max_new_tokens: int = 8,
             threads: int | None = None, captured: capture_mod.Capture | None = None) -> Quantized:
    """Quantize the float export ``export_dir`` with ``method`` (``methods.METHODS``) into
    ``output`` (default ``<export_dir>-<method>``), calibrated on ``calibration`` (a JSONL of
    ``{"image", "prompt"}``; default: the built-in set). Raises ``ConfigError`` for an unknown
    method, ``InputError`` for a bad calibration file or a folder that is already quantized,
    ``ManifestError`` for a folder that is not an intact export, ``OutputError`` for an
    output it may not write (checked before the capture runs; missing parent folders are
    created), or a file-system failure while writing; in each case nothing is written.
    ``captured``: a ``record()`` of this same export to reuse (quantizing one export several
    ways captures once). ``quantize_vision`` / ``quantize_lm_head``: None takes the default: the
    tower float; the head quantized by int8 and int8-int4 (``Method.head``, measured at real size
    in docs/quantization.md), float with the others."""
    how = methods_mod.get(method)
    quantize_vision = bool(quantize_vision)
    quantize_lm_head = how.head if quantize_lm_head is None else bool(quantize_lm_head)
    import onnx  # noqa: F401  (the [export] extra: fail before the capture runs, not after it)
    import onnxruntime.quantization  # noqa: F401

    src = Path(export_dir)
    manifest = check_source(src)
    if captured is not None:
        samples = captured.samples
    else:
        samples = load_set(calibration) if calibration is not None else default_set()
    out = _check_output(src, output or f"{os.fspath(src).rstrip('/')}-{method}", overwrite)
    timings: dict = {}
    with staged_output(out, overwrite) as tmp:  # parents, leftovers, work folder; swap or clean-up
        t = time.perf_counter()
        cap = captured or _capture(src, samples, max_new_tokens, threads, quiet)
        timings["capture_s"] = time.perf_counter() - t
        t = time.perf_counter()
        quantized = write_graphs(src, tmp, manifest, how, cap, quantize_vision, quantize_lm_head, quiet)
        timings["quantize_s"] = time.perf_counter() - t
        t = time.perf_counter()
        report = _report(cap, src, tmp, how, quantized, threads, quiet)
        timings["report_s"] = time.perf_counter() - t
        _write_report(tmp, report, samples, timings, quantize_vision, quantize_lm_head)
    return Quantized(out, report, timings)


def check_source(src: Path) -> Manifest:
    """The source export's manifest, verified; refuses a folder whose graphs are already
    quantized and an fp16 export (onnxruntime's quantizers take fp32 graphs)."""
    manifest = load_manifest(src)
    done = report_mod.quantized_graphs(manifest)
    if done:
        raise InputError(f"{shown(src)}: already quantized ({done[0]} is "
                         f"{_method_of(manifest, done[0])}); quantize the floating-point export it came from")
    if manifest.precision != "fp32":
        raise InputError(f"{shown(src)}: precision {manifest.precision}; feather-quantize takes an fp32 export "
                         "(re-export with --precision fp32)")
    return manifest


def _method_of(manifest: Manifest, file: str) -> str:
    for _, g in manifest.graphs_with_paths():
        if file == g.file:
            return g.method
        if file == g.decode_file:
            return g.decode_method or "quantized"
    return "quantized"


def _check_output(src: Path, output, overwrite: bool) -> Path:
    """``feather.folder.check_output``, and never overlapping the export being quantized."""
    out = check_output(output, overwrite)
    real = Path(os.path.realpath(src))
    if out == real or real in out.parents or out in real.parents:
        raise OutputError(f"{shown(out)}: overlaps the export being quantized ({shown(real)}); choose a new folder")
    return out


def _capture(src: Path, samples: list[Sample], max_new_tokens: int, threads, quiet: bool):
    low, size, available = capture_mod.one_at_a_time(src)
    if low and not quiet:
        print(f"capture: the float chain's graphs take {size / 1e9:.1f} GB, more than {capture_mod.FIT:g} of the "
              f"{available / 1e9:.1f} GB available; running one graph at a time (slower)", file=sys.stderr)
    with Steps(len(samples), quiet) as steps:
        steps.step("capture (float chain)")
        return capture_mod.record(src, samples, max_new_tokens, threads=threads, on_sample=lambda _: steps.done())


def selected(manifest: Manifest, quantize_vision: bool) -> list[tuple[str, GraphSpec]]:
    """(JSON path, graph) of the graphs a method quantizes: every segment, and vision if asked."""
    chosen = [(p, g) for p, g in manifest.graphs_with_paths() if p.startswith("segments")]
    return ([("vision", manifest.vision)] if quantize_vision else []) + chosen


def write_graphs(src: Path, tmp: Path, manifest: Manifest, how: methods_mod.Method, cap, quantize_vision: bool,
                 quantize_lm_head: bool, quiet: bool) -> Manifest:
    """Copy the float files, write the quantized graphs, save feather.json; return the manifest."""
    from feather.export.onnx_io import check_graph

    graphs = selected(manifest, quantize_vision)
    keep = set(manifest.files) - {f for _, g in graphs for f in (g.file, g.file + ".data")}
    for name in sorted(keep):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, tmp / name)
    work = tmp / ".work"
    work.mkdir()
    jobs = [(g, kind) for _, g in graphs for kind in filter(None, (how.weights, how.decode_weights))]
    new = {}
    with Steps(len(jobs), quiet) as steps:
        for graph, kind in jobs:
            name = graph.file if kind == how.weights else graph.file.replace(".onnx", f".{kind}.onnx")
            steps.step(f"{kind} {name}")
            _quantize_graph(src / graph.file, tmp / name, work, graph, kind, how, cap, manifest, quantize_lm_head)
            check_graph(tmp / name, how.target)
            new.setdefault(graph.file, {})["decode" if kind != how.weights else "prefill"] = (name, kind)
            steps.done()
    shutil.rmtree(work)
    from feather.export import tied

    tied.reshare(tmp, sorted(name for files in new.values() for name, _ in files.values()))  # a float head
    result = _manifest(manifest, how, new)
    save_manifest(result, tmp)
    return result


def _quantize_graph(src: Path, dst: Path, work: Path, graph: GraphSpec, kind: str, how, cap, manifest: Manifest,
                    quantize_lm_head: bool) -> None:
    import onnx

    if how.opset is not None:
        methods_mod.convert_opset(src, work / src.name, how.opset)
        src = work / src.name
    src = methods_mod.infer_shapes(src, work)
    nodes, _ = methods_mod.weight_matmuls(onnx.load(str(src), load_external_data=False),
                                          skip_lm_head=not quantize_lm_head, logits=graph.outputs.get(graphs.LOGITS))
    reader = None
    if how.calibrated:
        names = set(graphs.input_names(graph))
        reader = methods_mod.reader_class()([r.feeds for r in cap.records.get(graph.file, [])], names)
    methods_mod.QUANTIZERS[kind](src, dst, nodes, reader)
    for leftover in work.iterdir():
        leftover.unlink()


def _manifest(manifest: Manifest, how, new: dict) -> Manifest:
    def graph(g: GraphSpec) -> GraphSpec:
        if g.file not in new:
            return g
        (file, kind), decode = new[g.file]["prefill"], new[g.file].get("decode")
        return dataclasses.replace(g, file=file, method=kind, decode_file=decode[0] if decode else None,
                                   decode_method=decode[1] if decode else None)

    return dataclasses.replace(
        manifest, target=how.target, opset=how.opset or manifest.opset, vision=graph(manifest.vision),
        segments=[graph(s) for s in manifest.segments], files={},
        tolerance=Tolerance(logits_abs=how.logits_abs, hidden_abs=manifest.tolerance.hidden_abs),
    )


def _report(cap, src: Path, tmp: Path, how, quantized: Manifest, threads, quiet: bool) -> report_mod.Report:
    n = len(quantized.graphs_with_paths())
    with Steps(n, quiet) as steps:
        steps.step("accuracy report")
        return report_mod.evaluate(cap, src, tmp, how.name, how.bound, threads, progress=steps.done)


def _write_report(tmp: Path, report, samples: list[Sample], timings: dict, vision: bool, lm_head: bool) -> None:
    data = {"report": report.to_json(), "timings_s": timings, "quantize_vision": vision, "quantize_lm_head": lm_head,
            "calibration": [{"image": Path(s.image).name, "prompt": s.prompt} for s in samples]}
    (tmp / REPORT_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    save_manifest(load_manifest(tmp, verify=False), tmp)
