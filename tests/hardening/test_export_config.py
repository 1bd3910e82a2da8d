"""Exports that would succeed and not run (issue 21, class 7): absurd config.json numbers are
refused in one line before any weight is allocated, and an export reads its own folder back as
feather-run does before moving it into place."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from feather.errors import ModelError
from feather.hf.checkpoint import load_config

CASES = [
    # (where, field, value, what the line must name)
    ("text_config", "vocab_size", -5, "text_config.vocab_size is -5"),
    ("text_config", "vocab_size", 0, "text_config.vocab_size is 0"),
    ("text_config", "hidden_size", 1e9, "'hidden_size' expected int, got float"),  # transformers' own check
    ("text_config", "hidden_size", 10**9, "text_config.hidden_size is 1000000000"),
    ("text_config", "num_hidden_layers", 1_000_000, "text_config.num_hidden_layers is 1000000"),
    ("text_config", "num_hidden_layers", 0, "text_config.num_hidden_layers is 0"),
    ("text_config", "intermediate_size", "wide", "'intermediate_size' expected int, got str"),
    ("text_config", "num_key_value_heads", 3, "num_key_value_heads = 3 does not divide"),
    ("text_config", "max_position_embeddings", 10**12, "max_position_embeddings is 1000000000000"),
    ("vision_config", "image_size", 10**6, "vision_config.image_size is 1000000"),
    ("vision_config", "patch_size", 0, "vision_config.patch_size is 0"),
    ("vision_config", "num_hidden_layers", 10**6, "vision_config.num_hidden_layers is 1000000"),
    ("vision_config", "num_attention_heads", 5, "hidden size (64) is not a multiple of the number of attention"),
    (None, "image_token_index", 1_000_000, "image_token_index is 1000000; expected an integer in [0, 511]"),
    (None, "image_token_index", -1, "image_token_index is -1"),
]


def _checkpoint(tiny_path, tmp_path, where, field, value, full=False):
    folder = tmp_path / "ckpt"
    if full:
        shutil.copytree(tiny_path, folder)
    else:
        folder.mkdir()
        shutil.copy(tiny_path / "config.json", folder / "config.json")
    config = json.loads((folder / "config.json").read_text())
    (config[where] if where else config)[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("where,field,value,expected", CASES)
def test_absurd_config_values_are_one_line(tiny_path, tmp_path, where, field, value, expected):
    folder = _checkpoint(tiny_path, tmp_path, where, field, value)
    with pytest.raises(ModelError) as err:
        load_config(str(folder))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_heads_that_do_not_divide_the_width(tiny_path, tmp_path):
    """Without an explicit head_dim, the width must split into the heads."""
    folder = _checkpoint(tiny_path, tmp_path, "text_config", "num_attention_heads", 6)
    config = json.loads((folder / "config.json").read_text())
    del config["text_config"]["head_dim"]
    config["text_config"]["num_key_value_heads"] = 6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"hidden size \(64\) is not a multiple of the number of attention heads"):
        load_config(str(folder))


def test_the_tiny_config_passes(tiny_path):
    assert load_config(str(tiny_path)).text_config.vocab_size == 512


def test_cli_refuses_before_the_weights_load(tiny_path, tmp_path):
    """feather-export with image_token_index 1000000: one line, exit 1, nothing written, and
    no model built (the refusal comes from config.json alone)."""
    folder = _checkpoint(tiny_path, tmp_path, None, "image_token_index", 1_000_000, full=True)
    out = tmp_path / "out"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "feather.export.cli", "--model", str(folder), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "image_token_index is 1000000" in proc.stderr, proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert time.monotonic() - start < 120


def test_export_reads_its_folder_back(export_feather, tmp_path):
    """The read-back check refuses a folder feather-run would refuse (here: a tokenizer whose
    image token id disagrees with the manifest), in one line."""
    from feather.export.api import _loads_as_feather_run_would
    from feather.manifest import load_manifest

    _loads_as_feather_run_would(export_feather)  # the real export passes
    copy = tmp_path / "copy"
    shutil.copytree(export_feather, copy)
    m = load_manifest(copy)
    text = (copy / "feather.json").read_text()
    (copy / "feather.json").write_text(text.replace(f'"image_token_id": {m.prompt.image_token_id}',
                                                    '"image_token_id": 7'))
    with pytest.raises(ModelError, match="would not load") as err:
        _loads_as_feather_run_would(copy)
    assert "\n" not in str(err.value)
