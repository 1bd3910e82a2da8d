"""feather-tune's logic: per operating point, the time to first token on this device and the
accuracy on the user's data; the Pareto front of the two; the most accurate point within a
latency budget. Torch-free. See docs/operating-points.md, "Picking a point: feather-tune".

The measuring and the scoring are callables handed to ``tune``, so it runs on any model (the
tests use a fake with a known TTFT and accuracy per point); ``pareto`` and ``choose`` are pure:

    from feather.eval import tune
    rows = tune.tune(pts, ttft=lambda p: tune.measure_ttft(pipe, image, prompt, p, repeats=5),
                     score=lambda ps: tune.score_points(pipe, ps, samples),
                     keep=lambda p: points.keep_counts(pipe.manifest, p))
    best = tune.choose(rows, budget_ms=150)       # None: no point fits
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from feather import points
from feather.errors import InputError, OutputError
from feather.points import Point

FORMAT = 1
DEFAULT_RATIOS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The ratios tried without ``--points`` (those inside the export's range, plus its own)."""


@dataclass
class Row:
    """One operating point: its TTFT (median of the timed runs, ms), Acc@0.5 (0..1), the static
    keep counts per stage and the harness's summary (``acc@0.25``, ``mean_iou``, ``parse_rate``, ``n``)."""

    point: Point
    ttft_ms: float
    acc: float
    keep: list[int] = field(default_factory=list)
    ttft_runs_ms: list[float] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        s = self.summary
        return {"point": self.point.to_json(), "label": self.point.label(), "keep": self.keep,
                "ttft_ms": self.ttft_ms, "ttft_runs_ms": self.ttft_runs_ms, "acc@0.5": self.acc,
                **{k: s[k] for k in ("acc@0.25", "mean_iou", "parse_rate", "n") if k in s}}


# ---------------------------------------------------------------- pure
def pareto(rows: Sequence[Row]) -> list[bool]:
    """Per row, whether it is Pareto-optimal: no other row is at least as fast and at least as
    accurate, and strictly better in one (rows equal in both are all optimal)."""
    return [not any(o.ttft_ms <= r.ttft_ms and o.acc >= r.acc and (o.ttft_ms < r.ttft_ms or o.acc > r.acc)
                    for o in rows) for r in rows]


def choose(rows: Sequence[Row], budget_ms: float) -> Row | None:
    """The most accurate row whose TTFT is within ``budget_ms``; ties go to the lower TTFT,
    then to the earlier row. None when no row fits."""
    fits = [r for r in rows if r.ttft_ms <= budget_ms]
    return min(fits, key=lambda r: (-r.acc, r.ttft_ms)) if fits else None


def fastest(rows: Sequence[Row]) -> Row:
    """The row with the lowest TTFT (the earlier one on a tie)."""
    return min(rows, key=lambda r: r.ttft_ms)


def tune(pts: Sequence[Point], ttft: Callable[[Point], Sequence[float]],
         score: Callable[[list[Point]], list[dict]], keep: Callable[[Point], list[int]] | None = None,
         progress: Callable[[str], None] | None = None) -> list[Row]:
    """One ``Row`` per point: ``ttft(point)`` gives the timed runs in ms (the row keeps their
    median), ``score(points)`` one harness summary per point (``acc@0.5`` at least), ``keep``
    the keep counts; ``progress`` sees a line per point measured."""
    runs = []
    for p in pts:
        ms = [float(v) for v in ttft(p)]
        if not ms:
            raise ValueError(f"ttft({p.label()}) gave no runs")
        runs.append(ms)
        if progress is not None:
            progress(f"TTFT {p.label()}: {statistics.median(ms):.1f} ms (median of {len(ms)})")
    summaries = score(list(pts))
    if len(summaries) != len(pts):
        raise ValueError(f"score gave {len(summaries)} summaries for {len(pts)} points")
    return [Row(p, statistics.median(ms), float(s["acc@0.5"]), list(keep(p)) if keep else [], ms, dict(s))
            for p, ms, s in zip(pts, runs, summaries)]


def default_ratios(manifest) -> list[float]:
    """``DEFAULT_RATIOS`` inside the ratio range the export accepts, and the export's own."""
    (lo, hi), _, _ = points.accepted(manifest)
    own = float(manifest.pruning.ratio)
    return sorted({r for r in DEFAULT_RATIOS if lo <= r <= hi} | {own})


def random_weights(source_model: str) -> bool:
    """Whether an export's source is one of the toolkit's seeded random-weight checkpoints:
    ``tiny``, or a folder with the name feather builds one in (``feather.tiny`` and
    ``feather.bench.checkpoint``'s cache folders: tiny-llava, bench-llava, interleave-0.5b)."""
    from feather import tiny
    from feather.bench.checkpoint import GEOMETRIES, default_cache_dir

    names = {tiny.default_cache_dir().name} | {default_cache_dir(g).name for g in GEOMETRIES if g != "tiny"}
    return source_model == "tiny" or Path(str(source_model).rstrip("/\\")).name in names


