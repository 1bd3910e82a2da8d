"""The optional peer row: OpenVINO through optimum-intel, unpruned, on the same checkpoint.

optimum-intel pins transformers < 5.6, so it lives in a venv of its own; ``--openvino-python``
(or ``$FEATHER_OPENVINO_PYTHON``) names that venv's Python. The row runs only when that
Python can import ``optimum.intel``; otherwise it is left out and the reason is kept in
the report. Export and timing are two child processes, so the timed child's peak RSS
does not include the export's torch trace. The script runs with ``-I``: run by path, its
folder would otherwise come first on ``sys.path`` and this package's ``profile.py``
would shadow the standard library's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from feather.bench.proc import BenchError, run_child

SCRIPT = Path(__file__).with_name("openvino_row.py")
ENV_VAR = "FEATHER_OPENVINO_PYTHON"


def available(python: str) -> str | None:
    """None when ``python`` can import optimum-intel's OpenVINO VLM class; else why not."""
    probe = "from optimum.intel import OVModelForVisualCausalLM"
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{python}: {err}"
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        return f"{python}: cannot import optimum.intel ({lines[-1] if lines else 'no message'})"
    return None


def _prompt_text(model: str, prompt: str) -> str:
    from transformers import AutoProcessor

    from feather import prompt as prompt_mod

    processor = AutoProcessor.from_pretrained(model)
    return prompt_mod.render(prompt_mod.template_from_processor(processor), prompt, processor.image_token)


WEIGHT_ROWS = {"fp32": "f", "int8": "n", "int4": "o"}
"""Row id per OpenVINO weight precision: f (fp32), n (INT8 weights), o (INT4 weights)."""


def measure(python: str, common: dict, work: Path, log, weights: str = "fp32") -> dict:
    """Export the checkpoint to OpenVINO IR (with ``weights`` compression), then time it like
    row a; returns a raw row (id f, n or o)."""
    from feather.bench.run import RowSpec

    row = WEIGHT_ROWS[weights]
    why = available(python)
    if why:
        raise BenchError(f"row {row} (OpenVINO): {why}")
    ir = work / f"openvino-ir-{weights}"
    job = {**common, "work": str(work), "ir": str(ir), "weights": weights,
           "prompt_text": _prompt_text(common["model"], common["prompt"])}
    log(f"export: OpenVINO IR (optimum-intel), {weights} weights")
    run_child([python, "-I", str(SCRIPT)], {**job, "phase": "export"}, work, f"{row}-export")
    name = "OpenVINO, unpruned" + ("" if weights == "fp32" else f", {weights} weights")
    log(f"row {row}: {name}")
    result = run_child([python, "-I", str(SCRIPT)], {**job, "phase": "time"}, work, row)
    return {"spec": RowSpec(row, name, "openvino"), **result}
