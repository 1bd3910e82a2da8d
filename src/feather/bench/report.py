"""feather-bench's outputs: a rich table on the terminal, the JSON file, the PNG plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIB = 1024 * 1024


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _speedup(row: dict) -> str:
    measured = row.get("llm_prefill_speedup")
    predicted = row["flops_llm_speedup"]
    return f"{_f(measured, 2)} / {predicted:.2f}" if measured is not None else f"- / {predicted:.2f}"


def _kv(row: dict) -> str:
    actual, predicted = row["kv_cache_bytes"] / MIB, row["kv_cache_bytes_predicted"] / MIB
    mark = "" if row["kind"] == "openvino" or row["kv_cache_bytes"] == row["kv_cache_bytes_predicted"] else " !"
    return f"{actual:.1f} ({predicted:.1f}){mark}"


def table(report: dict):
    """The rows as a ``rich.table.Table`` (medians; speed-up measured / FLOPs-predicted)."""
    from rich.table import Table

    s, g = report["settings"], report["geometry"]
    cpu = report.get("machine", {}).get("cpu", {}).get("line")
    title = (f"feather-bench, geometry {g['name']}: median of {s['repeats']} after 1 warm-up, "
             f"{s['new_tokens']} new tokens, {s['threads']} threads" + (f"\n{cpu}" if cpu else ""))
    t = Table(title=title)
    for name in ("row", "vision s", "LLM prefill s", "prefill speed-up\nmeasured / FLOPs", "TTFT s",
                 "decode tok/s", "peak RSS MiB", "KV MiB\n(predicted)", "kept", "others'\nCPU cores"):
        t.add_column(name, justify="left" if name == "row" else "right")
    for r in report["rows"]:
        t.add_row(f"{r['id']} {r['name']}", _f(r["vision_s"]), _f(r["llm_prefill_s"]), _speedup(r),
                  _f(r["ttft_s"]), _f(r["decode_tokens_per_s"], 1), f"{r['peak_rss_bytes'] / MIB:.0f}", _kv(r),
                  ",".join(map(str, r["kept"])) or "all", _f(r.get("foreign_cpu_cores"), 2))
    return t


def steps_table(report: dict):
    """Export and quantize steps, each run in a child: seconds, peak RSS and folder size."""
    from rich.table import Table

    t = Table(title="export and quantize steps (one child process each)")
    for name in ("step", "folder", "seconds", "peak RSS MiB", "folder MiB"):
        t.add_column(name, justify="left" if name in ("step", "folder") else "right")
    for folder, st in report["steps"].items():
        t.add_row(st["step"], folder, _f(st["seconds"], 1), f"{st['peak_rss_bytes'] / MIB:.0f}",
                  f"{st['folder_bytes'] / MIB:.0f}")
    return t


def ratios_table(report: dict):
    from rich.table import Table

    t = Table(title="targets")
    for name in ("target", "measured", "wanted", "met"):
        t.add_column(name)
    for name, v in report["targets"].items():
        value = v["value"] if isinstance(v["value"], bool) else f"{v['value']:.3f}"
        t.add_row(name, str(value), v["target"], "yes" if v["met"] else "NO")
    return t


def print_report(report: dict, console=None) -> None:
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(table(report))
    console.print(ratios_table(report))
    if report.get("steps"):
        console.print(steps_table(report))
    r = report["ratios"]
    if {"llm_prefill_speedup", "ttft_vs_torch_eager"} <= set(r):
        console.print(f"FEATHER chain: LLM prefill {r['llm_prefill_speedup']:.2f}x faster than the unpruned chain "
                      f"(FLOPs predict {r['flops_predicted_speedup']:.2f}x); TTFT {r['ttft_vs_torch_eager']:.2f} of "
                      f"torch eager; decode {r['decode_speedup']:.2f}x the unpruned chain.")
    if "decode_long_vs_short" in r:
        console.print(f"long prompt: decode {r['decode_long_vs_short']:.2f}x its speed at the default prompt "
                      f"(attention's extra work predicts {r['decode_long_vs_short_predicted']:.2f}x).")
    for name, ok in report["checks"].items():
        console.print(f"check {name}: {'yes' if ok else 'NO'}")
    if report["peer"]["status"] != "ok":
        console.print(f"peer (OpenVINO): {report['peer']['status']}: {report['peer']['reason']}")


def write_json(report: dict, path: str | Path) -> Path:
    """Write the report; every number finite (NaN / inf would not be valid JSON)."""
    path = Path(path)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def plot(report: dict, path: str | Path) -> Path:
    """Grouped bars per row: vision, LLM prefill and decode-N seconds side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, n = report["rows"], report["settings"]["new_tokens"]
    parts = (("vision_s", "vision"), ("llm_prefill_s", "LLM prefill"), ("decode_s", f"decode {n} tokens"))
    width = 0.8 / len(parts)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(rows), 4.5))
    for i, (key, label) in enumerate(parts):
        xs = [j + (i - (len(parts) - 1) / 2) * width for j in range(len(rows))]
        bars = ax.bar(xs, [r[key] for r in rows], width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(rows)), [f"{r['id']}\n{_wrap(r['name'])}" for r in rows], fontsize=8)
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"feather-bench ({report['geometry']['name']} geometry, {report['machine']['cpu_model']}, "
                 f"{report['settings']['threads']} threads)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _wrap(name: str) -> str:
    head, _, tail = name.partition(", ")
    return f"{head}\n{tail}" if tail else name

