"""The report as a table (one row per run, like the poster's) and as a plot (matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path

from feather.errors import ConfigError, OutputError

HEADERS = ("run", "n", "FLOPs red.", "Acc@0.5", "Acc@0.25", "parsed", "mIoU", "s/sample",
           "kept per stage", "GT tokens kept", "bottom 1/3")


def table(report: dict) -> str:
    """Plain-text table: accuracies in %, per-stage columns joined with ' / ' (stage order)."""
    rows = [HEADERS]
    for name, run in report["runs"].items():
        s = run["summary"]
        stages = s.get("stages", [])
        rows.append((
            name, str(s["n"]), _pct(s["flops_reduction"]), _pct(s["acc@0.5"]), _pct(s["acc@0.25"]),
            _pct(s["parse_rate"]), f"{s['mean_iou']:.3f}", f"{s['time_per_sample_s']:.2f}",
            " / ".join(f"L{t['layer']}:{t['mean_kept']:.0f}" for t in stages) or "all",
            " / ".join(_pct(t["gt_survival"]) for t in stages) or "-",
            " / ".join(_pct(t["bottom_third_share"]) for t in stages) or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    outside = sum(run["summary"]["outside"] for run in report["runs"].values())
    if outside:
        lines.append(f"({outside} sample-runs skipped: the target lies outside the model's crop)")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib (pip install 'feather-vlm[bench]')") from None
    return plt


def check_plot_path(out_path: str | os.PathLike) -> Path:
    """``out_path`` if a plot can be written there: not a folder, in an existing folder, and
    named with a format matplotlib writes (.png, .pdf, .svg, ...); else one ``OutputError``
    line (matplotlib would add ``.png`` to ``--plot DIR`` and write beside it)."""
    from feather.text import shown

    out = Path(out_path)
    formats = _pyplot().figure().canvas.get_supported_filetypes()
    _pyplot().close("all")
    if not str(out_path) or out.is_dir():
        raise OutputError(f"--plot {shown(out)}: is a folder; expected an image file name such as plot.png")
    if out.suffix.lower().lstrip(".") not in formats:
        raise OutputError(f"--plot {shown(out)}: expected a file name ending in one of "
                          f"{', '.join('.' + f for f in sorted(formats))}")
    if not out.resolve().parent.is_dir():
        raise OutputError(f"--plot {shown(out)}: folder {shown(out.resolve().parent)} does not exist")
    return out


def plot(report: dict, out_path: str | os.PathLike) -> Path:
    """Two panels: Acc@0.5 per run, and each run's first-stage kept tokens per image row
    (top row left) against the uniform share 1/G: Finding 2's bottom-row bias shows as a rise
    on the right."""
    plt = _pyplot()
    out = check_plot_path(out_path)
    names = list(report["runs"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(names, [100 * report["runs"][n]["summary"]["acc@0.5"] for n in names])
    left.invert_yaxis()
    left.set_xlabel("Acc@0.5 (%)")
    left.set_xlim(0, 100)  # a fixed axis: all-zero scores still show as 0 %, not an empty scale
    for name in names:
        stages = report["runs"][name]["summary"].get("stages", [])
        if stages:
            share = stages[0]["row_share"]
            right.plot(range(len(share)), [100 * v for v in share], marker=".", label=f"{name} (L{stages[0]['layer']})")
    grid = next(iter(report["runs"].values()))["dims"]["grid"]
    right.axhline(100 / grid, color="grey", linestyle="--", label="uniform")
    right.set_xlabel("image row (0 = top)")
    right.set_ylabel("kept tokens in the row (%)")
    right.legend(fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(out)
    except (OSError, ValueError) as err:
        raise OutputError(f"{out}: cannot write the plot ({' '.join(str(err).split())})") from None
    finally:
        plt.close(fig)
    return out
