"""What the harness asks a model: an answer and the kept image tokens per stage.

Two implementations: ``ChainModel`` (an export folder through ``feather.runtime.Pipeline``,
torch-free) and ``ReferenceModel`` (a HF checkpoint through the PyTorch reference, any
criterion). A test can pass any object with the same attributes (see ``Model``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from feather import points
from feather.config import PruneConfig
from feather.manifest import Dims, ImageSpec


@dataclass
class Answer:
    """The generated text and ``Result.stages`` (``[{"layer": K, "kept": [indices]}, ...]``)."""

    text: str
    stages: list[dict]


class Model(Protocol):
    """A model the harness can score."""

    config: PruneConfig  # the pruning it runs
    image_spec: ImageSpec  # its resize / crop (the frame boxes are relative to)
    dims: Dims  # layers, widths, image tokens and grid G (for FLOPs and token positions)

    def answer(self, image, prompt: str, max_new_tokens: int) -> Answer: ...


def label(config: PruneConfig) -> str:
    """A run's name in tables and JSON: ``feather K=8+16 R=0.7 s=3``, ``none``."""
    if not config.stages:
        return config.criterion
    parts = [config.criterion, "K=" + "+".join(str(k) for k in config.K)]
    rules = {s.rule for s in config.stages}
    if rules - {"uniform", "drop_all"}:
        parts.append(f"R={config.ratio:g}")
    if rules & {"uniform", "ensemble"}:
        parts.append(f"s={config.stride}")
    if config.mode != "static":
        parts.append(config.mode)
    return " ".join(parts)


class ChainModel:
    """An export folder: the deployed chain, with the criterion it was exported with, at the
    export's own operating point or at ``point`` (``feather.points``: ratio, stride, mode
    within the range the export accepts). ``pipe`` reuses a loaded ``Pipeline``, so several
    points share one set of sessions."""

    def __init__(self, folder: str | os.PathLike | None = None, threads: int | None = None, point=None,
                 pipe=None):
        if pipe is None:
            from feather.runtime import Pipeline

            pipe = Pipeline.load(folder, threads=threads)
        self.pipe = pipe
        m = self.pipe.manifest
        p = m.pruning
        self.point = None if point is None else self.pipe.resolve(point)  # None: the export's own
        at = self.point or points.default(m)
        self.config = PruneConfig(criterion=p.criterion, K=tuple(p.K), ratio=at.ratio, stride=at.stride, mode=at.mode)
        self.image_spec, self.dims = m.image, m.dims

    def answer(self, image, prompt: str, max_new_tokens: int) -> Answer:
        result = self.pipe.generate(image, prompt, max_new_tokens=max_new_tokens, prune=self.point)
        return Answer(result.text, result.stages)


class ReferenceModel:
    """A HF LLaVA checkpoint through the PyTorch reference. ``share`` reuses another
    ``ReferenceModel``'s loaded weights, so a sweep loads the checkpoint once."""

    def __init__(self, model: str, config: PruneConfig, share: ReferenceModel | None = None):
        from feather.hf import checkpoint
        from feather.hf.processor import image_spec_from_processor
        from feather.reference import Reference

        if share is None:
            net, processor = checkpoint.load(model)
        else:
            net, processor = share.ref.model, share.ref.processor
        self.ref = Reference(net, processor, config)
        self.config = config
        self.image_spec = image_spec_from_processor(processor.image_processor)
        self.dims = checkpoint.geometry(net.config)

    def answer(self, image, prompt: str, max_new_tokens: int) -> Answer:
        result = self.ref.generate(image, prompt, max_new_tokens)
        return Answer(result.text, result.stages)


def is_export(target: str | os.PathLike) -> bool:
    """True when ``target`` is an export folder (holds feather.json)."""
    from feather.jsoncodec import MANIFEST_NAME

    return (Path(target) / MANIFEST_NAME).is_file()


def export_points(folder: str | os.PathLike, ratios=None, strides=None) -> list[points.Point]:
    """The points ``ratios`` x ``strides`` (None: the export's own) of the export ``folder``,
    each checked against the range it accepts (``feather.points.resolve``: one ``InputError``
    line naming the range). Reads feather.json only, so a bad point is refused before any work."""
    from feather.errors import InputError
    from feather.manifest import load_manifest

    manifest = load_manifest(folder, verify=False)
    if not manifest.pruning.stages:
        raise InputError(f"{folder}: this export prunes nothing (criterion {manifest.pruning.criterion}); "
                         "it has no operating point to choose")
    asked = points.grid_points(ratios, strides, points.default(manifest))
    chosen = [points.resolve(manifest, p, where="point") for p in asked]
    names = [label(PruneConfig(criterion=manifest.pruning.criterion, K=tuple(manifest.pruning.K), ratio=p.ratio,
                               stride=p.stride, mode=p.mode)) for p in chosen]
    for i, name in enumerate(names):
        if name in names[:i]:
            j = names.index(name)
            same = "is named twice" if chosen[i] == chosen[j] else \
                f"runs the same selection as {chosen[j].label()} (criterion {manifest.pruning.criterion} " \
                "ignores what differs)"
            raise InputError(f"points: {chosen[i].label()} {same}; drop one")
    return chosen


def open_models(target: str, configs: list[PruneConfig] | None, threads: int | None = None,
                at: list[points.Point] | None = None) -> list[Model]:
    """The models to score: the export folder's chain (``configs`` must be None), at its own
    point or once per point of ``at`` (one loaded chain shared), or one reference per config
    on the checkpoint ``target`` (HF id, folder, or ``tiny``), sharing one copy of the weights."""
    from feather.errors import ConfigError

    if is_export(target):
        if configs is not None:
            raise ConfigError(
                f"{target}: an export folder runs the criterion it was exported with; "
                "--criterion, --K, --ratio, --stride, --mode and --sweep need a checkpoint")
        if not at:
            return [ChainModel(target, threads)]
        first = ChainModel(target, threads, at[0])
        return [first] + [ChainModel(point=p, pipe=first.pipe) for p in at[1:]]
    if at:
        raise ConfigError(f"{target}: --points and --strides choose operating points of an export folder; "
                          "for a checkpoint use --sweep")
    configs = configs or [PruneConfig()]
    models: list[Model] = []
    for config in configs:
        models.append(ReferenceModel(target, config, share=models[0] if models else None))
    return models
