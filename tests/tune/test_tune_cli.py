"""feather-tune end to end on the tiny export: the table, the choice and how to run it, the
JSON (one row per point), no point within a budget (exit 2), and a point out of range (one line)."""

from __future__ import annotations

import json

from feather import points
from feather.eval.tune_cli import NO_POINT_FITS, main
from feather.manifest import load_manifest
from feather.points import Point
from tests.eval.test_eval_tiny import write_data


def test_tune_on_the_tiny_export(export_feather, sample_image, tmp_path, capsys):
    data = write_data(tmp_path, sample_image)
    out, png = tmp_path / "tune.json", tmp_path / "tune.png"
    code = main([str(export_feather), "--data", str(data), "--budget-ms", "1e6", "--points", "0.5,0.7,0.9",
                 "--repeats", "2", "--max-new-tokens", "4", "--json", str(out), "--plot", str(png), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0
    # --quiet leaves only the warning: the tiny checkpoint's accuracy cannot rank anything
    assert printed.err.count("\n") == 1 and printed.err.startswith("feather-tune: warning: ")
    assert "random-weight checkpoint 'tiny'" in printed.err
    doc = json.loads(out.read_text())
    manifest = load_manifest(export_feather, verify=False)
    assert [r["point"] for r in doc["rows"]] == [{"ratio": r, "stride": 3, "mode": "static"} for r in (0.5, 0.7, 0.9)]
    for r in doc["rows"]:
        assert r["keep"] == points.keep_counts(manifest, Point(**r["point"]))
        assert len(r["ttft_runs_ms"]) == 2 and r["ttft_ms"] > 0 and r["n"] == 3 and r["within_budget"]
    assert [r["keep"] for r in doc["rows"]][1] == [236, 21]  # the export's own point
    assert doc["warnings"] and doc["repeats"] == 2 and doc["budget_ms"] == 1e6
    # the choice is the harness's: the most accurate, ties to the faster
    best = min(doc["rows"], key=lambda r: (-r["acc@0.5"], r["ttft_ms"]))
    assert doc["chosen"] == best["point"]
    chosen = Point(**doc["chosen"])
    lines = printed.out.splitlines()
    table = lines[:lines.index("")]
    assert len(table) == 2 + 3 and table[0].split()[:2] == ["point", "kept"]
    assert sum(line.endswith("<- chosen") for line in table) == 1
    assert any(line.startswith(chosen.label()) and line.endswith("<- chosen") for line in table)
    assert f"chosen: {chosen.label()} " in printed.out
    assert f"feather-run {export_feather} {chosen.flags()}" in printed.out
    field = json.dumps(doc["chosen"])
    assert f"pipe.generate(image, prompt, prune={field})" in printed.out
    assert f'"feather": {field}' in printed.out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_point_within_the_budget_says_so_and_exits_2(export_feather, sample_image, tmp_path, capsys):
    data = write_data(tmp_path, sample_image)
    out = tmp_path / "tune.json"
    code = main([str(export_feather), "--data", str(data), "--budget-ms", "0.001", "--points", "0.3,0.9",
                 "--repeats", "1", "--warmup", "0", "--limit", "1", "--max-new-tokens", "1", "--json", str(out)])
    printed = capsys.readouterr()
    assert code == NO_POINT_FITS == 2
    doc = json.loads(out.read_text())
    assert doc["chosen"] is None and not any(r["within_budget"] for r in doc["rows"]) and len(doc["rows"]) == 2
    quick = min(doc["rows"], key=lambda r: r["ttft_ms"])
    assert doc["fastest"] == quick["point"]
    assert f"no point meets the 0.001 ms budget on this device; the fastest is {quick['label']} at " in printed.out
    assert Point(**quick["point"]).flags() in printed.out and "<- chosen" not in printed.out
    assert "TTFT R=0.3 s=3 static: " in printed.err  # progress lines without --quiet


def test_a_point_outside_the_range_is_refused_in_one_line(export_feather, tmp_path, capsys):
    data = tmp_path / "data.jsonl"  # never read: the point is refused first
    out = tmp_path / "tune.json"
    for flags, message in ((["--points", "0.5,0.99"], "point.ratio: 0.99 is outside the range"),
                           (["--strides", "3,25"], "point.stride: 25 is outside the range")):
        code = main([str(export_feather), "--data", str(data), "--budget-ms", "100", *flags, "--json", str(out)])
        printed = capsys.readouterr()
        assert code == 1 and printed.out == "" and not out.exists()
        assert printed.err == (f"feather-tune: error: {message} this export accepts "
                               "(ratio 0.05..0.95, stride 1..24, modes static, paper)\n")


def test_bad_options_are_one_line(export_feather, tmp_path, capsys):
    for argv, message in (
        ([str(export_feather), "--data", "x.jsonl", "--budget-ms", "0"], "expected milliseconds > 0"),
        ([str(export_feather), "--data", "x.jsonl", "--budget-ms", "9", "--points", "0.5,,0.7"],
         "expected comma-separated ratios"),
        ([str(tmp_path), "--data", "x.jsonl", "--budget-ms", "9"], "not an export folder (no feather.json)"),
        ([str(export_feather), "--data", "x.jsonl", "--budget-ms", "9", "--points", "0.5,0.5"],
         "points: R=0.5 s=3 static is named twice; drop one"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_tune_is_torch_free(export_feather, sample_image, tmp_path):
    """A whole feather-tune run imports none of the extras' modules (the base install suffices;
    --plot alone needs matplotlib)."""
    import subprocess
    import sys
    from pathlib import Path

    data = write_data(tmp_path, sample_image)
    code = ("import sys; from feather.eval.tune_cli import main;"
            f"rc = main([{str(export_feather)!r}, '--data', {str(data)!r}, '--budget-ms', '1e6', '--points', '0.7',"
            " '--repeats', '1', '--limit', '1', '--max-new-tokens', '1', '--quiet']);"
            "print(rc, sorted(m for m in ('torch', 'transformers', 'onnx', 'matplotlib', 'starlette', 'psutil')"
            " if m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 []"
