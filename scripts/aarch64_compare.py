"""Helper for scripts/aarch64_check.sh: prepare exports (host), run one generation (host or
aarch64 under qemu), compare two runs, check the quantization reports, print the summary.

    aarch64_compare.py prepare WORK                       # host .venv: tiny + fp32 export + capture
                                                          #   + int8 / int4 / int8-int4
    aarch64_compare.py run EXPORT OUT.npz [--tokens N]    # either side; must not need torch
    aarch64_compare.py compare X86.npz ARM.npz --kind fp32|int8|int4 --json OUT.json
    aarch64_compare.py reports WORK                       # aarch64 reports vs x86's, same bounds
    aarch64_compare.py summary WORK                       # the tables, from WORK/results/*.json

``run`` and ``compare`` import nothing outside the runtime's own dependencies (numpy,
onnxruntime, tokenizers, pillow): ``run`` executes under the arm64 userland with only
those wheels and the feather-vlm wheel on PYTHONPATH. The aarch64 quantization reports come
from tests/calibration/cpu_report.py (run by the shell script); ``reports`` only reads JSON.
Standard library only at import.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

PROMPT = "What is in this picture?"
TOKENS = 8
FP32_LOGIT_TOL = 1e-3
QUANT_METHODS = ("int8", "int4", "int8-int4")
# One capture (the float chain's feeds) calibrates every method and is what the reports on both
# sides measure on: the test suite's set (tests/calibration/conftest.py), 2 prompts x 4 tokens.
CALIB_SAMPLES = 2
CALIB_TOKENS = 4
CAPTURE = "capture.pkl"
REPORT_FILE = "quantization.json"  # feather.calibration.api.REPORT_FILE: the x86 report


def fail(msg: str) -> int:
    print(f"aarch64_compare: FAIL: {msg}", file=sys.stderr)
    return 1


# -- prepare (host only: needs torch / transformers / onnx) -------------------------------
def cmd_prepare(args: argparse.Namespace) -> int:
    work = Path(args.work).resolve()
    os.environ["FEATHER_CACHE"] = str(work / "cache")
    times: dict[str, float] = {}
    fp32 = work / "export-fp32"

    t = time.perf_counter()
    from feather import tiny

    ckpt = tiny.build()
    times["tiny_build_s"] = time.perf_counter() - t
    print(f"  tiny checkpoint: {ckpt} ({times['tiny_build_s']:.1f} s)", flush=True)

    t = time.perf_counter()
    cap_path = work / CAPTURE
    if (fp32 / "feather.json").is_file():
        print(f"  fp32 export: reusing {fp32}", flush=True)
    else:
        from feather.config import PruneConfig
        from feather.export import export

        cap_path.unlink(missing_ok=True)  # recorded on another export
        export(model="tiny", config=PruneConfig(), output=fp32, max_seq=args.max_seq, quiet=True)
        print(f"  fp32 export: {fp32}", flush=True)
    times["export_s"] = time.perf_counter() - t

    import pickle

    t = time.perf_counter()
    if cap_path.is_file():
        with open(cap_path, "rb") as f:
            cap = pickle.load(f)
        print(f"  capture: reusing {cap_path}", flush=True)
    else:
        from feather.calibration import default_set, record

        for method in QUANT_METHODS:  # calibrated on another capture (or none saved): redo them
            shutil.rmtree(work / f"export-{method}", ignore_errors=True)
        cap = record(fp32, default_set()[:CALIB_SAMPLES], max_new_tokens=CALIB_TOKENS)
        part = cap_path.with_suffix(".partial")
        with open(part, "wb") as f:
            pickle.dump(cap, f)
        part.replace(cap_path)
        print(f"  capture: {cap_path} ({len(cap.samples)} prompts x {cap.max_new_tokens} tokens, "
              f"{sum(len(v) for v in cap.records.values())} graph runs)", flush=True)
    times["capture_s"] = time.perf_counter() - t

    for method in QUANT_METHODS:
        out = work / f"export-{method}"
        t = time.perf_counter()
        if (out / REPORT_FILE).is_file():
            what = "reusing"
        else:
            from feather.calibration.api import quantize

            shutil.rmtree(out, ignore_errors=True)
            quantize(fp32, method=method, output=out, quiet=True, captured=cap, max_new_tokens=CALIB_TOKENS)
            what = "quantized"
        rep = json.loads((out / REPORT_FILE).read_text())["report"]
        print(f"  {method}: {what} {out} (x86 report ok={rep['ok']}, worst rel error {rep['max_rel_error']:.3g} "
              f"(bound {rep['bound']:g}), worst over the exact reference x{rep['max_kernel_ratio']:.2f})", flush=True)
        times[f"quantize_{method}_s"] = time.perf_counter() - t
    (work / "results").mkdir(exist_ok=True)
    (work / "results" / "prepare_times.json").write_text(json.dumps(times, indent=1))
    return 0


# -- run (both sides) ---------------------------------------------------------------------
def environment() -> dict:
    import numpy as np
    import onnxruntime as ort

    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cpu_features": sorted(k for k, v in feats.items() if v),
    }


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from feather.cli import SAMPLE_IMAGE
    from feather.runtime import Pipeline

    t = time.perf_counter()
    pipe = Pipeline.load(args.export, threads=args.threads)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    r = pipe.generate(str(SAMPLE_IMAGE), args.prompt, max_new_tokens=args.tokens)
    gen_s = time.perf_counter() - t
    leaked = sorted(m for m in ("torch", "transformers", "onnx", "onnxscript") if m in sys.modules)
    origins = {m: sys.modules[m].__file__ for m in ("feather", "numpy", "onnxruntime", "tokenizers", "PIL")}
    if args.site:
        roots = [os.path.realpath(d) + os.sep for d in args.site]
        stray = {m: f for m, f in origins.items() if not os.path.realpath(f).startswith(tuple(roots))}
        if stray:
            return fail(f"modules loaded from outside {args.site}: {stray}")
    meta = {
        "export": str(args.export), "prompt": args.prompt, "image": str(SAMPLE_IMAGE),
        "tokens": [int(x) for x in r.tokens], "text": r.text,
        "stages": [{"layer": int(s["layer"]), "kept": [int(i) for i in s["kept"]]} for s in r.stages],
        "load_s": load_s, "generate_s": gen_s, "imported_export_stack": leaked, "modules": origins,
        "env": environment(),
    }
    logits = np.stack([np.asarray(x, dtype=np.float32) for x in r.logits]) if r.logits else np.zeros((0, 0))
    np.savez(args.out, logits=logits, meta=np.array(json.dumps(meta)))
    print(f"  {meta['env']['machine']}: {Path(args.export).name}: tokens {meta['tokens']} "
          f"stages {[len(s['kept']) for s in meta['stages']]} load {load_s:.1f} s generate {gen_s:.1f} s")
    if leaked:
        return fail(f"the runtime imported {', '.join(leaked)} on {meta['env']['machine']}")
    return 0


# -- compare ------------------------------------------------------------------------------
def _load(path: str):
    import numpy as np

    with np.load(path) as z:
        return json.loads(str(z["meta"])), z["logits"]


def diff(ma, la, mb, lb) -> dict:
    """How far run b is from run a: tokens, kept indices per stage, logits."""
    import numpy as np

    ta, tb = ma["tokens"], mb["tokens"]
    agree = 0
    while agree < min(len(ta), len(tb)) and ta[agree] == tb[agree]:
        agree += 1
    # Step i's logits depend on the prompt and tokens[:i]: comparable up to the first disagreement.
    steps = min(agree + 1, len(la), len(lb))
    stages = []
    for sa, sb in zip(ma["stages"], mb["stages"]):
        a, b = set(sa["kept"]), set(sb["kept"])
        stages.append({"layer": sa["layer"], "n": [len(sa["kept"]), len(sb["kept"])],
                       "identical": sa["kept"] == sb["kept"], "overlap": len(a & b) / max(len(a | b), 1)})
    return {
        "tokens_agree": agree, "tokens_total": len(ta), "tokens_identical": ta == tb, "stages": stages,
        "stage_count_equal": len(ma["stages"]) == len(mb["stages"]), "logit_steps_compared": steps,
        "max_abs_logit_diff": float(np.max(np.abs(la[:steps] - lb[:steps]))) if steps else float("nan"),
        "step0_max_abs_logit_diff": float(np.max(np.abs(la[0] - lb[0]))) if steps else float("nan"),
        "max_abs_logit": float(np.max(np.abs(la[:steps]))) if steps else float("nan"),
        "finite": bool(np.isfinite(la).all() and np.isfinite(lb).all()),
    }


def _line(kind: str, d: dict) -> str:
    kept = " ".join(f"L{s['layer']}:" + ("=" if s["identical"] else f"{s['overlap']:.3f}") for s in d["stages"])
    return (f"{kind}: tokens {d['tokens_agree']}/{d['tokens_total']} agree, kept [{kept}], max |dlogit| "
            f"{d['max_abs_logit_diff']:.3g} over {d['logit_steps_compared']} step(s) (step 0: "
            f"{d['step0_max_abs_logit_diff']:.3g}; max |logit| {d['max_abs_logit']:.3g}), finite={d['finite']}")


def cmd_compare(args: argparse.Namespace) -> int:
    """fp32: x86 and aarch64 must agree (tokens, kept indices, logits within FP32_LOGIT_TOL).

    int8 / int4: the two sides run different integer kernels, and dynamic activation
    quantization turns float noise of 1e-6 into a different rounding here and there, so exact
    agreement is not expected. The bound is the quantization's own error on x86 (``--ref``, the
    x86 fp32 run): at every stage the kept-index overlap (Jaccard) between x86 and aarch64 must
    be at least the overlap between x86 quantized and x86 fp32, and the first step's max logit
    difference at most the quantized-vs-fp32 one; logits finite, same stages and counts."""
    (ma, la), (mb, lb) = _load(args.x86), _load(args.arm)
    d = diff(ma, la, mb, lb)
    res = {"kind": args.kind, "tokens_x86": ma["tokens"], "tokens_arm": mb["tokens"], **d,
           "x86_generate_s": ma["generate_s"], "arm_generate_s": mb["generate_s"], "x86_load_s": ma["load_s"],
           "arm_load_s": mb["load_s"], "arm_env": mb["env"], "x86_env": ma["env"]}
    print("  x86 vs aarch64 " + _line(args.kind, d))
    problems = []
    if not d["finite"]:
        problems.append("non-finite logits")
    if not d["stage_count_equal"] or any(s["n"][0] != s["n"][1] for s in d["stages"]):
        problems.append(f"stage sizes differ: x86 {[len(s['kept']) for s in ma['stages']]} vs aarch64 "
                        f"{[len(s['kept']) for s in mb['stages']]}")
    if args.kind == "fp32":
        if not d["tokens_identical"]:
            problems.append(f"tokens differ: x86 {ma['tokens']} vs aarch64 {mb['tokens']}")
        bad = [s["layer"] for s in d["stages"] if not s["identical"]]
        if bad:
            problems.append(f"kept indices differ at stage layer(s) {bad}")
        if not d["max_abs_logit_diff"] <= FP32_LOGIT_TOL:
            problems.append(f"max |logit diff| {d['max_abs_logit_diff']:.3g} > {FP32_LOGIT_TOL:g}")
    else:
        if args.ref is None:
            return fail("--ref (the x86 fp32 run) is needed for a quantized export")
        own = diff(*_load(args.ref), ma, la)
        res["own_error"] = own
        print("  x86 fp32 vs x86 " + _line(args.kind, own) + "  <- the bound")
        for s, o in zip(d["stages"], own["stages"]):
            if s["overlap"] < o["overlap"]:
                problems.append(f"stage layer {s['layer']}: kept overlap x86/aarch64 {s['overlap']:.3f} < "
                                f"quantization's own {o['overlap']:.3f}")
        if not d["step0_max_abs_logit_diff"] <= own["step0_max_abs_logit_diff"]:
            problems.append(f"first-step max |logit diff| x86/aarch64 {d['step0_max_abs_logit_diff']:.3g} > "
                            f"quantization's own {own['step0_max_abs_logit_diff']:.3g}")
    res["problems"] = problems
    res["ok"] = not problems
    Path(args.json).write_text(json.dumps(res, indent=1))
    if problems:
        return fail(f"{args.kind}: " + "; ".join(problems))
    return 0


# -- reports (host: reads the JSON the two sides wrote) --------------------------------------
def _failure(rep: dict) -> str:
    """Why a report (Report.to_json()) is not ok, in one line: feather.calibration.report's
    Report.failure(), from the JSON."""
    for g in rep["graphs"]:
        rel = g["rel_error"]
        if not (math.isfinite(rel) and rel <= rep["bound"]):
            return f"{g['file']} ({g['phase']}): relative error {rel:.3g} > bound {rep['bound']:g}"
        if not g["kernel_excess"] <= 0:
            return (f"{g['file']} ({g['phase']}): a run's error is {g['kernel_ratio']:.3g}x what exact integer "
                    f"arithmetic gives ({rep['cpu'].get('int8_kernel', '?')} kernels)")
    return "not ok" if not rep["ok"] else ""


def _kernel_bounds(rep: dict) -> str:
    return f"x{rep['kernel_slack']:g} + {rep['kernel_floor']:g}"


def cmd_reports(args: argparse.Namespace) -> int:
    """Each method's aarch64 report (results/report-arm-METHOD.json, from cpu_report.py under
    qemu) must be ok with the bounds it carries, which are x86's (feather.calibration.methods:
    the same on every CPU), and must have measured the same graphs and phases as the x86 report
    in export-METHOD/quantization.json. Writes results/reports.json; prints the table."""
    work = Path(args.work)
    rows, fails = [], []
    for method in QUANT_METHODS:
        x86 = json.loads((work / f"export-{method}" / REPORT_FILE).read_text())["report"]
        path = work / "results" / f"report-arm-{method}.json"
        arm = json.loads(path.read_text()) if path.is_file() else None
        problems = []
        if arm is None:
            err = path.with_suffix(".err")
            last = [x for x in err.read_text(errors="replace").splitlines() if x.strip()] if err.is_file() else []
            problems.append("no aarch64 report" + (f" ({last[-1].strip()})" if last else ""))
        else:
            if arm["cpu"].get("arch") != "aarch64":
                problems.append(f"the report ran on {arm['cpu'].get('arch')}, not aarch64")
            same = ("method", "bound", "kernel_slack", "kernel_floor")
            if [arm[k] for k in same] != [x86[k] for k in same]:
                problems.append(f"bounds differ from x86's: {[arm[k] for k in same]} vs {[x86[k] for k in same]}")
            if sorted((g["file"], g["phase"]) for g in arm["graphs"]) != sorted((g["file"], g["phase"])
                                                                                for g in x86["graphs"]):
                problems.append("measured other graphs than the x86 report")
            if not arm["ok"]:
                problems.append("aarch64 report not ok: " + _failure(arm))
        if not x86["ok"]:
            problems.append("x86 report not ok: " + _failure(x86))
        rows.append({"method": method, "x86": x86, "arm": arm, "problems": problems, "ok": not problems})
        if problems:
            fails.append(f"{method}: " + "; ".join(problems))
    (work / "results" / "reports.json").write_text(json.dumps(rows, indent=1))
    _print_reports(rows)
    if fails:
        return fail("quantization report: " + " | ".join(fails))
    return 0


def _print_reports(rows: list[dict]) -> None:
    head = (f"{'method':<9} {'graphs':>6}  {'max rel err x86 / arm':>21} {'(bound)':>7}  "
            f"{'over exact x86 / arm':>24} {'(allowed)':<22}  result")
    print(head)
    print("-" * len(head))
    for r in rows:
        x, a = r["x86"], r["arm"] or {}
        rel = f"{x['max_rel_error']:.4f} / " + (f"{a['max_rel_error']:.4f}" if a else "-")
        kern = f"x{x['max_kernel_ratio']:.3f} / " + (f"x{a['max_kernel_ratio']:.3f}" if a else "-")
        print(f"{r['method']:<9} {len(x['graphs']):>6}  {rel:>21} {'(%g)' % x['bound']:>7}  {kern:>24} "
              f"{'(' + _kernel_bounds(x) + ')':<22}  {'ok' if r['ok'] else 'FAIL: ' + '; '.join(r['problems'])}")
    for side, name in (("x86", "x86_64"), ("arm", "aarch64")):
        lines: dict[str, list[str]] = {}
        for r in rows:
            line = ((r[side] or {}).get("cpu") or {}).get("line")
            if line:
                lines.setdefault(line, []).append(r["method"])
        for line, methods in lines.items():
            print(f"  cpu {name} ({', '.join(methods)}): {line}")
    print("per graph, teacher-forced on the same capture: rel err vs the fp32 graph, and over what the exact integer "
          "reference gives (feather.calibration.emulate); both sides checked against the same bounds")


# -- summary ------------------------------------------------------------------------------
def cmd_summary(args: argparse.Namespace) -> int:
    res = Path(args.work) / "results"
    rows = [json.loads(p.read_text()) for p in (res / f"compare-{k}.json" for k in ("fp32", *QUANT_METHODS))
            if p.is_file()]
    if rows:
        env, xenv = rows[0]["arm_env"], rows[0]["x86_env"]
        print(f"aarch64: python {env['python']}, numpy {env['numpy']}, onnxruntime {env['onnxruntime']}")
        print(f"aarch64 numpy CPU features: {' '.join(env['cpu_features'])}")
        print(f"x86_64:  python {xenv['python']}, numpy {xenv['numpy']}, onnxruntime {xenv['onnxruntime']}")
        print()

    def kept(stages):
        return " ".join("=" if s["identical"] else f"{s['overlap']:.3f}" for s in stages)

    head = (f"{'export':<6} {'tokens':>6}  {'kept x86/arm':<13} {'(bound)':<13} {'step0 |dlogit|':>14} "
            f"{'(bound)':>8} {'all |dlogit|':>12} {'x86 s':>6} {'arm s':>6}  result")
    print(head)
    print("-" * len(head))
    for r in rows:
        own = r.get("own_error")
        print(f"{r['kind']:<6} {r['tokens_agree']:>2}/{r['tokens_total']:<3}  {kept(r['stages']):<13} "
              f"{'(' + kept(own['stages']) + ')' if own else '(identical)':<13} "
              f"{r['step0_max_abs_logit_diff']:>14.3g} "
              f"{'(%.3g)' % own['step0_max_abs_logit_diff'] if own else '(%g)' % FP32_LOGIT_TOL:>8} "
              f"{r['max_abs_logit_diff']:>12.3g} {r['x86_generate_s']:>6.2f} {r['arm_generate_s']:>6.1f}  "
              f"{'ok' if r['ok'] else 'FAIL: ' + '; '.join(r['problems'])}")
    print("kept: per pruning stage, '=' identical, else the Jaccard overlap of the kept index sets; bound for "
          "int8 / int4: the same measures between x86 quantized and x86 fp32. all |dlogit|: over the steps "
          "whose inputs agree. x86 s / arm s: generate() wall time")
    rp = res / "reports.json"
    if rp.is_file():
        print()
        print("quantization reports (x86_64 quantize() vs cpu_report.py on aarch64):")
        _print_reports(json.loads(rp.read_text()))
    tp = res / "times.tsv"
    if tp.is_file():
        print()
        print("wall time per part:")
        for line in tp.read_text().splitlines():
            name, secs = line.split("\t")
            print(f"  {name:<44} {float(secs):7.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aarch64_compare.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("work")
    a.add_argument("--max-seq", type=int, default=1024)
    a = sub.add_parser("run")
    a.add_argument("export")
    a.add_argument("out")
    a.add_argument("--tokens", type=int, default=TOKENS)
    a.add_argument("--prompt", default=PROMPT)
    a.add_argument("--threads", type=int, default=None)
    a.add_argument("--site", action="append", default=[],
                   help="require feather, numpy, onnxruntime, tokenizers and PIL to come from these folders")
    a = sub.add_parser("compare")
    a.add_argument("x86")
    a.add_argument("arm")
    a.add_argument("--kind", required=True, choices=("fp32", *QUANT_METHODS))
    a.add_argument("--ref", default=None, help="the x86 fp32 run: the quantization's own error, int8 / int4's bound")
    a.add_argument("--json", required=True)
    a = sub.add_parser("reports")
    a.add_argument("work")
    a = sub.add_parser("summary")
    a.add_argument("work")
    args = p.parse_args(argv)
    return {"prepare": cmd_prepare, "run": cmd_run, "compare": cmd_compare, "reports": cmd_reports,
            "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
