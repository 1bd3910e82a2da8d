"""feather-bench: the whole run on the tiny checkpoint (in-process ``main``), and the pieces
that need no run: the benchmark geometry, the summaries, the OpenVINO key renaming."""

from __future__ import annotations

import json
import math

import pytest

from feather.bench import checkpoint
from feather.bench.openvino_row import legacy_key

TIMES = ("vision_s", "llm_prefill_s", "ttft_s", "decode_s", "decode_tokens_per_s")
RATIOS = ("llm_prefill_speedup", "flops_predicted_speedup", "ttft_vs_torch_eager", "decode_speedup")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def bench_run(tiny_path, tmp_path_factory):
    """One quick run on the tiny geometry. ``--threads 1``: on a shared 2-core machine two
    spinning OpenMP / ONNX Runtime threads per process can be slowed many times over by
    other load, and this test must stay well under a minute."""
    from feather.bench.cli import main

    out = tmp_path_factory.mktemp("bench")
    js, png = out / "bench.json", out / "bench.png"
    code = main(["--geometry", "tiny", "--quick", "--repeats", "1", "--threads", "1", "--quiet",
                 "--json", str(js), "--plot", str(png)])
    assert code == 0
    return json.loads(js.read_text()), png


def test_rows_have_positive_finite_numbers(bench_run):
    report, _ = bench_run
    assert [r["id"] for r in report["rows"]] == list("abcdeg")
    for row in report["rows"]:
        for key in (*TIMES, "peak_rss_bytes", "kv_cache_bytes", "flops_llm_speedup", "flops_prefill_speedup"):
            assert _positive(row[key]), (row["id"], key, row[key])
        assert row["new_tokens"] == 8  # --quick: 8 decoded tokens after the first
        assert len(row["samples"]["ttft_s"]) == 1  # --repeats 1


def test_ratios_and_targets_present(bench_run):
    report, _ = bench_run
    for key in RATIOS:
        assert _positive(report["ratios"][key]), key
    rows = {r["id"]: r for r in report["rows"]}
    r = report["ratios"]
    assert r["llm_prefill_speedup"] == pytest.approx(rows["c"]["llm_prefill_s"] / rows["d"]["llm_prefill_s"])
    assert r["ttft_vs_torch_eager"] == pytest.approx(rows["d"]["ttft_s"] / rows["a"]["ttft_s"])
    assert set(report["targets"]) == {"llm_prefill_vs_flops", "ttft_vs_torch_eager", "decode_speedup",
                                      "kv_bytes_match_kept_counts", "decode_long_vs_short_within_10pct_of_predicted"}
    assert report["geometry"]["n_image"] == 576 and report["geometry"]["layers"] == 24
    assert report["geometry"]["vision_layers"] == 3  # tiny CLIP: 4 layers, LLaVA reads layer -2
    assert report["machine"]["nproc"] >= 1 and report["settings"]["threads"] == 1
    from feather.runtime import cpu

    host = cpu.detect()  # the ISA features that pick ONNX Runtime's kernels, named in the JSON and the title
    assert report["machine"]["cpu"]["features"] == list(host.features) and host.features
    assert report["machine"]["cpu"]["int8_kernel"] == host.int8_kernel
    from feather.bench.report import table

    assert host.line() in table(report).title


def test_long_context_row_and_its_prediction(bench_run):
    """Row g decodes after a ~1,500-text-token prompt; its ratio to row d sits beside what
    the extra attention work alone predicts (feather.flops.decode_flops)."""
    from feather.flops import decode_flops

    report, _ = bench_run
    rows = {r["id"]: r for r in report["rows"]}
    d, g = rows["d"], rows["g"]
    assert g["n_text"] > 1200 and d["n_text"] < 100 and g["kept"] == d["kept"] == [236, 21]
    fgeom = checkpoint.flops_geometry(checkpoint.resolve("tiny"))
    stages = [(8, 236), (16, 21)]
    want = decode_flops(fgeom, d["n_text"], 576, stages, 8) / decode_flops(fgeom, g["n_text"], 576, stages, 8)
    r = report["ratios"]
    assert r["decode_long_vs_short_predicted"] == pytest.approx(want) and 0 < want < 1
    assert r["decode_long_vs_short"] == pytest.approx(g["decode_tokens_per_s"] / d["decode_tokens_per_s"])


def test_pruned_rows_keep_the_planned_counts_and_kv(bench_run):
    report, _ = bench_run
    rows = {r["id"]: r for r in report["rows"]}
    assert rows["b"]["kept"] == rows["d"]["kept"] == rows["g"]["kept"] == [236, 21]  # static: 172 + 64 grid, then 9 %
    assert rows["e"]["kept"] == [144]  # FastV R = 0.75: floor(576 * 0.25)
    for row in rows.values():  # KV bytes: exactly what the kept counts predict
        assert row["kv_cache_bytes"] == row["kv_cache_bytes_predicted"], row["id"]
    assert rows["d"]["kv_cache_bytes"] < rows["c"]["kv_cache_bytes"]
    assert rows["d"]["flops_llm_speedup"] > 1.5 and rows["c"]["flops_llm_speedup"] == 1.0


