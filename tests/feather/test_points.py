"""Operating points (feather.points): parsing, the range check, keep ranges, the manifest field."""

import pytest

from feather import layout, points, rules
from feather.errors import ConfigError, InputError
from tests.feather.manifest_helpers import edit_and_load, make_manifest, refused

FEATHER = [rules.get("ensemble"), rules.get("topk_norope2")]
RANGE = {"ratio": [0.05, 0.95], "stride": [1, 24], "modes": ["static", "paper"]}


def _with_range(data, keep_ranges=([29, 576], [0, 519])):
    data["pruning"]["points"] = dict(RANGE)
    for stage, r in zip(data["pruning"]["stages"], keep_ranges):
        stage["keep_range"] = list(r)


def test_keep_ranges_of_feather_on_the_24_grid():
    # fewest: R 0.95, s 24 -> 1 grid token + floor(576 * 0.05) = 29, then floor(29 * 0.05^2) = 0;
    # most: R 0.05, s 1 -> every token (576), then floor(576 * 0.95^2) = floor(519.84) = 519
    got = points.keep_ranges(lambda s: layout.square(24), FEATHER, (0.05, 0.95), (1, 24))
    assert got == [(29, 576), (0, 519)]
    # a narrower range: R 0.5..0.8, s 2..4 -> fewest 36 + 115 = 151 then floor(151 * 0.04) = 6;
    # most 144 + 288 = 432 then floor(432 * 0.25) = 108
    assert points.keep_ranges(lambda s: layout.square(24), FEATHER, (0.5, 0.8), (2, 4)) == [(151, 432), (6, 108)]


def test_parse_takes_points_mappings_and_none():
    assert points.parse(None) == points.Point()
    assert points.parse({"ratio": 0.5}) == points.Point(0.5, None, None)
    assert points.parse(points.Point(0.5, 2, "paper")) == points.Point(0.5, 2, "paper")
    assert points.parse({"ratio": 1, "stride": 2}).ratio == 1.0


@pytest.mark.parametrize("prune, field", [
    ({"ratio": True}, "prune.ratio"), ({"ratio": "0.5"}, "prune.ratio"), ({"ratio": float("nan")}, "prune.ratio"),
    ({"stride": 2.0}, "prune.stride"), ({"mode": "fast"}, "prune.mode"), ({"rate": 0.5}, "unknown field 'rate'"),
    ([0.5, 2], "expected a Point or a mapping"),
])
def test_parse_refuses_bad_fields_in_one_line(prune, field):
    with pytest.raises(InputError) as info:
        points.parse(prune)
    assert field in str(info.value) and "\n" not in str(info.value)


def test_resolve_against_a_manifest_range(tmp_path):
    m = edit_and_load(tmp_path, _with_range)
    assert points.resolve(m, None) == points.Point(0.7, 3, "static")
    assert points.resolve(m, {"ratio": 0.5}) == points.Point(0.5, 3, "static")
    assert points.resolve(m, {"stride": 24, "mode": "paper"}) == points.Point(0.7, 24, "paper")
    for prune, what in [({"ratio": 0.99}, "prune.ratio: 0.99 is outside"), ({"ratio": 0.01}, "prune.ratio: 0.01"),
                        ({"stride": 25}, "prune.stride: 25 is outside"), ({"stride": 0}, "prune.stride: 0")]:
        with pytest.raises(InputError) as info:
            points.resolve(m, prune)
        assert str(info.value).startswith(what), str(info.value)
        assert "(ratio 0.05..0.95, stride 1..24, modes static, paper)" in str(info.value)


def test_an_export_without_a_range_accepts_only_its_own_point(tmp_path):
    m = make_manifest()
    assert m.pruning.points is None
    assert points.resolve(m, {"ratio": 0.7, "stride": 3}) == points.Point(0.7, 3, "static")
    with pytest.raises(InputError, match=r"prune.ratio: 0.5 is outside .*ratio 0.7..0.7, stride 3..3, modes static"):
        points.resolve(m, {"ratio": 0.5})
    with pytest.raises(InputError, match="mode: 'paper' is outside"):
        points.resolve(m, {"mode": "paper"})


def test_export_range_defaults_and_refusals():
    assert points.export_range(0.7, 3, 24) == ((0.05, 0.95), (1, 24))
    assert points.export_range(0.97, 30, 24) == ((0.05, 0.97), (1, 30))  # widened to hold the export's point
    assert points.export_range(0.7, 3, 24, (0.5, 0.8), (2, 4)) == ((0.5, 0.8), (2, 4))
    for rr, sr, what in [((0.8, 0.9), None, "ratio-range: got 0.8 0.9"), ((0.0, 0.9), None, "ratio-range"),
                         ((0.5, 1.0), None, "ratio-range"), (None, (4, 8), "stride-range: got 4 8"),
                         (None, (1, 200), "stride-range")]:
        with pytest.raises(ConfigError, match=what):
            points.export_range(0.7, 3, 24, rr, sr)


def test_the_manifest_recounts_keep_ranges(tmp_path):
    for name in ("ok", "tampered", "missing"):
        (tmp_path / name).mkdir()
    m = edit_and_load(tmp_path / "ok", _with_range)
    assert [s.keep_range for s in m.pruning.stages] == [[29, 576], [0, 519]]
    msg = refused(tmp_path / "tampered", lambda d: _with_range(d, ([29, 576], [0, 600])))
    assert "pruning.stages[1].keep_range" in msg and "[0, 519]" in msg
    msg = refused(tmp_path / "missing", lambda d: _with_range(d, ([29, 576],)))
    assert "pruning.stages[1].keep_range" in msg


@pytest.mark.parametrize("edit, where", [
    (lambda p: p.update(ratio=[0.75, 0.95]), "pruning.points.ratio"),  # misses the export's 0.7
    (lambda p: p.update(ratio=[0.0, 0.95]), "pruning.points.ratio"),
    (lambda p: p.update(stride=[4, 24]), "pruning.points.stride"),
    (lambda p: p.update(stride=[1, 500]), "pruning.points.stride"),
    (lambda p: p.update(modes=["paper"]), "pruning.points.modes"),
    (lambda p: p.update(modes=["static", "fast"]), "pruning.points.modes[1]"),
    (lambda p: p.update(ratio=[0.05]), "pruning.points.ratio"),
])
def test_the_manifest_refuses_a_bad_range(tmp_path, edit, where):
    def change(data):
        _with_range(data)
        edit(data["pruning"]["points"])

    assert where in refused(tmp_path, change)


def test_keep_range_without_points_is_refused(tmp_path):
    def change(data):
        data["pruning"]["stages"][0]["keep_range"] = [29, 576]

    assert "pruning.stages[0].keep_range" in refused(tmp_path, change)
