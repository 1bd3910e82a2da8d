"""The capture of a float chain too large to hold whole (a 7B fp32 export is 27 GB): one graph's
session open at a time records exactly what the chain with every session open records, and
never holds two sessions; the choice follows the chain's size against the memory available."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from feather.calibration import capture as capture_mod
from feather.calibration import default_set, record
from tests.calibration.conftest import STEPS


def test_one_session_at_a_time_records_what_the_whole_chain_records(export_feather, captured, monkeypatch):
    alive: list[weakref.ref] = []
    most = [0]
    real_open = capture_mod.OneAtATime.session

    def spy(self, lazy):
        session = real_open(self, lazy)
        if not any(r() is session for r in alive):
            alive.append(weakref.ref(session))
        gc.collect()
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return session

    monkeypatch.setattr(capture_mod.OneAtATime, "session", spy)
    low = record(export_feather, default_set()[:2], max_new_tokens=STEPS, low_memory=True)
    assert most[0] == 1, f"{most[0]} sessions were open at once"
    assert len(alive) > len(low.records), "decode steps reopen the segments"
    assert sorted(low.records) == sorted(captured.records)
    for file, runs in captured.records.items():
        assert [r.phase for r in low.records[file]] == [r.phase for r in runs]
        for a, b in zip(low.records[file], runs, strict=True):
            assert sorted(a.feeds) == sorted(b.feeds)
            for name in a.feeds:
                np.testing.assert_array_equal(a.feeds[name], b.feeds[name], err_msg=f"{file} {name}")
    for a, b in zip(low.results, captured.results, strict=True):
        assert a.tokens == b.tokens


def test_the_choice_follows_size_against_available_memory(export_feather, monkeypatch):
    low, size, available = capture_mod.one_at_a_time(export_feather)
    files = [f for f in export_feather.iterdir() if f.suffix in (".onnx", ".data")]
    assert size <= sum(f.stat().st_size for f in files) and size > 0.9 * sum(
        f.stat().st_size for f in files if f.name != "embed.onnx")
    assert available is not None and not low  # the tiny chain fits anywhere
    monkeypatch.setattr(capture_mod, "_available_bytes", lambda: int(size / capture_mod.FIT) - 1)
    assert capture_mod.one_at_a_time(export_feather)[0]
    monkeypatch.setattr(capture_mod, "_available_bytes", lambda: int(size / capture_mod.FIT) + 1)
    assert not capture_mod.one_at_a_time(export_feather)[0]


def test_the_report_runs_a_large_quantized_chain_one_session_at_a_time(captured, quantized, monkeypatch):
    from feather.calibration import report as report_mod

    folder = quantized("int8-int4").folder
    whole = report_mod.chain_agreement(captured, folder, None)
    opened = []
    real = capture_mod.OneAtATime.session

    def spy(self, lazy):
        opened.append(lazy.path.name)
        return real(self, lazy)

    monkeypatch.setattr(capture_mod, "one_at_a_time", lambda _folder: (True, 0, 0))
    monkeypatch.setattr(capture_mod.OneAtATime, "session", spy)
    low = report_mod.chain_agreement(captured, folder, None)
    assert "segment0.int4.onnx" in opened and "segment0.onnx" in opened  # both phases went through it
    assert low == whole
