"""The runtime on a device without the export stack: the base install only (no extras).

CI builds that venv once (.ci/run sets FEATHER_RUNTIME_PYTHON); run locally without it,
this test builds it itself with ``pip install .`` (about a minute).

Subprocesses run from the repository root: the package lives under src/, so the checkout no
longer shadows the installed package (it did when feather/ sat at the top level).
"""

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

from feather.config import PruneConfig
from feather.reference import Reference

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory) -> Path:
    given = os.environ.get("FEATHER_RUNTIME_PYTHON")
    if given:
        return Path(given)
    env = tmp_path_factory.mktemp("runtime-venv")
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True)
    return python


def test_base_install_has_neither_torch_nor_transformers(runtime_python):
    code = ("import importlib.util as u, sys, feather.runtime, feather.runtime.cli, feather.folder, feather.text;"
            "print(u.find_spec('torch') is None, u.find_spec('transformers') is None,"
            " 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([str(runtime_python), "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out.split() == ["True", "True", "False", "False"]


def test_feather_run_without_torch_gives_the_reference_tokens(runtime_python, export_feather, tiny_path, sample_image):
    cli = runtime_python.parent / "feather-run"
    proc = subprocess.run([str(cli), str(export_feather), "--max-new-tokens", "12", "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    from feather.cli import DEFAULT_PROMPT, SAMPLE_IMAGE

    ref = Reference.load(str(tiny_path), PruneConfig()).generate(SAMPLE_IMAGE, DEFAULT_PROMPT, 12)
    assert out["tokens"] == ref.tokens and out["stages"] == ref.stages


def test_check_without_the_export_extra_says_what_to_install(runtime_python, export_feather):
    cli = runtime_python.parent / "feather-run"
    proc = subprocess.run([str(cli), str(export_feather), "--check"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 1 and "pip install 'feather-vlm[export]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("command", "extra", "missing"), [
    (["feather-serve", "{folder}"], "serve", "uvicorn"),
    (["feather-quantize", "{folder}", "-o", "{tmp}/q"], "export", "onnx"),
    (["feather-bench", "--quick"], "export", "torch"),
    (["feather-export", "--model", "tiny", "--output", "{tmp}/out"], "export", "torch"),
])
def test_commands_that_need_an_extra_name_it_in_one_line(runtime_python, export_feather, tmp_path, command, extra,
                                                         missing):
    """On the base install (no extras) each command that needs more prints one line naming
    the extra to install and exits 1, and writes nothing."""
    exe = runtime_python.parent / command[0]
    args = [a.format(folder=export_feather, tmp=tmp_path) for a in command[1:]]
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == (f"{command[0]}: error: needs the [{extra}] extra ({missing} is not installed): "
                        f"pip install 'feather-vlm[{extra}]'")
    assert list(tmp_path.iterdir()) == []
