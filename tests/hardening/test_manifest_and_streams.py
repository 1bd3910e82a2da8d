"""The manifest reader under arbitrary JSON (hypothesis), and streams left early.

- Any mutation of a valid feather.json (a value replaced by another JSON value, a key
  dropped or added, huge or negative numbers, deep nesting) gives a ``Manifest`` or a one-line
  ``ManifestError`` within TIME_S, never another exception.
- A ``stream`` abandoned after one piece (break, an exception in the consumer, a closed
  generator) stops generating at once and leaves no thread behind.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feather.errors import ManifestError
from feather.manifest import parse
from feather.runtime import Pipeline

TIME_S = 1.0
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture],
                    derandomize=True)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def manifest_json(export_feather):
    return json.loads((export_feather / "feather.json").read_text())


def _paths(obj, prefix=()):
    """Every (path) to a value inside ``obj``."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _mutate(data, path, action, value):
    data = json.loads(json.dumps(data))
    if not path:
        return value
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if action == "replace":
        parent[path[-1]] = value
    elif action == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[f"extra_{len(parent)}"] = value
    return data


@SETTINGS
@given(data=st.data(), action=st.sampled_from(["replace", "drop", "add"]), value=JSON_VALUES)
def test_any_mutated_manifest_gives_a_manifest_or_one_line(manifest_json, data, action, value):
    paths = list(_paths(manifest_json))
    path = data.draw(st.sampled_from(paths))
    mutated = _mutate(manifest_json, path, action, value)
    start = time.perf_counter()
    try:
        parse(mutated)
    except ManifestError as err:
        assert "\n" not in str(err) and str(err).startswith("feather.json")
    assert time.perf_counter() - start < TIME_S


@pytest.mark.parametrize("field, value", [
    (("dims", "num_layers"), 10**12), (("dims", "n_image"), 10**9), (("dims", "grid"), 10**5),
    (("image", "size"), [10**7, 10**7]), (("max_seq", ), 10**12), (("dims", "head_dim"), -5),
])
def test_huge_numbers_are_refused_before_anything_is_allocated(manifest_json, field, value):
    mutated = _mutate(manifest_json, field, "replace", value)
    with pytest.raises(ManifestError, match=r"is outside|expected|is not"):
        parse(mutated)


@pytest.mark.parametrize("leave", ["break", "raise", "close"])
def test_abandoned_stream_stops_at_once_and_leaves_no_thread(export_feather, sample_image, leave):
    pipe = Pipeline.load(export_feather)
    steps = {"n": 0}
    decode = pipe.decode_step

    def counted(token, run):
        steps["n"] += 1
        return decode(token, run)

    pipe.decode_step = counted
    before = threading.active_count()
    stream = pipe.stream(sample_image, "What is in the image?", max_new_tokens=64)
    if leave == "break":
        for _ in stream:
            break
    elif leave == "raise":
        with pytest.raises(RuntimeError, match="consumer failed"):
            for _ in stream:
                raise RuntimeError("consumer failed")
    else:
        next(stream)
        stream.close()
    assert steps["n"] <= 1  # no decode step ran after the consumer left
    assert threading.active_count() == before
    assert len(pipe.generate(sample_image, "What is in the image?", max_new_tokens=3).tokens) == 3  # still usable
