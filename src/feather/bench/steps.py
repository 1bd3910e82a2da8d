"""One export or quantize step of a benchmark run, in a process of its own:
``python -m feather.bench.steps SPEC OUT``.

Run apart from the parent so that its peak RSS (``VmHWM``, see ``feather.bench.rows``) and its
time belong to the step alone, as a user running ``feather-export`` or ``feather-quantize``
would see them. SPEC: ``{"step": "export", "model", "prune", "output"}`` (optional ``max_seq``, ``precision``,
``max_graph_layers``) or
``{"step": "quantize", "export", "method", "output"}`` (optional ``quantize_lm_head``, ``calibration``,
``max_new_tokens``). OUT: ``{"seconds", "peak_rss_bytes",
"folder_bytes"}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def folder_bytes(path: Path) -> int:
    """The bytes of every file under ``path`` (what the folder costs on disk)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _export(spec: dict) -> None:
    from feather.config import PruneConfig
    from feather.export import export

    prune = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["prune"].items()}
    extra = {k: spec[k] for k in ("max_seq", "precision", "max_graph_layers") if spec.get(k)}
    export(model=spec["model"], config=PruneConfig(**prune), output=spec["output"], quiet=True, **extra)


def _quantize(spec: dict) -> None:
    from feather.calibration import quantize

    extra = {k: spec[k] for k in ("calibration", "max_new_tokens") if spec.get(k)}
    quantize(spec["export"], method=spec["method"], output=spec["output"], quiet=True,
             quantize_lm_head=spec.get("quantize_lm_head"), **extra)


STEPS = {"export": _export, "quantize": _quantize}


def main(argv: list[str] | None = None) -> int:
    from feather.bench.rows import peak_rss_bytes

    spec_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    t = time.perf_counter()
    STEPS[spec["step"]](spec)
    seconds = time.perf_counter() - t
    result = {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "folder_bytes": folder_bytes(spec["output"])}
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