def test_rows_run_isolated_and_agree(bench_run):
    report, _ = bench_run
    rows = {r["id"]: r for r in report["rows"]}
    assert rows["a"]["torch_loaded"] and rows["b"]["torch_loaded"]
    assert not any(rows[k]["torch_loaded"] for k in "cde")  # chain children never import torch
    # peak RSS is each child's own (VmHWM), not the parent's carried over: no torch, less memory
    assert max(rows[k]["peak_rss_bytes"] for k in "cde") < min(rows[k]["peak_rss_bytes"] for k in "ab")
    assert all(report["checks"].values()), report["checks"]  # same greedy tokens and kept indices


def test_plot_is_a_png(bench_run):
    _, png = bench_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000


def test_bench_geometry_keeps_llava_proportions():
    config = checkpoint.build_config(vocab_size=512, image_token_id=4, pad_id=3)
    t, v = config.text_config, config.vision_config
    assert (v.image_size // v.patch_size) ** 2 == 576
    assert t.num_hidden_layers == 32 and t.head_dim == 128
    assert t.num_key_value_heads == t.num_attention_heads  # Llama-2-7B: no GQA
    assert t.intermediate_size / t.hidden_size == pytest.approx(11008 / 4096)
    assert v.hidden_size / t.hidden_size == pytest.approx(1024 / 4096)
    assert v.num_hidden_layers == 24 and v.intermediate_size == 4 * v.hidden_size


def test_bench_prompt_is_about_40_text_tokens():
    from feather import tiny
    from feather.prompt import LLAVA_1_5_TEMPLATE, render

    ids = tiny.build_tokenizer().encode(render(LLAVA_1_5_TEMPLATE, checkpoint.PROMPT)).ids
    assert 36 <= len(ids) - 1 <= 44  # minus the one <image> placeholder


def test_openvino_copy_uses_the_hub_layout_for_the_vision_tower():
    assert legacy_key("vision_tower.encoder.layers.0.mlp.fc1.weight") == (
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    )
    done = "vision_tower.vision_model.post_layernorm.bias"
    assert legacy_key(done) == done
    assert legacy_key("language_model.model.layers.0.mlp.up_proj.weight") == (
        "language_model.model.layers.0.mlp.up_proj.weight"
    )


def test_bad_repeats_is_a_user_error(capsys):
    from feather.bench.cli import main

    assert main(["--geometry", "tiny", "--repeats", "-1"]) == 1
    assert "repeats=-1" in capsys.readouterr().err


def test_missing_openvino_python_is_reported_not_fatal(tmp_path):
    from feather.bench import openvino

    why = openvino.available(str(tmp_path / "no-such-python"))
    assert why is not None and "no-such-python" in why


def test_quantized_rows_ratios_and_targets_need_no_run():
    """Rows h-m (``benchmark(quantized=True)``): each quantized FEATHER chain against row d."""
    from feather.bench.run import QUANT_ROWS, _quant_ratios, _targets

    assert [(r.id, r.quant, r.baseline) for r in QUANT_ROWS] == [
        ("h", "int8", "d"), ("i", "int4", "d"), ("j", "int8-int4", "d"),
        ("k", "int8", "c"), ("l", "int4", "c"), ("m", "int8-int4", "c")]
    rows = {"d": {"ttft_s": 2.0, "decode_tokens_per_s": 10.0}, "h": {"ttft_s": 1.0, "decode_tokens_per_s": 12.0},
            "i": {"ttft_s": 1.8, "decode_tokens_per_s": 25.0}, "j": {"ttft_s": 1.25, "decode_tokens_per_s": 21.0}}
    ratios = _quant_ratios(rows)
    assert ratios == {"int8_ttft_speedup": 2.0, "int4_decode_speedup": 2.5, "int8_int4_ttft_speedup": 1.6,
                      "int8_int4_decode_speedup": 2.1}
    assert _quant_ratios({"d": rows["d"]}) == {}
    base = {"llm_prefill_vs_flops": 1.0, "ttft_vs_torch_eager": 0.4, "decode_speedup": 1.1}
    targets = _targets({**base, **ratios}, [])
    assert targets["int8_int4_ttft_vs_fp32"] == {"value": 0.625, "target": "<= 0.55", "met": False}
    assert targets["int8_int4_decode_speedup"] == {"value": 2.1, "target": ">= 2.2", "met": False}


def test_openvino_same_precision_ratios_and_targets_need_no_run():
    """With rows n and o (OpenVINO with INT8 / INT4 weights), the int8-int4 FEATHER chain (row j)
    is compared at the same weight precision: TTFT against n, decode against o."""
    from feather.bench.openvino import WEIGHT_ROWS
    from feather.bench.run import _ratios, _targets

    assert WEIGHT_ROWS == {"fp32": "f", "int8": "n", "int4": "o"}
    row = lambda ttft, prefill, tps: {"ttft_s": ttft, "llm_prefill_s": prefill, "decode_tokens_per_s": tps,  # noqa: E731
                                      "flops_llm_speedup": 2.0}
    rows = {"a": row(2.0, 1.8, 10), "c": row(1.5, 1.4, 20), "d": row(0.6, 0.5, 22), "e": row(0.5, 0.4, 23),
            "f": row(1.0, 0.9, 25), "j": row(0.3, 0.25, 50), "n": row(0.75, 0.7, 30), "o": row(0.9, 0.8, 40)}
    ratios = _ratios(rows)
    assert ratios["ttft_vs_openvino_same_precision"] == pytest.approx(0.4)
    assert ratios["decode_vs_openvino_same_precision"] == pytest.approx(1.25)
    targets = _targets(ratios, [])
    assert targets["ttft_vs_openvino_same_precision"]["met"] and targets["decode_vs_openvino_same_precision"]["met"]
    del rows["o"]
    assert "decode_vs_openvino_same_precision" not in _ratios(rows)


def test_export_steps_are_measured_in_their_own_children(bench_run):
    """Each export ran in a child (feather.bench.steps): its time, peak RSS and folder size are
    in the report; a folder is at least its graphs' bytes."""
    report, _ = bench_run
    steps = report["steps"]
    assert {s["step"] for s in steps.values()} == {"export"}
    assert len(steps) == 4  # none, FEATHER, FastV, FEATHER at the long --max-seq
    for name, st in steps.items():
        assert st["seconds"] > 0 and st["peak_rss_bytes"] > 50 * 2**20 and st["folder_bytes"] > 2**20, name


def test_rows_pick_a_subset_and_bad_ids_are_refused():
    from feather.bench.proc import BenchError
    from feather.bench.run import select_rows

    specs, peer = select_rows("acdjfno", quantized=False)
    assert [s.id for s in specs] == ["a", "c", "d", "j"] and peer == ("f", "n", "o")
    specs, peer = select_rows(None, quantized=False)
    assert [s.id for s in specs] == list("abcdeg") and peer == ("f",)
    specs, peer = select_rows(None, quantized=True)
    assert [s.id for s in specs] == list("abcdeghijklm") and peer == ("f", "n", "o")
    for bad in ("az", "", "a;c"):
        with pytest.raises(BenchError, match="expected row ids among"):
            select_rows(bad, quantized=False)


def test_partial_rows_give_only_their_ratios_and_the_real_size_targets():
    """A run of some rows (``--rows``) reports the ratios those rows allow; at interleave-0.5b
    issue 20's targets: row j against OpenVINO f / n / o, and peak RSS at equal precision."""
    from feather.bench.run import _checks, _ratios, _real_size_targets

    row = lambda ttft, tps, rss: {"ttft_s": ttft, "llm_prefill_s": ttft / 2, "decode_tokens_per_s": tps,  # noqa: E731
                                  "flops_llm_speedup": 2.0, "peak_rss_bytes": rss}
    rows = {"c": row(4.0, 5, 3e9), "d": row(2.0, 6, 3e9), "j": row(1.0, 20, 1e9), "f": row(4.0, 4, 4e9),
            "n": row(2.0, 10, 2e9), "o": row(1.5, 15, 1.5e9), "k": row(3.0, 8, 2.5e9), "l": row(3.0, 12, 1e9)}
    ratios = _ratios(rows)
    assert "ttft_vs_torch_eager" not in ratios  # no row a
    assert ratios["int8_int4_ttft_vs_openvino_fp32"] == pytest.approx(0.25)
    targets = _real_size_targets(ratios, rows)
    assert targets["int8_int4_ttft_vs_openvino_fp32"] == {"value": 0.25, "target": "<= 0.35", "met": True}
    assert targets["ttft_vs_openvino_same_precision"]["target"] == "<= 0.6"
    assert targets["decode_vs_openvino_same_precision"] == {"value": pytest.approx(20 / 15), "target": ">= 1.2",
                                                            "met": True}
    assert targets["peak_rss_k_vs_openvino_n"]["met"] is False  # 2.5 GB against OpenVINO INT8's 2 GB
    assert targets["peak_rss_c_vs_openvino_f"]["met"] and targets["peak_rss_l_vs_openvino_o"]["met"]
    assert _checks({"c": {"tokens": [1]}, "d": {"tokens": [2]}}) == {}


def test_interleave_geometry_is_llava_interleave_qwen_0_5b():
    """The real-size geometry's config (built without weights): llava-interleave-qwen-0.5b-hf's."""
    from feather import checkpoints

    spec = checkpoint.INTERLEAVE_SPEC
    config = checkpoints.build_config(spec, spec.vocab_size, image_token_id=4, pad_id=3)
    t, v = config.text_config, config.vision_config
    assert (t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers) == (151936, 1024, 2816, 24)
    assert t.num_attention_heads == t.num_key_value_heads == 16 and t.tie_word_embeddings
    theta = getattr(t, "rope_theta", None) or t.rope_parameters["rope_theta"]
    assert theta == 1e6
    assert (v.hidden_size, v.intermediate_size, v.num_attention_heads, v.image_size, v.patch_size) == (
        1152, 4304, 16, 384, 14)
    assert config.vision_feature_select_strategy == "full" and config.vision_feature_layer == -1
    assert "interleave-0.5b" in checkpoint.GEOMETRIES
