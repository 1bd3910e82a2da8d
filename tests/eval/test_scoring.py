"""The harness scores answers exactly, separately from any model: a fake model stands in."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from feather.config import PruneConfig
from feather.errors import ConfigError, InputError
from feather.eval import Answer, evaluate, gt_in_view, iou, load_samples, parse_box, parse_sweep, table
from feather.eval.cli import main
from feather.manifest import Dims
from feather.overlay import View
from tests.eval.test_viz import clip_spec

# 400 x 300 picture -> view x 1.12, 56 px cropped from each side. This box lands on view
# pixels (84, 84)-(252, 252), i.e. [0.25, 0.25, 0.75, 0.75] of the view.
BBOX = [125, 75, 150, 150]
TRUTH = (0.25, 0.25, 0.75, 0.75)


class FakeModel:
    """Answers from a table keyed by expression; keeps every token unless ``stages`` is given."""

    def __init__(self, answers: dict[str, str], stages: list[dict] | None = None, n_image=576, grid=24,
                 config=PruneConfig(criterion="none")):
        self.answers, self.stages, self.calls = answers, stages or [], []
        self.config, self.image_spec = config, clip_spec()
        self.dims = Dims(num_layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, vocab=32000,
                         intermediate=11008, n_image=n_image, grid=grid, vision_hidden=1024)

    def answer(self, image, prompt, max_new_tokens):
        expression = prompt.split('"')[1]
        self.calls.append(expression)
        return Answer(self.answers[expression], self.stages)


def box_text(b) -> str:
    return "[" + ", ".join(repr(float(v)) for v in b) + "]"


@pytest.fixture
def data(tmp_path):
    Image.new("RGB", (400, 300), (90, 90, 90)).save(tmp_path / "pic.png")

    def write(expressions, bbox=BBOX, name="data.jsonl", **extra):
        lines = [json.dumps({"image": "pic.png", "expression": e, "bbox": bbox, **extra}) for e in expressions]
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return write


def test_ground_truth_maps_into_the_cropped_view():
    view = View.of(400, 300, clip_spec())
    assert gt_in_view((125, 75, 275, 225), view) == pytest.approx(TRUTH)
    assert gt_in_view((0, 0, 100, 300), view) == pytest.approx((0, 0, (112 - 56) / 336, 1))  # clipped at x = 0
    assert gt_in_view((0, 0, 40, 300), view) is None  # entirely in the cropped-away strip


@pytest.mark.parametrize("text, box", [
    ("[0.1, 0.2, 0.3, 0.4]", (0.1, 0.2, 0.3, 0.4)),
    ("The box is [0, 0.5, 1, 1.0].", (0.0, 0.5, 1.0, 1.0)),
    ("0.1,0.2,0.3,0.4", (0.1, 0.2, 0.3, 0.4)),
    ("[0.3, 0.2, 0.1, 0.4]", None),  # x1 > x2
    ("[0.1, 0.4, 0.3, 0.4]", None),  # y1 == y2
    ("[0.1, 0.2, 0.3, 1.5]", None),  # outside [0, 1]
    ("[0.1, 0.2, 0.3]", None),
    ("[12, 30, 140, 200]", None),  # pixels, not normalised
    ("a red ball", None),
    ("[nan, 0.2, 0.3, 0.4]", None),
])
def test_parse_box(text, box):
    assert parse_box(text) == (pytest.approx(box) if box else None)


def test_iou_values():
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 2, 1), (1, 0, 3, 1)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_truth_scores_one_shifted_boxes_score_by_iou_and_garbage_is_wrong(data):
    answers = {
        "truth": box_text(TRUTH),
        "shift 0.1": box_text((0.35, 0.25, 0.85, 0.75)),  # IoU 0.2 / 0.3 = 2/3
        "shift 0.25": box_text((0.5, 0.25, 1.0, 0.75)),  # IoU 0.125 / 0.375 = 1/3
        "garbage": "I cannot tell.",
        "flipped": box_text((0.75, 0.25, 0.25, 0.75)),
    }
    model = FakeModel(answers)
    report = evaluate([model], load_samples(data(list(answers))), progress=False)
    run = report["runs"]["none"]
    ious = {model.calls[i]: r["iou"] for i, r in enumerate(run["samples"])}
    assert ious == pytest.approx({"truth": 1.0, "shift 0.1": 2 / 3, "shift 0.25": 1 / 3, "garbage": 0.0,
                                  "flipped": 0.0})
    s = run["summary"]
    assert s["n"] == 5 and s["outside"] == 0
    assert s["acc@0.5"] == pytest.approx(2 / 5) and s["acc@0.25"] == pytest.approx(3 / 5)
    assert s["parse_rate"] == pytest.approx(3 / 5) and s["mean_iou"] == pytest.approx(2 / 5)
    assert s["flops_reduction"] == 0.0 and s["stages"] == []


def test_a_fake_answering_the_truth_scores_one(data):
    names = [f"thing {i}" for i in range(4)]
    report = evaluate([FakeModel({n: box_text(TRUTH) for n in names})], load_samples(data(names)), progress=False)
    s = report["runs"]["none"]["summary"]
    assert (s["acc@0.5"], s["acc@0.25"], s["parse_rate"]) == (1.0, 1.0, 1.0)
    assert s["mean_iou"] == pytest.approx(1.0)


def test_kept_token_rows_and_ground_truth_survival(data):
    # keep the bottom half (rows 12-23); the truth covers rows 6-17, columns 6-17 (144 tokens)
    stages = [{"layer": 3, "kept": list(range(12 * 24, 576))}]
    report = evaluate([FakeModel({"x": box_text(TRUTH)}, stages, config=PruneConfig("original", K=(3,)))],
                      load_samples(data(["x"])), progress=False)
    rec = report["runs"]["original K=3 R=0.7"]["samples"][0]
    assert rec["gt_tokens"] == 144 and rec["stages"][0]["gt_kept"] == 72
    stage = report["runs"]["original K=3 R=0.7"]["summary"]["stages"][0]
    assert stage["layer"] == 3 and stage["mean_kept"] == 288
    assert stage["row_share"] == pytest.approx([0.0] * 12 + [1 / 12] * 12)
    assert stage["bottom_third_share"] == pytest.approx(8 / 12) and stage["gt_survival"] == 0.5


def test_flops_reduction_is_the_papers_count(data):
    # Prismatic 7B geometry (N = 729, G = 27), FastV K = 3 keeping 182: the poster's 68 % (68.6)
    model = FakeModel({"x": box_text(TRUTH)}, [{"layer": 3, "kept": list(range(182))}], n_image=729, grid=27)
    s = evaluate([model], load_samples(data(["x"])), progress=False)["runs"]["none"]["summary"]
    assert s["flops_reduction"] == pytest.approx(0.686, abs=5e-4)


def test_target_outside_the_crop_is_skipped_not_asked(data):
    model = FakeModel({"in": box_text(TRUTH), "out": box_text(TRUTH)})
    path = data(["in"])
    with path.open("a") as f:
        f.write(json.dumps({"image": "pic.png", "expression": "out", "bbox": [0, 0, 40, 300]}) + "\n")
    s = evaluate([model], load_samples(path), progress=False)["runs"]["none"]["summary"]
    assert model.calls == ["in"] and s["n"] == 1 and s["outside"] == 1 and s["acc@0.5"] == 1.0


def test_resume_skips_samples_already_in_the_json(data, tmp_path):
    names = ["a", "b", "c"]
    path, out = data(names), tmp_path / "out.json"
    first = FakeModel({n: box_text(TRUTH) for n in names})
    evaluate([first], load_samples(path, limit=2), json_out=out, progress=False, data=str(path))
    assert first.calls == ["a", "b"]
    second = FakeModel({n: "no box" for n in names})
    report = evaluate([second], load_samples(path), json_out=out, progress=False, data=str(path))
    assert second.calls == ["c"]
    assert report["runs"]["none"]["summary"]["acc@0.5"] == pytest.approx(2 / 3)
    assert json.loads(out.read_text())["runs"]["none"]["summary"]["n"] == 3
    with pytest.raises(InputError, match="max_new_tokens=128"):
        evaluate([second], load_samples(path), max_new_tokens=8, json_out=out, progress=False, data=str(path))


def test_splits_are_summarised_separately(data, tmp_path):
    path = data(["a"], split="val")
    with path.open("a") as f:
        f.write(json.dumps({"image": "pic.png", "expression": "b", "bbox": BBOX, "split": "test"}) + "\n")
    report = evaluate([FakeModel({"a": box_text(TRUTH), "b": "?"})], load_samples(path), progress=False)
    splits = report["runs"]["none"]["summary"]["splits"]
    assert splits["val"]["acc@0.5"] == 1.0 and splits["test"]["acc@0.5"] == 0.0
    assert [s.expression for s in load_samples(path, split="test")] == ["b"]


@pytest.mark.parametrize("line, message", [
    ('{"image": "../pic.png", "expression": "x", "bbox": [1, 2, 3, 4]}', "leaves the JSONL's folder"),
    ('{"image": "pic.png", "expression": "x", "bbox": [1, 2, 3]}', "bbox: expected"),
    ('{"image": "pic.png", "expression": "x", "bbox": [1, 2, 0, 4]}', "width and height"),
    ('{"image": "pic.png", "bbox": [1, 2, 3, 4]}', "missing key 'expression'"),
    ('[1, 2]', "expected a JSON object"),
    ('{"image": "pic.png",', "invalid JSON at column 21"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, line, message):
    sub = tmp_path / "sub"
    sub.mkdir()
    path = sub / "d.jsonl"
    path.write_text('{"image": "pic.png", "expression": "ok", "bbox": [1, 2, 3, 4]}\n' + line + "\n")
    with pytest.raises(InputError, match=f"d.jsonl:2: .*{message}"):
        load_samples(path)


def test_sweep_specs():
    base = PruneConfig()
    got = parse_sweep("none,original@3:r0.75,uniform@3:s2,feather", base)
    assert [(c.criterion, c.K, c.ratio, c.stride) for c in got] == [
        ("none", (), 0.7, 3), ("original", (3,), 0.75, 3), ("uniform", (3,), 0.7, 2), ("feather", (8, 16), 0.7, 3)]
    assert parse_sweep("norope", base)[0].K == (8,)  # --K cut to the criterion's one stage
    assert len(parse_sweep("poster", base)) == 7
    with pytest.raises(ConfigError, match="'bogus'"):
        parse_sweep("none,bogus", base)
    with pytest.raises(ConfigError, match="original@3:x1"):
        parse_sweep("original@3:x1", base)
    with pytest.raises(ConfigError, match="twice"):
        parse_sweep("none,none", base)


def test_table_has_one_row_per_run(data):
    report = evaluate([FakeModel({"x": box_text(TRUTH)}, [{"layer": 3, "kept": list(range(100))}],
                                 config=PruneConfig("original", K=(3,)))], load_samples(data(["x"])), progress=False)
    lines = table(report).splitlines()
    assert lines[0].split()[:4] == ["run", "n", "FLOPs", "red."]
    assert lines[2].startswith("original K=3 R=0.7") and "100.0" in lines[2] and "L3:100" in lines[2]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "--data", str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("feather-eval: error:") and "missing.jsonl: no such file" in err


def test_cli_pruning_options(tmp_path, capsys):
    from feather.eval.cli import build_parser, configs

    def parse(*argv):
        return configs(build_parser().parse_args(["tiny", "--data", "d.jsonl", *argv]))

    assert parse() is None
    assert [(c.criterion, c.K) for c in parse("--criterion", "original")] == [("original", (8,))]
    assert [(c.criterion, c.K, c.ratio) for c in parse("--criterion", "original", "--K", "3", "--ratio", "0.75")] == [
        ("original", (3,), 0.75)]
    assert [c.K for c in parse("--sweep", "none,norope", "--K", "2", "5")] == [(), (2,)]
    assert [(c.criterion, c.K) for c in parse("--criterion", "none")] == [("none", ())]  # the unpruned baseline
    assert [(c.criterion, c.K) for c in parse("--criterion", "text_only")] == [("text_only", (0,))]
    assert [(c.criterion, c.K) for c in parse("--criterion", "feather")] == [("feather", (8, 16))]
    (tmp_path / "feather.json").write_text("{}")  # an export folder: its own criterion only
    assert main([str(tmp_path), "--data", "d.jsonl", "--criterion", "original"]) == 1
    assert "export folder runs the criterion it was exported with" in capsys.readouterr().err
