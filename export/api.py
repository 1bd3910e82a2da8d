"""``export()``: a LLaVA checkpoint -> a folder of segmented ONNX graphs + feather.json.

Works in a temporary folder beside the output and moves it into place only when every
graph exported, passed the operator allow-list and onnx.checker, and matched PyTorch in
ONNX Runtime; a failure leaves nothing behind. Graphs are exported one at a time and
freed, so peak memory is the model plus about twice its largest graph.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from pathlib import Path

from feather.config import PruneConfig
from feather.errors import ConfigError, OutputError
from feather.export import manifest_build, onnx_io, validate
from feather.export.chain import SegmentPlan, plan_segments
from feather.export.progress import Steps
from feather.hf import checkpoint as model_mod

PRECISIONS = ("fp32", "fp16")


def export(
    model: str = model_mod.DEFAULT_MODEL,
    config: PruneConfig | None = None,
    output: str | Path = "feather-export",
    precision: str = "fp32",
    max_seq: int = 2048,
    opset: int = 17,
    overwrite: bool = False,
    quiet: bool = False,
    max_graph_layers: int | None = None,
) -> Path:
    """Export ``model`` with ``config`` into ``output``; return the folder.

    ``max_graph_layers`` caps the decoder layers per graph (extra cuts, no pruning there):
    peak export memory is about the model plus 3.5x its largest graph, so a 7B export on
    a machine with twice the weights in RAM wants 8 (see docs/architecture.md)."""
    import torch

    config = config or PruneConfig()
    out = _check_output(Path(output), overwrite)
    _check_options(precision, max_seq, opset, max_graph_layers)
    dtype = torch.float32 if precision == "fp32" else torch.float16
    llava, processor = model_mod.load(model, dtype)
    geom = model_mod.geometry(llava.config)
    config.check_layers(geom.num_layers)
    plans = plan_segments(config, geom.num_layers, geom.n_image, geom.grid, max_graph_layers)
    created = _make_parents(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_graphs(llava, geom, plans, tmp, precision, opset, quiet)
        manifest_build.write(tmp, model, llava, processor, config, geom, plans, precision, opset, max_seq)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            for folder in reversed(created):  # leave no empty parents behind either
                folder.rmdir()
    return out


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; return the folders it created, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    for p in missing:
        p.mkdir()
    return missing


def _check_output(out: Path, overwrite: bool) -> Path:
    out = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: folder is not empty; pass --overwrite to replace it")
    parent = next(p for p in out.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"{parent}: not a writable folder")
    return out


def _check_options(precision: str, max_seq: int, opset: int, max_graph_layers: int | None) -> None:
    if max_graph_layers is not None and (isinstance(max_graph_layers, bool) or not isinstance(max_graph_layers, int)
                                         or max_graph_layers < 1):
        raise ConfigError(f"max_graph_layers: got {max_graph_layers!r}, expected an integer >= 1")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: got {precision!r}, expected one of {', '.join(PRECISIONS)}")
    if isinstance(max_seq, bool) or not isinstance(max_seq, int) or max_seq < 16:
        raise ConfigError(f"max_seq: got {max_seq!r}, expected an integer >= 16")
    if not 17 <= opset <= 21:
        raise ConfigError(f"opset: got {opset}, expected 17..21")


def _write_graphs(llava, geom, plans: list[SegmentPlan], folder: Path, precision, opset, quiet) -> None:
    """Export, check and validate every graph, one at a time; raise all mismatches at once."""
    from feather.export import segments as seg_mod

    dtype = next(llava.parameters()).dtype
    jobs = [("vision.onnx", lambda: _vision_job(llava, dtype)), ("embed.onnx", lambda: _embed_job(llava))]
    for plan in plans:
        jobs.append((plan.file, lambda p=plan: _segment_job(llava, geom, p, dtype, seg_mod)))
    failures: list[str] = []
    with Steps(len(jobs), quiet) as steps:
        for name, make in jobs:
            module, trace, cases = make()
            path = folder / name
            steps.step(f"export {name}")
            _export_one(module, trace, path, opset)
            onnx_io.check_graph(path)
            steps.step(f"validate {name}")
            failures += validate.compare(module, path, cases, precision)
            del module, trace, cases
            gc.collect()
            steps.done()
    validate.raise_failures(failures)


def _export_one(module, trace: tuple, path: Path, opset: int) -> None:
    """Trace into a work folder of its own (the tracer may scatter external-data files
    there), then write the one final graph beside the others and drop the work folder."""
    work = path.parent / f".work-{path.stem}"
    work.mkdir()
    try:
        onnx_io.export_module(module, trace, work / path.name, opset)
        large = onnx_io.weight_bytes(module) >= onnx_io.EXTERNAL_DATA_BYTES
        onnx_io.finalize(work / path.name, path, module.dynamic_axes, onnx_io.output_shapes(module, trace), large)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _vision_job(llava, dtype):
    import torch

    from feather.export.segments import VisionGraph

    size = llava.config.vision_config.image_size
    g = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(1, 3, size, size, generator=g).to(dtype)  # noqa: E731
    return VisionGraph(llava).eval(), (make(),), [validate.Case("other pixels", (make(),))]


def _embed_job(llava):
    import torch

    from feather.export.segments import EmbedGraph

    vocab = llava.config.text_config.vocab_size
    ids = lambda n: torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n))  # noqa: E731
    return EmbedGraph(llava).eval(), (ids(5),), [validate.Case("S=9", (ids(9),))]


def _segment_job(llava, geom, plan: SegmentPlan, dtype, seg_mod):
    module = seg_mod.DecoderSegment(llava, plan.start, plan.end, plan.score_rope, plan.final).eval()
    dims = (geom.hidden, geom.kv_heads, geom.head_dim, dtype)
    return module, validate.trace_args(module, *dims), validate.segment_cases(module, *dims, seed=plan.index)
