"""feather-bench --points: one FEATHER export at several operating points, on the tiny checkpoint
(in-process ``main``, as tests/bench/test_bench.py runs the full bench), and the refusals that
need no run."""

from __future__ import annotations

import json
import math

import pytest

from feather import points
from feather.bench import checkpoint

RATIOS, STRIDES = (0.3, 0.7, 0.9), (3, 6)
TIMES = ("vision_s", "llm_prefill_s", "ttft_s", "decode_s", "decode_tokens_per_s")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def points_run(tiny_path, tmp_path_factory):
    """One sweep on the tiny geometry: 3 ratios x 2 strides, 1 repeat, 8 new tokens, 1 thread
    (see test_bench.bench_run for why one)."""
    from feather.bench.cli import main

    out = tmp_path_factory.mktemp("points")
    js, png = out / "points.json", out / "points.png"
    code = main(["--geometry", "tiny", "--points", ",".join(map(str, RATIOS)), "--strides",
                 ",".join(map(str, STRIDES)), "--quick", "--repeats", "1", "--threads", "1", "--quiet",
                 "--json", str(js), "--plot", str(png)])
    assert code == 0
    return json.loads(js.read_text()), png


def test_one_row_per_point_in_order(points_run):
    report, _ = points_run
    assert report["kind"] == "points"
    got = [(r["ratio"], r["stride"], r["mode"]) for r in report["rows"]]
    assert got == [(r, s, "static") for s in STRIDES for r in RATIOS]  # feather.points.grid_points' order
    assert [r["label"] for r in report["rows"]][:2] == ["R=0.3 s=3 static", "R=0.7 s=3 static"]
    assert report["export"] == {"K": [8, 16], "point": {"ratio": 0.7, "stride": 3, "mode": "static"},
                                "range": "ratio 0.05..0.95, stride 1..24, modes static, paper"}
    assert report["settings"]["repeats"] == 1 and report["settings"]["threads"] == 1
    assert set(report["steps"]) == {"export-criterionnone", "export-K[8,16]-criterionfeather"}  # one export each


def test_kept_counts_are_the_points_plan(points_run, export_feather):
    """Kept counts per stage at each point = feather.points.keep_counts on the same export
    (static mode), and a higher ratio keeps strictly fewer tokens at every stride."""
    from feather.manifest import load_manifest

    report, _ = points_run
    manifest = load_manifest(export_feather)
    for row in report["rows"]:
        want = points.keep_counts(manifest, points.Point(row["ratio"], row["stride"], "static"))
        assert row["kept"] == row["kept_planned"] == want, row["label"]
    rows = {(r["ratio"], r["stride"]): r for r in report["rows"]}
    assert rows[(0.7, 3)]["kept"] == [236, 21]  # the export's own point: the full bench's row d
    assert rows[(0.3, 3)]["kept"] == [467, 228] and rows[(0.9, 6)]["kept"] == [73, 0]
    for s in STRIDES:
        totals = [sum(rows[(r, s)]["kept"]) for r in RATIOS]
        assert totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals), (s, totals)
        firsts = [rows[(r, s)]["kept"][0] for r in RATIOS]
        assert all(a > b for a, b in zip(firsts, firsts[1:])), (s, firsts)


