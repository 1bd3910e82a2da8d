"""``export()``: a LLaVA checkpoint -> a folder of segmented ONNX graphs + feather.json.

Works in a temporary folder beside the output and moves it into place only when every
graph exported, passed the operator allow-list and onnx.checker, and matched PyTorch in
ONNX Runtime; a failure (an error, a full disk, Ctrl-C, SIGTERM) leaves nothing behind,
and an export killed outright (SIGKILL) is cleaned by the next export into the same
folder (``feather.folder.staged_output``, the transaction feather-quantize and feather-build
use too). Graphs are exported one at a time, each holding only its own weights, read from a
local checkpoint's safetensors shards while it is traced and validated (``feather.hf.stream``),
so peak memory is about 3.5x the largest graph, not the model (a hub id, or a checkpoint that
needs more than key renames, is loaded whole by ``from_pretrained``: the model plus that).

What ``--overwrite`` may replace, and which output paths are refused, is written down in
docs/hardening.md; ``feather.folder.check_output`` enforces it before anything is loaded.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
from pathlib import Path

from feather.config import PruneConfig
from feather.errors import ConfigError, FeatherError, ModelError
from feather.export import onnx_io, validate
from feather.export.chain import ExportPlan, SegmentPlan, plan_segments
from feather.export.progress import Steps
from feather.folder import check_output, staged_output
from feather.hf import checkpoint as model_mod
from feather.manifest import BOUNDS, EXPORT_OPSETS, PRECISIONS, TARGETS
from feather.text import first_line


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
    target: str = "portable",
    image_size: tuple[int, int] | None = None,
    ratio_range: tuple[float, float] | None = None,
    stride_range: tuple[int, int] | None = None,
) -> Path:
    """Export ``model`` with ``config`` into ``output``; return the folder.

    ``max_graph_layers`` caps the decoder layers per graph (extra cuts, no pruning there):
    peak export memory is about 3.5x the largest graph (weights streamed per graph), so it is
    the knob for a 7B export on a small machine (docs/benchmarks.md, "LLaVA-1.5-7B"). ``target``
    (portable or onnxruntime) is recorded in the manifest and picks the operator allow-list.
    ``image_size`` ``(width, height)``: the one frame size a LLaVA-NeXT export takes (it fixes the
    tile layout, hence every token count); required for NeXT, refused for other checkpoints.
    ``ratio_range`` / ``stride_range``: the operating points a call may choose (``feather.points``;
    default ratio 0.05..0.95 and stride 1..G, always holding ``config``'s own point).

    Raises ``OutputError`` for an output it may not write or replace (see
    ``feather.folder.check_output``) or a file-system failure while writing (full disk,
    read-only); the folder is written through ``feather.folder.staged_output``."""
    config = config or PruneConfig()
    check_options(precision, max_seq, opset, max_graph_layers, target)
    out = check_output(output, overwrite, model)
    dtype = model_mod.torch_dtype(precision)
    tiles = model_mod.frame_tiles(model_mod.load_config(model), image_size)  # refused before the weights load
    llava, processor, source = _load(model, dtype)
    plan = make_plan(model, config, llava.config, tiles, max_graph_layers, precision=precision, opset=opset,
                     max_seq=max_seq, target=target, ratio_range=ratio_range, stride_range=stride_range)
    _warn_memory(llava, plan, source is not None, dtype)
    with staged_output(out, overwrite, model) as tmp:  # feather.folder: parents, leftovers, swap, clean-up
        _write_graphs(llava, plan, tmp, quiet, source)
        _share_tied_embedding(llava, plan, tmp, source)
        _write_manifest(tmp, plan, llava, processor)
        _loads_as_feather_run_would(tmp)
    return out


def _share_tied_embedding(llava, plan: ExportPlan, folder: Path, source=None) -> None:
    """A tied checkpoint's embedding matrix stored once (``feather.export.tied``); the rewritten
    embed graph is checked again against the model's own embedding."""
    from feather.export import tied
    from feather.manifest import graphs

    if not _is_tied(llava) or not tied.share(folder, "embed.onnx", plan.segments[-1].file,
                                             graphs.NAMES[graphs.LOGITS]):
        return
    onnx_io.check_graph(folder / "embed.onnx", plan.target)
    with _weights(source, *_embed_modules(llava)):
        module, _, cases = _embed_job(llava)
        validate.raise_failures(validate.compare(module, folder / "embed.onnx", cases, plan.precision))


def _is_tied(llava) -> bool:
    head, embed = llava.get_output_embeddings(), llava.get_input_embeddings()
    return head is not None and head.weight is embed.weight  # the same Parameter (also on the meta device)


def _loads_as_feather_run_would(folder: Path) -> None:
    """The new folder read back as ``feather-run`` reads it (the manifest's checks, its files'
    hashes, the prompt spec against tokenizer.json) before it is moved into place."""
    from feather.manifest import load_manifest
    from feather.runtime.preprocess import PromptEncoder

    try:
        m = load_manifest(folder)
        PromptEncoder(folder / m.tokenizer, m.prompt, m.max_seq)
    except FeatherError as err:
        raise ModelError(f"export: the folder written would not load ({' '.join(str(err).split())}); "
                         "nothing was written") from None


def make_plan(model: str, config: PruneConfig, hf_config, tiles, max_graph_layers: int | None = None,
              ratio_range=None, stride_range=None, **options) -> ExportPlan:
    """The ``ExportPlan`` of ``model`` (its HF config) under ``config``: geometry, image layout,
    segments, keep counts and the operating-point range; ``options`` are precision, opset,
    max_seq and target."""
    from feather import points

    geom = model_mod.geometry(hf_config, tiles)
    config.check_layers(geom.num_layers)
    check_max_seq(options.get("max_seq", 2048), geom.n_image, hf_config)
    lay = model_mod.layout_for(hf_config, tiles, config.stride)
    segments, keep = plan_segments(config, lay, geom.num_layers, max_graph_layers)
    rng, ranges = None, ()
    if config.stages:
        rng = points.export_range(config.ratio, config.stride, geom.grid, ratio_range, stride_range)
        ranges = tuple(points.keep_ranges(lambda s: model_mod.layout_for(hf_config, tiles, s),
                                          [s.impl for s in config.stages], *rng))
    return ExportPlan(model, config, geom, lay, tiles, tuple(segments), tuple(keep), rng, ranges, **options)


def _write_manifest(folder: Path, plan: ExportPlan, llava, processor) -> None:
    from feather.export import manifest_build  # imports torch: only once a model is loaded

    manifest_build.write(folder, plan, llava, processor)


def _load(model: str, dtype):
    """``(model, processor, source)``: a local safetensors checkpoint streamed per graph
    (``feather.hf.stream``: ``source`` reads each graph's weights while it is exported, so the
    whole model is never held), else loaded whole by ``from_pretrained`` (``source`` None).
    A missing or truncated weights file is one ``ModelError`` line."""
    from feather.hf import stream

    try:
        source, _why = stream.open_streamed(model, dtype)
        if source is not None:
            return source.net, model_mod.load_processor(model), source
        return (*model_mod.load(model, dtype), None)
    except FeatherError:
        raise
    except (OSError, ValueError) as err:
        raise ModelError(f"{model}: cannot load the checkpoint ({first_line(err)})") from None
    except Exception as err:  # safetensors raises its own SafetensorError for a truncated file
        if type(err).__module__.split(".")[0].startswith("safetensors"):
            raise ModelError(f"{model}: cannot load the weights ({first_line(err)})") from None
        raise


# ---------------------------------------------------------------- options and graphs
MIN_TEXT = 16
"""Room a prompt needs beside the image tokens: the template, a short question, one answer token."""


def check_max_seq(max_seq: int, n_image: int, config) -> None:
    """Refuse a ``max_seq`` that cannot hold the image tokens and a short prompt, or that runs
    past the positions the checkpoint was trained for."""
    if max_seq < n_image + MIN_TEXT:
        raise ConfigError(f"max_seq: got {max_seq}, but this model's {n_image} image tokens and a prompt need "
                          f"at least {n_image + MIN_TEXT}")
    limit = getattr(config.text_config, "max_position_embeddings", None)
    if limit and max_seq > limit:
        raise ConfigError(f"max_seq: got {max_seq}, beyond the model's max_position_embeddings {limit}")
    window = getattr(config.text_config, "sliding_window", None)
    if window and getattr(config.text_config, "use_sliding_window", True) is not False and max_seq > window:
        raise ConfigError(f"max_seq: got {max_seq}, beyond the model's sliding_window {window} (the graphs attend "
                          "over the whole prompt, so past the window they would differ from transformers)")


def check_options(precision: str, max_seq: int, opset: int, max_graph_layers: int | None,
                  target: str = "portable") -> None:
    if target not in TARGETS:
        raise ConfigError(f"target: got {target!r}, expected one of {', '.join(TARGETS)}")
    if max_graph_layers is not None and (isinstance(max_graph_layers, bool) or not isinstance(max_graph_layers, int)
                                         or max_graph_layers < 1):
        raise ConfigError(f"max_graph_layers: got {max_graph_layers!r}, expected an integer >= 1")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: got {precision!r}, expected one of {', '.join(PRECISIONS)}")
    low, high = BOUNDS["max_seq"]  # the manifest's bound: refused here, not after every graph is exported
    if isinstance(max_seq, bool) or not isinstance(max_seq, int) or not low <= max_seq <= high:
        raise ConfigError(f"max_seq: got {max_seq!r}, expected an integer in {low}..{high}")
    low, high = EXPORT_OPSETS
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ConfigError(f"opset: got {opset!r}, expected {low}..{high}")



def _write_graphs(llava, plan: ExportPlan, folder: Path, quiet: bool, source=None) -> None:
    """Export, check and validate every graph, one at a time, each with only its own weights
    held when ``source`` streams them; raise all mismatches at once."""
    from feather.export import segments as seg_mod

    dtype = next(llava.parameters()).dtype
    jobs = [("vision.onnx", _vision_modules(llava), lambda: _vision_job(llava, dtype, plan.tiles)),
            ("embed.onnx", _embed_modules(llava), lambda: _embed_job(llava))]
    for seg in plan.segments:
        jobs.append((seg.file, _segment_modules(llava, seg),
                     lambda p=seg: _segment_job(llava, plan.geom, p, dtype, seg_mod)))
    failures: list[str] = []
    with Steps(len(jobs), quiet) as steps:
        for name, held, make in jobs:
            with _weights(source, *held):
                module, trace, cases = make()
                path = folder / name
                steps.step(f"export {name}")
                _export_one(module, trace, path, plan.opset)
                onnx_io.check_graph(path, plan.target)
                steps.step(f"validate {name}")
                failures += validate.compare(module, path, cases, plan.precision)
                del module, trace, cases
            gc.collect()
            steps.done()
    validate.raise_failures(failures)


EXPORT_FACTOR = 3.5
"""Peak export memory over the largest graph's weights (tracing holds the folded initializers and
the serialized proto; docs/architecture.md, "Memory")."""


def graph_weight_bytes(llava, plan: ExportPlan, itemsize: int) -> dict[str, int]:
    """Bytes of weights each graph of ``plan`` holds (parameters on the meta device count too)."""
    count = lambda mods: sum(p.numel() for m in mods for p in (m.parameters() if hasattr(m, "parameters")  # noqa: E731
                                                               else [m]))
    sizes = {"vision.onnx": count(_vision_modules(llava)), "embed.onnx": count(_embed_modules(llava))}
    for seg in plan.segments:
        sizes[seg.file] = count(_segment_modules(llava, seg))
    return {k: v * itemsize for k, v in sizes.items()}


def _warn_memory(llava, plan: ExportPlan, streamed: bool, dtype) -> None:
    """One warning line, before anything is written, when the export will likely not fit in the
    memory available now, with the ``--max-graph-layers`` that would (a projection from
    ``EXPORT_FACTOR``; measured at 7B in docs/benchmarks.md)."""
    import sys

    import torch

    from feather.runtime.cpu import available_memory

    available = available_memory()
    if available is None:
        return
    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = graph_weight_bytes(llava, plan, itemsize)
    whole = 0 if streamed else sum(p.numel() for p in llava.parameters()) * itemsize
    name, largest = max(sizes.items(), key=lambda kv: kv[1])
    need = whole + EXPORT_FACTOR * largest
    if need <= available:
        return
    lm = llava.model.language_model
    layer = sum(p.numel() for p in lm.layers[0].parameters()) * itemsize
    tail = sum(p.numel() for m in (lm.norm, llava.lm_head) for p in m.parameters()) * itemsize
    others = max(sizes["vision.onnx"], sizes["embed.onnx"])
    fits = [n for n in range(1, len(lm.layers) + 1)
            if whole + EXPORT_FACTOR * max(n * layer + tail, others) <= available]
    hint = (f"; --max-graph-layers {fits[-1]} would fit" if fits else
            "; no --max-graph-layers fits: free memory, or export on a larger machine")
    print(f"warning: the largest graph ({name}, {largest / 1e9:.1f} GB of weights) needs about {need / 1e9:.1f} GB "
          f"to export, more than the {available / 1e9:.1f} GB available{hint}", file=sys.stderr)


def _weights(source, *modules):
    """``source.weights(...)`` for a streamed checkpoint; nothing to do for one loaded whole."""
    return source.weights(*modules) if source is not None else contextlib.nullcontext()


def _vision_modules(llava) -> list:
    """What the vision graph reads: the tower, the projector and LLaVA-NeXT's ``image_newline``
    (a parameter of the model itself)."""
    model = llava.model
    return [model.vision_tower, model.multi_modal_projector, *model.parameters(recurse=False)]


def _embed_modules(llava) -> list:
    return [llava.model.language_model.embed_tokens]


def _segment_modules(llava, seg: SegmentPlan) -> list:
    """A segment's decoder layers, and the final norm and LM head for the last one."""
    lm = llava.model.language_model
    return [*lm.layers[seg.start:seg.end]] + ([lm.norm, llava.lm_head] if seg.final else [])


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


def _vision_job(llava, dtype, tiles=None):
    import torch

    from feather.export.segments import NextVisionGraph, VisionGraph

    size = llava.config.vision_config.image_size
    batch = 1 if tiles is None else 1 + tiles.grid[0] * tiles.grid[1]  # NeXT: the base image, then the tiles
    g = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(batch, 3, size, size, generator=g).to(dtype)  # noqa: E731
    module = VisionGraph(llava) if tiles is None else NextVisionGraph(llava, tiles)
    return module.eval(), (make(),), [validate.Case("other pixels", (make(),))]


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
