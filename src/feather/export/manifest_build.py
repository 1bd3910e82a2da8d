"""feather.json for an export: everything the runtime needs, nothing it must recompute."""

from __future__ import annotations

import os
from pathlib import Path

from feather import __version__
from feather.config import PruneConfig
from feather.export.chain import SegmentPlan
from feather.export.segments import KV_NAMES
from feather.hf.processor import image_spec_from_processor, prompt_spec_from_processor
from feather.manifest import (
    PRECISION_DTYPE,
    SCHEMA_VERSION,
    SEGMENT_INPUTS,
    AxisRange,
    GraphSpec,
    KVNames,
    Manifest,
    PruningSpec,
    Source,
    StageSpec,
    TokenSpec,
    Tolerance,
    save_manifest,
)

TOKENIZER_FILE = "tokenizer.json"
TOLERANCES = {"fp32": Tolerance(logits_abs=1e-3, hidden_abs=1e-3), "fp16": Tolerance(logits_abs=5e-2, hidden_abs=5e-2)}
"""Per export precision (``feather.manifest.PRECISIONS``): what the manifest records the graphs were validated to."""
OPT_SEQ = 640  # the TensorRT profile's opt length: a LLaVA prompt (576 image tokens + text)


def write(folder: Path, model: str, llava, processor, config: PruneConfig, geom, plans: list[SegmentPlan],
          precision: str, opset: int, max_seq: int, target: str = "portable", tiles=None) -> Path:
    """Save the tokenizer and feather.json (with a sha256 of every file) into ``folder``."""
    processor.tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    image_id = llava.config.image_token_id
    dtype = PRECISION_DTYPE[precision]
    seq = AxisRange(1, min(OPT_SEQ, max_seq), max_seq)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        producer=f"feather-vlm {__version__}",
        target=target,
        source=_source(model, llava),
        dims=geom,
        image=image_spec_from_processor(processor.image_processor, tiles is not None),
        prompt=prompt_spec_from_processor(processor, geom.n_image, image_id),
        tokens=_tokens(llava, processor),
        tokenizer=TOKENIZER_FILE,
        pruning=_pruning(config, plans, geom, tiles),
        vision=GraphSpec(file="vision.onnx", inputs={"pixel_values": "pixel_values"},
                         outputs={"image_features": "image_features"}, dtype=dtype),
        embed=GraphSpec(file="embed.onnx", inputs={"input_ids": "input_ids"}, outputs={"embeds": "embeds"},
                        axes={"seq": seq}, dtype=dtype),
        segments=[_segment(p, seq, dtype) for p in plans],
        precision=precision,
        opset=opset,
        max_seq=max_seq,
        tolerance=TOLERANCES[precision],
        tiles=tiles,
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


def _pruning(config: PruneConfig, plans: list[SegmentPlan], geom, tiles=None) -> PruningSpec:
    counts = config.keep_counts(geom.n_image, geom.grid)
    if tiles is not None:  # NeXT: the rules on the tiled layout (feather.layout), newlines not counted
        from feather import layout

        lay = layout.tiled(geom.grid, tiles.features[0], tiles.features[1], config.stride)
        counts = lay.static_counts([s.impl for s in config.stages], config.params)
    stages = [StageSpec(layer=s.layer, rule=s.rule, rope=s.rope, keep=n) for s, n in zip(config.stages, counts)]
    d = config.to_dict()
    return PruningSpec(criterion=d["criterion"], K=d["K"], ratio=float(d["ratio"]), stride=d["stride"],
                       mode=d["mode"], stages=stages)


def _segment(plan: SegmentPlan, seq: AxisRange, dtype: str) -> GraphSpec:
    outputs = {"logits": "logits"} if plan.final else {"hidden": "hidden_out"}
    if plan.score_rope is not None:
        outputs["score"] = "score"
    return GraphSpec(
        file=plan.file,
        inputs={role: role for role in SEGMENT_INPUTS},  # segments.DecoderSegment names its inputs after their roles
        outputs=outputs,
        axes={"seq": seq, "cache": seq},  # cache: the KV buffer's capacity (>= 1: prefill binds a dummy row)
        layers=[plan.start, plan.end],
        kv=KVNames(**KV_NAMES),
        n_image_in=plan.n_image_in,
        dtype=dtype,
    )
