"""feather.json for an export: everything the runtime needs, nothing it must recompute."""

from __future__ import annotations

import os
from pathlib import Path

from feather import __version__
from feather.export.chain import ExportPlan, SegmentPlan
from feather.hf.processor import image_spec_from_processor, prompt_spec_from_processor
from feather.manifest import (
    PRECISION_DTYPE,
    SCHEMA_VERSION,
    AxisRange,
    GraphSpec,
    Manifest,
    PointRange,
    PruningSpec,
    Source,
    StageSpec,
    TokenSpec,
    Tolerance,
    graphs,
    save_manifest,
)
from feather.rules import MODES

TOKENIZER_FILE = "tokenizer.json"
# fp16 logits: 0.25, about twice the worst end-to-end difference measured on the test checkpoints
# (0.118, Qwen2 text; docs/precision.md): an fp16 residual stream of |h| ~ 150-200 is rounded to 0.06-0.125
TOLERANCES = {"fp32": Tolerance(logits_abs=1e-3, hidden_abs=1e-3), "fp16": Tolerance(logits_abs=0.25, hidden_abs=5e-2)}
"""Per export precision (``feather.manifest.PRECISIONS``): what the manifest records the graphs were validated to."""
OPT_SEQ = 640  # the TensorRT profile's opt length: a LLaVA prompt (576 image tokens + text)


def write(folder: Path, plan: ExportPlan, llava, processor) -> Path:
    """Save the tokenizer and feather.json (with a sha256 of every file) into ``folder``."""
    processor.tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    image_id = llava.config.image_token_id
    dtype = PRECISION_DTYPE[plan.precision]
    seq = AxisRange(1, min(OPT_SEQ, plan.max_seq), plan.max_seq)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        producer=f"feather-vlm {__version__}",
        target=plan.target,
        source=_source(plan.model, llava),
        dims=plan.geom,
        image=image_spec_from_processor(processor.image_processor, plan.tiles is not None),
        prompt=prompt_spec_from_processor(processor, plan.geom.n_image, image_id),
        tokens=_tokens(llava, processor),
        tokenizer=TOKENIZER_FILE,
        pruning=_pruning(plan),
        vision=graphs.vision_spec("vision.onnx", dtype),
        embed=graphs.embed_spec("embed.onnx", seq, dtype),
        segments=[_segment(p, seq, dtype) for p in plan.segments],
        precision=plan.precision,
        opset=plan.opset,
        max_seq=plan.max_seq,
        tolerance=TOLERANCES[plan.precision],
        tiles=plan.tiles,
    )
    return save_manifest(manifest, folder)


def _source(model: str, llava) -> Source:
    name = model if model == "tiny" or not os.path.exists(model) else str(Path(model).resolve())
    return Source(model=name, revision=getattr(llava.config, "_commit_hash", None))


def _tokens(llava, processor) -> TokenSpec:
    eos = llava.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [int(eos)]
    tok = processor.tokenizer
    return TokenSpec(eos=[int(e) for e in eos], pad=tok.pad_token_id, bos=tok.bos_token_id)


def _pruning(plan: ExportPlan) -> PruningSpec:
    """The stages with the plan's keep counts (``chain.plan_segments``: the layout asked, newlines not counted)."""
    config = plan.config
    ranges = list(plan.keep_ranges) or [None] * len(plan.keep)
    stages = [StageSpec(layer=s.layer, rule=s.rule, rope=s.rope, keep=n, keep_range=None if r is None else list(r))
              for s, n, r in zip(config.stages, plan.keep, ranges)]
    d = config.to_dict()
    points = None
    if plan.points is not None:
        (rlo, rhi), (slo, shi) = plan.points
        points = PointRange(ratio=[rlo, rhi], stride=[slo, shi], modes=list(MODES))
    return PruningSpec(criterion=d["criterion"], K=d["K"], ratio=float(d["ratio"]), stride=d["stride"],
                       mode=d["mode"], stages=stages, points=points)


def _segment(plan: SegmentPlan, seq: AxisRange, dtype: str) -> GraphSpec:
    return graphs.segment_spec(plan.file, (plan.start, plan.end), plan.final, plan.score_rope is not None, seq, dtype,
                               plan.n_image_in)
