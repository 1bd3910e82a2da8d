"""Operating points on the tiny export: one export, each point equal to the PyTorch reference
at that point (tokens, kept indices, logits); points outside the range refused in one line."""

import json

import numpy as np
import pytest

from feather.cli import DEFAULT_PROMPT
from feather.config import PruneConfig
from feather.errors import InputError
from feather.points import Point
from feather.reference import Reference
from feather.runtime import Pipeline
from feather.runtime.cli import main

PROMPT = "What is in the image?"
N = 8


@pytest.fixture(scope="module")
def pipe(export_feather):
    return Pipeline.load(export_feather)


# the tiny model: a 24 x 24 grid (576 image tokens), FEATHER at K 8 16, exported at R 0.7, s 3.
# Static counts by hand: ensemble keeps ceil(24/s)^2 grid tokens + floor(576 (1-R)), the second
# stage floor(n1 (1-R)^2).
POINTS = [
    (Point(0.5, 2, "static"), [144 + 288, 108]),   # 432, floor(432 * 0.25)
    (Point(0.3, 4, "static"), [36 + 403, 215]),    # 439, floor(439 * 0.49) = floor(215.11)
    (Point(0.8, 6, "paper"), None),                # paper: the top 115 united with the 16 grid tokens
]


@pytest.mark.parametrize("point, counts", POINTS, ids=lambda p: p.label() if isinstance(p, Point) else "")
def test_each_point_equals_the_reference_at_that_point(pipe, tiny_path, sample_image, point, counts):
    chain = pipe.generate(sample_image, PROMPT, max_new_tokens=N, prune=point)
    config = PruneConfig(ratio=point.ratio, stride=point.stride, mode=point.mode)
    ref = Reference.load(str(tiny_path), config).generate(sample_image, PROMPT, max_new_tokens=N)
    kept = [len(s["kept"]) for s in chain.stages]
    if counts is not None:
        assert kept == counts
    else:  # paper mode: between the top-k alone (115) and top-k + grid (131); then floor(n1 * 0.04)
        assert 115 <= kept[0] <= 131 and kept[1] == int(kept[0] * 0.04 + 1e-9)
    assert chain.point == {"ratio": point.ratio, "stride": point.stride, "mode": point.mode}
    assert chain.stages == ref.stages
    assert chain.tokens == ref.tokens
    assert max(float(np.abs(a - b).max()) for a, b in zip(chain.logits, ref.logits)) < 1e-3


def test_points_change_what_is_kept_and_the_default_is_the_exports(pipe, sample_image):
    default = pipe.generate(sample_image, PROMPT, max_new_tokens=2)
    assert default.point == {"ratio": 0.7, "stride": 3, "mode": "static"}
    assert [len(s["kept"]) for s in default.stages] == [236, 21]
    same = pipe.generate(sample_image, PROMPT, max_new_tokens=2, prune={"ratio": 0.7, "stride": 3})
    assert same.stages == default.stages and same.tokens == default.tokens
    other = pipe.generate(sample_image, PROMPT, max_new_tokens=2, prune={"ratio": 0.5})  # stride, mode: the export's
    assert other.point == {"ratio": 0.5, "stride": 3, "mode": "static"}
    assert [len(s["kept"]) for s in other.stages] == [64 + 288, 88]  # floor(352 * 0.25)
    assert set(default.stages[0]["kept"]) < set(other.stages[0]["kept"])  # ranked by the same scores


def test_stream_takes_a_point_too(pipe, sample_image):
    point = {"ratio": 0.5, "stride": 2}
    assert "".join(pipe.stream(sample_image, PROMPT, 6, prune=point)) == \
        pipe.generate(sample_image, PROMPT, 6, prune=point).text


def test_a_stage_may_keep_nothing(pipe, tiny_path, sample_image):
    """R 0.95 at s 24: 1 + floor(576 * 0.05) = 29 tokens, then floor(29 * 0.0025) = 0."""
    chain = pipe.generate(sample_image, PROMPT, max_new_tokens=4, prune={"ratio": 0.95, "stride": 24})
    assert [len(s["kept"]) for s in chain.stages] == [29, 0]
    ref = Reference.load(str(tiny_path), PruneConfig(ratio=0.95, stride=24)).generate(sample_image, PROMPT, 4)
    assert chain.tokens == ref.tokens and chain.stages == ref.stages


@pytest.mark.parametrize("prune, start", [
    ({"ratio": 0.99}, "prune.ratio: 0.99 is outside the range this export accepts"),
    ({"stride": 25}, "prune.stride: 25 is outside the range this export accepts"),
    ({"ratio": 0.5, "keep": 3}, "prune: unknown field 'keep'"),
])
def test_a_point_outside_the_range_is_refused_in_one_line(pipe, sample_image, prune, start):
    with pytest.raises(InputError) as info:
        pipe.generate(sample_image, PROMPT, max_new_tokens=2, prune=prune)
    assert str(info.value).startswith(start) and "\n" not in str(info.value)


def test_an_unpruned_export_has_no_point(export_none, sample_image):
    none = Pipeline.load(export_none)
    assert none.generate(sample_image, PROMPT, max_new_tokens=1).point is None
    with pytest.raises(InputError, match="prunes nothing"):
        none.generate(sample_image, PROMPT, max_new_tokens=1, prune={"ratio": 0.5})


def test_feather_run_flags_choose_the_point(export_feather, pipe, sample_image, capsys):
    assert main([str(export_feather), "--max-new-tokens", "4", "--ratio", "0.5", "--stride", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["point"] == {"ratio": 0.5, "stride": 2, "mode": "static"}
    assert [len(s["kept"]) for s in out["stages"]] == [432, 108]
    assert out["tokens"] == pipe.generate(sample_image, DEFAULT_PROMPT, 4, prune={"ratio": 0.5, "stride": 2}).tokens
    assert main([str(export_feather), "--max-new-tokens", "2", "--ratio", "0.5", "--stride", "2"]) == 0
    assert "[R=0.5 s=2 static, kept 432/108 | vision" in capsys.readouterr().err


def test_feather_run_refuses_a_point_outside_the_range(export_feather, capsys):
    assert main([str(export_feather), "--max-new-tokens", "2", "--ratio", "0.99"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["feather-run: error: prune.ratio: 0.99 is outside the range this export accepts "
                   "(ratio 0.05..0.95, stride 1..24, modes static, paper)"]


def test_check_runs_the_reference_at_the_point(export_feather, capsys):
    assert main([str(export_feather), "--max-new-tokens", "4", "--ratio", "0.5", "--stride", "2", "--check",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["ok"] and out["check"]["kept_agree"] == [True, True]
    assert [len(s["kept"]) for s in out["stages"]] == [432, 108]
