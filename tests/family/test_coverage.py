"""docs/models.md's coverage table: the family member it marks unsupported (OneVision) is refused
in one line (LLaVA-NeXT is exported: tests/family/test_next.py), and every test it names exists
(so the table cannot silently point at nothing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feather.errors import ModelError
from feather.export.cli import main as export_main
from feather.hf.checkpoint import load_config

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "models.md"


@pytest.mark.parametrize("config_class, model_type", [
    ("LlavaOnevisionConfig", "llava_onevision"),
])
def test_onevision_is_refused_in_one_line(tmp_path, capsys, config_class, model_type):
    import transformers

    getattr(transformers, config_class)().save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ModelError, match=f"model_type '{model_type}' is not LLaVA"):
        load_config(str(tmp_path / "ckpt"))
    assert export_main(["--model", str(tmp_path / "ckpt"), "--output", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and model_type in err[0]


def test_every_test_the_table_names_exists():
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", TABLE.read_text())
    assert len(named) >= 8
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE)]
    assert missing == []
