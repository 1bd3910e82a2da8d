"""feather-tune's choice on a fake model with a known TTFT and accuracy per point: the Pareto
front, the best point within each budget (ties to the faster), and no point when none fits."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from feather.config import PruneConfig
from feather.eval import Answer, evaluate, load_samples
from feather.eval.models import label
from feather.eval.tune import Row, choose, fastest, pareto, table, tune
from feather.manifest import Dims
from feather.points import Point
from tests.eval.test_viz import clip_spec

BBOX = [125, 75, 150, 150]  # on a 400 x 300 picture: [0.25, 0.25, 0.75, 0.75] of the view
TRUTH = "[0.25, 0.25, 0.75, 0.75]"
N = 5
# ratio -> (TTFT ms, samples answered right out of N)
KNOWN = {0.3: (200.0, 4), 0.5: (150.0, 4), 0.7: (100.0, 3), 0.8: (120.0, 2), 0.9: (60.0, 1)}
POINTS = [Point(r, 3, "static") for r in KNOWN]


class FakeAtPoint:
    """Answers the first ``right`` expressions with the truth and the rest with a wrong box."""

    def __init__(self, point: Point, right: int):
        self.config = PruneConfig(ratio=point.ratio, stride=point.stride, mode=point.mode)
        self.image_spec, self.right = clip_spec(), right
        self.dims = Dims(num_layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, vocab=32000,
                         intermediate=11008, n_image=576, grid=24, vision_hidden=1024)

    def answer(self, image, prompt, max_new_tokens):
        index = int(prompt.split('"')[1].split()[-1])
        return Answer(TRUTH if index < self.right else "[0.0, 0.0, 0.1, 0.1]", [])


@pytest.fixture
def samples(tmp_path):
    Image.new("RGB", (400, 300), (90, 90, 90)).save(tmp_path / "pic.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"image": "pic.png", "expression": f"thing {i}", "bbox": BBOX}) + "\n"
                            for i in range(N)))
    return load_samples(path)


def fake_rows(samples) -> list[Row]:
    """``tune`` with the fake's TTFT (three runs, median the known value) and the harness's scores."""
    def ttft(p):
        return [KNOWN[p.ratio][0] + 7, KNOWN[p.ratio][0], KNOWN[p.ratio][0] - 3]

    def score(pts):
        models = [FakeAtPoint(p, KNOWN[p.ratio][1]) for p in pts]
        runs = evaluate(models, samples, progress=False)["runs"]
        return [runs[label(m.config)]["summary"] for m in models]

    seen = []
    rows = tune(POINTS, ttft, score, keep=lambda p: [int(576 * (1 - p.ratio))], progress=seen.append)
    assert len(seen) == len(POINTS) and seen[0] == "TTFT R=0.3 s=3 static: 200.0 ms (median of 3)"
    return rows


def test_tune_rows_hold_the_known_ttft_and_accuracy(samples):
    rows = fake_rows(samples)
    assert [r.point for r in rows] == POINTS
    assert [r.ttft_ms for r in rows] == [200.0, 150.0, 100.0, 120.0, 60.0]
    assert [r.acc for r in rows] == pytest.approx([0.8, 0.8, 0.6, 0.4, 0.2])
    assert [r.keep for r in rows] == [[403], [288], [172], [115], [57]]
    assert rows[0].ttft_runs_ms == [207.0, 200.0, 197.0] and rows[0].summary["n"] == N


@pytest.mark.parametrize("budget, ratio", [
    (1000.0, 0.5),  # everything fits: 0.3 and 0.5 tie at 80 %, the faster (0.5) wins
    (150.0, 0.5),  # the budget is inclusive
    (149.9, 0.7),  # 0.5 is now over; 0.7 (60 %) beats 0.8 (40 %) and 0.9 (20 %)
    (110.0, 0.7),
    (90.0, 0.9),
    (59.9, None),  # nothing fits
])
def test_choose_picks_the_most_accurate_point_within_the_budget(samples, budget, ratio):
    rows = fake_rows(samples)
    chosen = choose(rows, budget)
    assert (None if chosen is None else chosen.point.ratio) == ratio
    assert fastest(rows).point.ratio == 0.9


def test_pareto_marks_the_rows_nothing_beats(samples):
    rows = fake_rows(samples)
    # 0.3 loses to 0.5 (as accurate, faster); 0.8 to 0.7 (faster and more accurate)
    assert pareto(rows) == [False, True, True, False, True]
    text = table(rows, 110.0, choose(rows, 110.0)).splitlines()
    assert text[0].split()[:4] == ["point", "kept", "TTFT", "ms"] and len(text) == 2 + len(rows)
    cells = {line.split()[0]: line.split()[3:] for line in text[2:]}  # R=...: kept, TTFT, Acc@0.5, ..., marks
    assert cells["R=0.7"] == ["172", "100.0", "60.0", "60.0", "0.600", "100.0", "*", "yes", "<-", "chosen"]
    assert cells["R=0.8"][-2:] == ["100.0", "no"] and cells["R=0.3"][-3:] == ["0.800", "100.0", "no"]
    assert cells["R=0.5"][-2:] == ["*", "no"] and cells["R=0.9"][-2:] == ["*", "yes"]


def test_pareto_edge_cases():
    a, b = Row(Point(0.5, 3, "static"), 100.0, 0.5), Row(Point(0.6, 3, "static"), 100.0, 0.5)
    assert pareto([a, b]) == [True, True]  # equal in both: neither beats the other
    c = Row(Point(0.7, 3, "static"), 100.0, 0.4)  # as fast, less accurate
    assert pareto([a, b, c]) == [True, True, False]
    assert pareto([]) == [] and choose([], 100.0) is None
    assert choose([a, b], 100.0) is a  # a full tie: the earlier row
