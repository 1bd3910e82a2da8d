"""Where the chain's time goes: ONNX Runtime's profiler on every graph of an export folder.

    python -m feather.bench.profile EXPORT_FOLDER [--new-tokens 8] [--threads 2] [--top 12]
    python -m feather.bench.profile EXPORT_FOLDER --spinning   # intra-op spinning settings compared

Builds the chain as ``Pipeline.load`` does, but over sessions made here: with
``SessionOptions.enable_profiling`` on (one warm-up ``generate``, then one profiled run
whose per-node kernel times are summed by graph, phase and operator type; ``model_run``
minus the kernels is ONNX Runtime's own overhead per call), or with each thread-spinning
setting in turn (``--spinning``). Torch-free, like the runtime.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

SPINNING = {"default": {}, "force_spinning_stop": {"session.force_spinning_stop": "1"},
            "no_spinning": {"session.intra_op.allow_spinning": "0"}}
"""Session config entries compared by ``--spinning`` (keys of ONNX Runtime's
onnxruntime_session_options_config_keys.h)."""


def load_pipeline(folder: Path, threads: int | None, trace_dir: Path | None = None, config: dict | None = None):
    """A ``Pipeline`` over ``folder`` on an ONNX Runtime backend with the profiler and the
    session config entries asked for (``None``: the runtime's own defaults)."""
    from feather.runtime.backends.onnxruntime import OrtBackend
    from feather.runtime.pipeline import Pipeline

    return Pipeline.load(folder, backend=OrtBackend("cpu", threads, trace_dir, config))


def summarize_trace(path: Path, skip: int = 0) -> dict:
    """Sum one trace's kernel times by operator type, for the first ``model_run`` after the
    ``skip`` warm-up runs ("prefill") and for every later run ("decode"):
    ``{phase: {"runs_ms": [...], "kernels_ms": float, "by_op": {op: ms}}}``."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip:]
    out = {p: {"runs_ms": [], "kernels_ms": 0.0, "by_op": defaultdict(float)} for p in ("prefill", "decode")}
    if not runs:
        return out
    bounds = (runs[0]["ts"], runs[0]["ts"] + runs[0]["dur"])
    for i, run in enumerate(runs):
        out["prefill" if i == 0 else "decode"]["runs_ms"].append(run["dur"] / 1000)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < bounds[0]:
            continue
        phase = out["prefill" if e["ts"] <= bounds[1] else "decode"]
        phase["by_op"][e.get("args", {}).get("op_name", "?")] += e["dur"] / 1000
        phase["kernels_ms"] += e["dur"] / 1000
    return out


def profile(folder: str | Path, prompt: str, image, new_tokens: int = 8, threads: int | None = None) -> dict:
    """Profile one ``generate`` after a warm-up -> ``{graph file: summarize_trace(...)}`` and
    the profiled run's own timings under ``"timings"`` (the warm-up's calls are skipped)."""
    with tempfile.TemporaryDirectory(prefix="feather-profile-") as tmp:
        pipe = load_pipeline(Path(folder), threads, Path(tmp))
        warm = len(pipe.generate(image, prompt, max_new_tokens=1 + new_tokens).tokens)
        res = pipe.generate(image, prompt, max_new_tokens=1 + new_tokens)
        report = {"timings": res.timings}
        graphs = [("vision.onnx", pipe.vision, 1), ("embed.onnx", pipe.embed, warm)]
        graphs += [(seg.spec.file, seg.session, warm) for seg in pipe.segments]
        for name, session, skip in graphs:
            report[name] = summarize_trace(Path(session.end_profiling()), skip)
    return report


def compare_spinning(folder, prompt: str, image, new_tokens: int = 32, threads: int | None = None,
                     repeats: int = 3) -> dict:
    """Median timings of ``generate`` under each ``SPINNING`` setting. Every session owns
    an intra-op pool whose threads spin after a run; with one session per segment, the
    next segment's threads compete with the previous segment's still-spinning ones."""
    out = {}
    for name, config in SPINNING.items():
        pipe = load_pipeline(Path(folder), threads, None, config)
        pipe.generate(image, prompt, max_new_tokens=1 + new_tokens)  # warm-up
        runs = [pipe.generate(image, prompt, max_new_tokens=1 + new_tokens).timings for _ in range(repeats)]
        keys = ("vision_s", "llm_prefill_s", "ttft_s", "decode_tokens_per_s")
        out[name] = {k: statistics.median(r[k] for r in runs) for k in keys}
        del pipe
    return out


def _print(report: dict, top: int) -> None:
    print(json.dumps(report["timings"]))
    for graph, phases in report.items():
        if graph == "timings":
            continue
        for phase, s in phases.items():
            total = sum(s["runs_ms"])
            if not s["runs_ms"]:
                continue
            print(f"\n{graph} {phase}: {len(s['runs_ms'])} runs, {total:.1f} ms in model_run, "
                  f"{s['kernels_ms']:.1f} ms in kernels ({100 * s['kernels_ms'] / max(total, 1e-9):.0f} %)")
            for op, ms in sorted(s["by_op"].items(), key=lambda kv: -kv[1])[:top]:
                print(f"  {op:<20} {ms:9.1f} ms  {100 * ms / max(s['kernels_ms'], 1e-9):5.1f} %")


def build_parser() -> argparse.ArgumentParser:
    from feather import cli

    parser = cli.ArgumentParser(prog="python -m feather.bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--new-tokens", type=int, default=8)
    cli.add_threads_arg(parser)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--spinning", action="store_true", help="time generate under each spinning setting instead")
    parser.add_argument("--json", default=None, help="also write the summary here")
    return parser


def main(argv: list[str] | None = None) -> int:
    from feather.bench.checkpoint import PROMPT
    from feather.cli import SAMPLE_IMAGE

    args = build_parser().parse_args(argv)
    if args.spinning:
        report = compare_spinning(args.folder, PROMPT, str(SAMPLE_IMAGE), args.new_tokens, args.threads)
        print(json.dumps(report, indent=1))
    else:
        report = profile(args.folder, PROMPT, str(SAMPLE_IMAGE), args.new_tokens, args.threads)
        _print(report, args.top)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