def test_flops_prediction_and_measured_speedup(points_run):
    """The FLOPs column is feather.flops.prefill_speedup at the point's kept counts (K = 8 16, the
    prompt's measured text tokens); the measured one is the unpruned chain's LLM prefill over the point's."""
    from feather.flops import kv_cache_bytes, prefill_speedup

    report, _ = points_run
    fgeom = checkpoint.flops_geometry(checkpoint.resolve("tiny"))
    base = report["baseline"]
    assert base["id"] == "c" and base["kept"] == [] and base["flops_llm_speedup"] == 1.0
    n_text, n_image = report["geometry"]["n_text"], report["geometry"]["n_image"]
    assert n_image == 576 and 36 <= n_text <= 44 and base["n_text"] == n_text
    predicted = []
    for row in report["rows"]:
        stages = list(zip([8, 16], row["kept"]))
        assert row["flops_llm_speedup"] == pytest.approx(prefill_speedup(fgeom, n_text, n_image, stages))
        assert row["llm_prefill_speedup"] == pytest.approx(base["llm_prefill_s"] / row["llm_prefill_s"])
        assert row["ttft_speedup"] == pytest.approx(base["ttft_s"] / row["ttft_s"])
        assert row["kv_cache_bytes"] == row["kv_cache_bytes_predicted"] == kv_cache_bytes(
            fgeom, n_text, n_image, stages, new_tokens=8)
        predicted.append(row["flops_llm_speedup"])
    assert all(p > 1.0 for p in predicted)
    for i in range(len(STRIDES)):  # more pruned, more predicted, at every stride
        run = predicted[i * len(RATIOS):(i + 1) * len(RATIOS)]
        assert run == sorted(run) and len(set(run)) == len(run)


def test_timings_positive_and_finite(points_run):
    report, _ = points_run
    for row in [report["baseline"], *report["rows"]]:
        for key in (*TIMES, "llm_prefill_speedup" if "ratio" in row else "flops_llm_speedup"):
            assert _positive(row[key]), (row.get("label", "baseline"), key, row[key])
        assert len(row["samples"]["ttft_s"]) == 1 and row["new_tokens"] == 8
    child = report["sweep_child"]
    assert child["torch_loaded"] is False and child["peak_rss_bytes"] > 50 * 2**20
    from feather.bench.report import points_table
    from feather.runtime import cpu

    table = points_table(report)
    assert cpu.detect().line() in table.title and "K = 8 16" in table.title  # the CPU named, as in every table
    assert table.row_count == 1 + len(RATIOS) * len(STRIDES)  # the unpruned chain, then one row per point


def test_plot_is_a_png(points_run):
    _, png = points_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(("argv", "message"), [
    (["--points", "0.3,0.99"], "point.ratio: 0.99 is outside the range this export accepts "
                               "(ratio 0.05..0.95, stride 1..24, modes static, paper)"),
    (["--points", "0.5", "--strides", "3,25"], "point.stride: 25 is outside the range this export accepts"),
    (["--points", "0.5,0.5"], "--points: R=0.5 s=3 static is asked twice"),
    (["--points", "0.5,"], "argument --points: got '0.5,', expected comma-separated ratios"),
    (["--strides", "3"], "--strides goes with --points"),
    (["--points", "0.5", "--rows", "acd"], "--rows picks rows of the full run"),
])
def test_bad_points_are_refused_in_one_line_before_any_work(argv, message, capsys, monkeypatch):
    """Refused before the checkpoint is even looked up (no export, no child)."""
    from feather.bench import sweep
    from feather.bench.cli import main

    def no_work(*_):
        raise AssertionError("work started")

    monkeypatch.setattr(checkpoint, "resolve", no_work)
    monkeypatch.setattr(sweep, "run_child", no_work)
    assert main(["--geometry", "tiny", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("feather-bench: error: ") and message in err and err.count("\n") == 1, err


def test_plan_takes_the_mode_and_the_geometry_grid():
    """The range checked before any work is the one feather-export records for that geometry:
    strides 1..G (G = 24 for bench and tiny, 27 for interleave-0.5b)."""
    from feather.bench.sweep import plan

    pts = plan("bench", [0.4, 0.8], [2], mode="paper")
    assert pts == [points.Point(0.4, 2, "paper"), points.Point(0.8, 2, "paper")]
    assert plan("interleave-0.5b", [0.5], [27]) == [points.Point(0.5, 27, "static")]
    from feather.errors import InputError

    with pytest.raises(InputError, match="stride 1..24"):
        plan("bench", [0.5], [27])
