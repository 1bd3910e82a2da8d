"""feather-eval --points: one export scored at several operating points, one row each; a point
outside the export's range is refused in one line before any work."""

from __future__ import annotations

import json

from feather import points
from feather.eval.cli import main
from feather.manifest import load_manifest
from feather.points import Point
from tests.eval.test_eval_tiny import write_data


def test_one_row_per_point(export_feather, sample_image, tmp_path, capsys):
    data = write_data(tmp_path, sample_image)
    out = tmp_path / "points.json"
    assert main([str(export_feather), "--data", str(data), "--points", "0.5,0.9", "--strides", "3,6",
                 "--max-new-tokens", "2", "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    names = [f"feather K=8+16 R={r} s={s}" for s in (3, 6) for r in (0.5, 0.9)]
    assert [line.split("  ")[0] for line in printed[2:]] == names  # the table: header, rule, a row per point
    report = json.loads(out.read_text())
    assert list(report["runs"]) == names
    manifest = load_manifest(export_feather, verify=False)
    assert [p["point"] for p in report["points"]] == [{"ratio": r, "stride": s, "mode": "static"}
                                                      for s in (3, 6) for r in (0.5, 0.9)]
    keeps = []
    for entry, name in zip(report["points"], names):
        keep = points.keep_counts(manifest, Point(**entry["point"]))
        assert entry["run"] == name and entry["keep"] == keep and entry["n"] == 3
        assert entry["kept"] == keep  # static mode: every sample keeps exactly the point's counts
        summary = report["runs"][name]["summary"]
        assert [s["mean_kept"] for s in summary["stages"]] == keep
        assert entry["acc@0.5"] == summary["acc@0.5"] and entry["mean_iou"] == summary["mean_iou"]
        keeps.append(keep)
    assert len({tuple(k) for k in keeps}) == 4 and keeps[0][0] > keeps[1][0]  # R=0.5 keeps more than 0.9


def test_a_point_outside_the_range_is_refused_before_any_work(export_feather, tmp_path, capsys):
    out = tmp_path / "points.json"
    for flags, message in ((["--points", "0.5,0.99"], "point.ratio: 0.99"), (["--strides", "30"], "point.stride: 30")):
        code = main([str(export_feather), "--data", str(tmp_path / "missing.jsonl"), *flags, "--json", str(out)])
        printed = capsys.readouterr()
        assert code == 1 and printed.out == "" and not out.exists()
        assert printed.err == (f"feather-eval: error: {message} is outside the range this export accepts "
                               "(ratio 0.05..0.95, stride 1..24, modes static, paper)\n")


def test_points_need_an_export_folder(tmp_path, capsys):
    assert main(["tiny", "--data", str(tmp_path / "missing.jsonl"), "--points", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err == ("feather-eval: error: tiny: --points and --strides choose operating points of an export folder; "
                   "for a checkpoint use --sweep (e.g. feather:r0.5,feather:r0.9)\n")
