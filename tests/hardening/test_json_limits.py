"""One JSON reader (``feather.jsonread``) with size and depth limits for everything a user hands in:
request bodies, feather-eval and calibration JSONL, feather.json; and one rule for the image paths
a JSONL names (``path_inside``)."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feather import jsonread
from feather.calibration.data import load_set
from feather.cli import SAMPLE_IMAGE
from feather.errors import InputError, ManifestError
from feather.eval.data import load_samples
from feather.manifest import load_manifest


def _nested(depth: int, opener: str = "[") -> str:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return '{"a":' * depth + "1" + closer * depth
    return opener * depth + closer * depth


@pytest.mark.parametrize(("text", "expected"), [
    ("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('["[[[[", "]]]"]', 1), ('{"a\\"[[": "\\\\"}', 1),
    (_nested(64), 64), (_nested(5000, "{"), 5000),
])
def test_depth_counts_brackets_outside_strings(text, expected):
    assert jsonread.depth(text) == expected


@pytest.mark.parametrize("depth", [65, 100, 1000, 100_000])
@pytest.mark.parametrize("opener", ["[", "{"])
def test_too_deep_is_one_line_naming_the_depth(depth, opener):
    with pytest.raises(InputError) as info:
        jsonread.loads(_nested(depth, opener), "body")
    assert str(info.value) == f"body: JSON nested too deeply ({depth} levels, expected at most 64)"


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(0, 3000), kinds=st.lists(st.sampled_from("[{"), min_size=1, max_size=8),
       limit=st.integers(1, 200))
def test_any_depth_gives_the_value_or_one_line(depth, kinds, limit):
    # a mix of arrays and objects, nested `depth` levels: parsed as json.loads would when within
    # the limit, else one InputError line; never a RecursionError
    opens, closes = [], []
    for i in range(depth):
        kind = kinds[i % len(kinds)]
        opens.append("[" if kind == "[" else '{"k":')
        closes.append("]" if kind == "[" else "}")
    text = "".join(opens) + '"x"' + "".join(reversed(closes))
    if depth <= limit:
        assert jsonread.loads(text, "w", max_depth=limit) == json.loads(text)
    else:
        with pytest.raises(InputError, match=rf"^w: JSON nested too deeply \({depth} levels, expected at most "
                                             rf"{limit}\)$"):
            jsonread.loads(text, "w", max_depth=limit)


@pytest.mark.parametrize(("data", "message"), [
    ("x" * 101, "w: 101 bytes of JSON, expected at most 100"),
    (b"\xff{}", "w: not UTF-8 text (invalid start byte at byte 0)"),
    ('{"a": NaN}', "w: NaN is not JSON; expected a finite number"),
    ("[1, -Infinity]", "w: -Infinity is not JSON; expected a finite number"),
    ('{"a": }', "w: invalid JSON at column 7: Expecting value"),
    ('{\n "a": }', "w: invalid JSON at line 2, column 7: Expecting value"),
])
def test_size_encoding_and_constants(data, message):
    with pytest.raises(InputError) as info:
        jsonread.loads(data, "w", max_bytes=100)
    assert str(info.value) == message


def test_a_long_string_is_fast_and_not_depth(tmp_path):
    text = json.dumps({"image": "A[{" * (6 << 20), "deep": [[[1]]]})  # brackets inside a string do not count
    assert jsonread.depth(text) == 4
    assert len(jsonread.loads(text, "w")["image"]) == 18 << 20


# -- the readers that use it ---------------------------------------------------------------
def _eval_line(image: str) -> str:
    return json.dumps({"image": image, "expression": "the cat", "bbox": [1, 2, 3, 4]}) + "\n"


@pytest.mark.parametrize("depth", [65, 2000, 50_000])
def test_eval_and_calibration_lines_too_deep(tmp_path, depth):
    data = tmp_path / "data.jsonl"
    data.write_text(_eval_line("pic.png") + _nested(depth) + "\n")
    with pytest.raises(InputError, match=rf"data.jsonl:2: JSON nested too deeply \({depth} levels"):
        load_samples(data)
    calib = tmp_path / "calib.jsonl"
    calib.write_text(_nested(depth, "{") + "\n")
    with pytest.raises(InputError, match=rf"calib.jsonl:1: JSON nested too deeply \({depth} levels"):
        load_set(calib)


def test_eval_line_over_one_mib(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(_eval_line("pic.png") + '{"image": "' + "x" * (2 << 20) + '"}\n')
    with pytest.raises(InputError, match=r"data.jsonl:2: line longer than 1048576 characters"):
        load_samples(data)


def test_manifest_too_deep_is_one_line(tmp_path):
    (tmp_path / "feather.json").write_text(_nested(300, "{"))
    with pytest.raises(ManifestError, match=r"feather.json: JSON nested too deeply \(300 levels, expected at most"):
        load_manifest(tmp_path)


def test_feather_eval_deep_line_is_one_line(export_feather, tmp_path, capsys):
    from feather.eval.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text(_nested(100_000) + "\n")
    code = main([str(export_feather), "--data", str(data), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "data.jsonl:1: JSON nested too deeply (100000 levels, expected at most 64)" in err


# -- one path rule for both readers --------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(SAMPLE_IMAGE, tmp_path / "data" / "pic.png")
    shutil.copy(SAMPLE_IMAGE, tmp_path / "outside.png")
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "outside.png")
    return tmp_path


@pytest.mark.parametrize(("image", "reason"), [
    ("{abs}/data/pic.png", "is not a relative path"),  # absolute, even inside the folder
    ("{abs}/outside.png", "is not a relative path"),
    ("/etc/hostname", "is not a relative path"),
    ("~/pic.png", "is not a relative path"),
    ("../outside.png", "leaves the JSONL's folder"),
    ("sub/../../outside.png", "leaves the JSONL's folder"),
    ("link.png", "leaves the JSONL's folder"),  # a symbolic link out of the folder
])
def test_both_readers_refuse_the_same_paths(folder, image, reason):
    image = image.format(abs=folder)
    for name, line, reader in [("eval.jsonl", _eval_line(image), load_samples),
                               ("calib.jsonl", json.dumps({"image": image, "prompt": "What?"}) + "\n", load_set)]:
        path = folder / "data" / name
        path.write_text(line)
        with pytest.raises(InputError) as info:
            reader(path)
        assert f"{name}:1: image {image!r}" in str(info.value) and reason in str(info.value), str(info.value)


def test_both_readers_take_a_path_inside(folder):
    data = folder / "data"
    (data / "sub").mkdir()
    shutil.copy(SAMPLE_IMAGE, data / "sub" / "p2.png")
    (data / "eval.jsonl").write_text(_eval_line("pic.png") + _eval_line("sub/../sub/p2.png"))
    assert [s.image for s in load_samples(data / "eval.jsonl")] == [data / "pic.png", data / "sub" / "p2.png"]
    (data / "calib.jsonl").write_text(json.dumps({"image": "sub/p2.png", "prompt": "What?"}) + "\n")
    assert [s.image for s in load_set(data / "calib.jsonl")] == [data / "sub" / "p2.png"]
