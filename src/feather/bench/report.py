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



# -- feather-bench --points ----------------------------------------------------------------
def points_table(report: dict):
    """One row per operating point of ``feather.bench.sweep.sweep``, the unpruned chain first
    (medians; speed-ups against the unpruned chain, measured / FLOPs-predicted)."""
    from rich.table import Table

    s, g, e = report["settings"], report["geometry"], report["export"]
    cpu = report.get("machine", {}).get("cpu", {}).get("line")
    title = (f"feather-bench --points, geometry {g['name']}, one FEATHER export (K = {' '.join(map(str, e['K']))}): "
             f"median of {s['repeats']} after 1 warm-up, {s['new_tokens']} new tokens, {s['threads']} threads"
             + (f"\n{cpu}" if cpu else ""))
    t = Table(title=title)
    for name in ("point", "kept", "LLM prefill s", "prefill speed-up\nmeasured / FLOPs", "TTFT s",
                 "TTFT\nspeed-up", "decode tok/s", "KV MiB"):
        t.add_column(name, justify="left" if name == "point" else "right")
    b = report["baseline"]
    t.add_row("unpruned chain", "all", _f(b["llm_prefill_s"]), "1.00 / 1.00", _f(b["ttft_s"]), "1.00",
              _f(b["decode_tokens_per_s"], 1), f"{b['kv_cache_bytes'] / MIB:.1f}")
    for r in report["rows"]:
        t.add_row(r["label"], ",".join(map(str, r["kept"])), _f(r["llm_prefill_s"]), _speedup(r), _f(r["ttft_s"]),
                  _f(r["ttft_speedup"], 2), _f(r["decode_tokens_per_s"], 1), f"{r['kv_cache_bytes'] / MIB:.1f}")
    return t


def print_points(report: dict, console=None) -> None:
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(points_table(report))
    child, b = report["sweep_child"], report["baseline"]
    console.print(f"export range: {report['export']['range']}; the points ran interleaved in one process "
                  f"(peak RSS {child['peak_rss_bytes'] / MIB:.0f} MiB), the unpruned chain in another "
                  f"({b['peak_rss_bytes'] / MIB:.0f} MiB); others' CPU cores while they ran: "
                  f"{_f(child.get('foreign_cpu_cores'), 2)} / {_f(b.get('foreign_cpu_cores'), 2)}.")
    off = [r["label"] for r in report["rows"] if r["mode"] == "static" and r["kept"] != r["kept_planned"]]
    if off:
        console.print(f"check kept counts = feather.points.keep_counts: NO at {', '.join(off)}")


def plot_points(report: dict, path: str | Path) -> Path:
    """Two panels against the ratio R (one line per stride): TTFT and LLM prefill seconds (the
    unpruned chain dashed), and the LLM-prefill speed-up measured and FLOPs-predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, b = report["rows"], report["baseline"]
    strides = sorted({r["stride"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for s in strides:
        mine = sorted((r for r in rows if r["stride"] == s), key=lambda r: r["ratio"])
        xs, tag = [r["ratio"] for r in mine], f" (s={s})" if len(strides) > 1 else ""
        color = left.plot(xs, [r["ttft_s"] for r in mine], "o-", label=f"TTFT{tag}")[0].get_color()
        left.plot(xs, [r["llm_prefill_s"] for r in mine], "s--", color=color, label=f"LLM prefill{tag}")
        line = right.plot(xs, [r["llm_prefill_speedup"] for r in mine], "o-", label=f"measured{tag}")[0]
        right.plot(xs, [r["flops_llm_speedup"] for r in mine], "--", color=line.get_color(),
                   label=f"FLOPs-predicted{tag}")
    left.axhline(b["ttft_s"], color="grey", ls=":", lw=1, label="TTFT, unpruned chain")
    left.axhline(b["llm_prefill_s"], color="grey", ls="--", lw=1, label="LLM prefill, unpruned chain")
    left.set_ylabel("seconds (median)")
    left.set_ylim(bottom=0)
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_ylabel("LLM-prefill speed-up over the unpruned chain")
    for ax in (left, right):
        ax.set_xlabel("ratio R (the fraction of image tokens pruned)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    e, g = report["export"], report["geometry"]
    fig.suptitle(f"feather-bench --points ({g['name']} geometry, K = {' '.join(map(str, e['K']))}, "
                 f"{report['machine']['cpu_model']}, {report['settings']['threads']} threads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