# ---------------------------------------------------------------- measuring and scoring an export
def measure_ttft(pipe, image, prompt: str, point: Point, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Time to first token (ms) of ``repeats`` one-token generations at ``point`` after
    ``warmup`` untimed ones: ``Result.timings["ttft_s"]``, preprocessing of ``image`` included."""
    for _ in range(warmup):
        pipe.generate(image, prompt, max_new_tokens=1, prune=point)
    return [1000.0 * pipe.generate(image, prompt, max_new_tokens=1, prune=point).timings["ttft_s"]
            for _ in range(repeats)]


def score_points(pipe, pts: Sequence[Point], samples, max_new_tokens: int = 128, progress: bool = True) -> list[dict]:
    """The harness's summary (``feather.eval.summarize``) of each point on ``samples``, one
    loaded chain shared."""
    from feather.eval.harness import evaluate
    from feather.eval.models import ChainModel, label

    models = [ChainModel(point=p, pipe=pipe) for p in pts]
    report = evaluate(models, samples, max_new_tokens=max_new_tokens, progress=progress)
    return [report["runs"][label(m.config)]["summary"] for m in models]


# ---------------------------------------------------------------- what it prints
def usage(point: Point, folder: str) -> list[str]:
    """How to run ``point``: feather-run's flags, the Python call and feather-serve's request field."""
    from feather.text import shown

    field_ = json.dumps(point.to_json())
    return [f"  feather-run {shown(folder)} {point.flags()}",
            f"  Python:        pipe.generate(image, prompt, prune={field_})",
            f'  feather-serve: "feather": {field_}']


def table(rows: Sequence[Row], budget_ms: float, chosen: Row | None = None) -> str:
    """Plain-text table, one row per point: keep counts per stage, TTFT, accuracies in %,
    Pareto-optimal rows marked ``*``, within the budget or not, the chosen row marked."""
    front = pareto(rows)
    headers = ("point", "kept", "TTFT ms", "Acc@0.5", "Acc@0.25", "mIoU", "parsed", "Pareto",
               f"<= {budget_ms:g} ms", "")
    body = [headers]
    for r, opt in zip(rows, front):
        s = r.summary
        body.append((r.point.label(), "/".join(map(str, r.keep)) or "-", f"{r.ttft_ms:.1f}", _pct(r.acc),
                     _pct(s.get("acc@0.25")), "-" if s.get("mean_iou") is None else f"{s['mean_iou']:.3f}",
                     _pct(s.get("parse_rate")), "*" if opt else "", "yes" if r.ttft_ms <= budget_ms else "no",
                     "<- chosen" if r is chosen else ""))
    widths = [max(len(b[i]) for b in body) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    lines.insert(1, "  ".join(("-" if h else " ") * w for h, w in zip(headers, widths)).rstrip())
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def report(rows: Sequence[Row], budget_ms: float, chosen: Row | None, **context) -> dict:
    """The ``--json`` document: ``rows`` (one per point, with ``pareto`` and ``within_budget``),
    ``chosen`` (a point, or None), ``fastest`` and whatever ``context`` adds."""
    front = pareto(rows)
    return {"format": FORMAT, **context, "budget_ms": budget_ms,
            "rows": [{**r.to_json(), "pareto": opt, "within_budget": r.ttft_ms <= budget_ms}
                     for r, opt in zip(rows, front)],
            "chosen": None if chosen is None else chosen.point.to_json(),
            "fastest": fastest(rows).point.to_json() if rows else None}


def write_json(path: str | os.PathLike, doc: dict) -> None:
    from feather.folder import write_atomic

    try:
        write_atomic(Path(path), json.dumps(doc, indent=1))
    except OSError as err:
        raise OutputError(f"{path}: cannot write the report ({' '.join(str(err).split())})") from None


def plot(rows: Sequence[Row], budget_ms: float, chosen: Row | None, out_path: str | os.PathLike) -> Path:
    """TTFT (x) against Acc@0.5 (y), one dot per point, the Pareto front joined, the budget a
    dashed line and the chosen point ringed (needs matplotlib)."""
    from feather.eval.report import _pyplot, check_plot_path

    plt = _pyplot()
    out = check_plot_path(out_path)
    if not rows:
        raise InputError("no rows to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r.ttft_ms for r in rows], [100 * r.acc for r in rows], color="tab:blue", zorder=3)
    for r in rows:
        ax.annotate(r.point.label(), (r.ttft_ms, 100 * r.acc), fontsize="x-small", xytext=(4, 4),
                    textcoords="offset points")
    front = sorted((r for r, opt in zip(rows, pareto(rows)) if opt), key=lambda r: r.ttft_ms)
    ax.plot([r.ttft_ms for r in front], [100 * r.acc for r in front], color="tab:orange", label="Pareto front")
    ax.axvline(budget_ms, color="grey", linestyle="--", label=f"budget {budget_ms:g} ms")
    if chosen is not None:
        ax.scatter([chosen.ttft_ms], [100 * chosen.acc], s=200, facecolors="none", edgecolors="tab:red",
                   label=f"chosen: {chosen.point.label()}", zorder=4)
    ax.set_xlabel("time to first token (ms, median)")
    ax.set_ylabel("Acc@0.5 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(out)
    except (OSError, ValueError) as err:
        raise OutputError(f"{out}: cannot write the plot ({' '.join(str(err).split())})") from None
    finally:
        plt.close(fig)
    return out
