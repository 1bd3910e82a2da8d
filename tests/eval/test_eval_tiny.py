"""feather-eval end to end on the tiny checkpoint: the reference (sweep) and the exported chain
answer every sample identically for the same criterion, and the overlay draws their stages."""

from __future__ import annotations

import json

import numpy as np

from feather.eval.cli import main
from feather.overlay import LEGEND_H, render_overlay

FEATHER = "feather K=8+16 R=0.7 s=3"


def write_data(tmp_path, sample_image):
    sample_image.save(tmp_path / "sample.png")  # 400 x 300: the crop cuts 50 px off each side
    rows = [("the red circle", [40, 40, 120, 120]), ("the blue square", [220, 120, 140, 140]),
            ("the yellow triangle", [140, 20, 120, 80])]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"image": "sample.png", "expression": e, "bbox": b}) + "\n" for e, b in rows))
    return path


def test_sweep_reference_and_chain_answer_identically(tiny_path, export_feather, sample_image, tmp_path, capsys):
    data = write_data(tmp_path, sample_image)
    common = ["--data", str(data), "--max-new-tokens", "4", "--no-progress"]
    assert main(["tiny", "--sweep", "none,feather", "--json", str(tmp_path / "ref.json"), *common]) == 0
    printed = capsys.readouterr().out
    assert "\nnone " in printed and f"\n{FEATHER} " in printed
    assert main([str(export_feather), "--json", str(tmp_path / "chain.json"), *common]) == 0
    ref = json.loads((tmp_path / "ref.json").read_text())["runs"]
    chain = json.loads((tmp_path / "chain.json").read_text())["runs"]
    assert list(chain) == [FEATHER] and list(ref) == ["none", FEATHER]
    by_line = [{r["line"]: r for r in runs[FEATHER]["samples"]} for runs in (ref, chain)]
    assert sorted(by_line[0]) == sorted(by_line[1]) == [1, 2, 3]
    for line, r in by_line[0].items():
        c = by_line[1][line]
        assert r["answer"] == c["answer"] and r["answer"]
        assert r["stages"] == c["stages"]  # kept counts, row histograms and GT survival, stage by stage
        assert [s["n_kept"] for s in r["stages"]] == [236, 21]
    assert ref["none"]["summary"]["stages"] == [] and chain[FEATHER]["summary"]["flops_reduction"] > 0.5
    assert chain[FEATHER]["summary"]["n"] == 3


def test_overlay_of_a_real_run(export_feather, sample_image):
    from feather.runtime import Pipeline

    pipe = Pipeline.load(export_feather)
    result = pipe.generate(sample_image, "Where is the red circle?", max_new_tokens=2)
    m = pipe.manifest
    picture = np.asarray(render_overlay(sample_image, result.stages, m.image, m.dims.grid, m.pruning.criterion))
    assert picture.shape == (2 * (336 + 30) + LEGEND_H, 3 * 336, 3)  # two rows of panels, then the legend
    kept = result.stages[1]["kept"]
    pruned = sorted(set(range(576)) - set(kept))
    for token, lit in ((kept[0], True), (kept[-1], True), (pruned[0], False), (pruned[-1], False)):
        row, col = divmod(token, 24)
        y, x = 30 + row * 14 + 7, col * 14 + 7  # centre of the token in the top (model view) row
        full, shown = picture[y, x].astype(float), picture[y, 2 * 336 + x]  # input panel, stage-2 panel
        assert shown.tolist() == (full if lit else np.round(full * 0.28)).tolist()
