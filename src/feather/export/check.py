"""Re-check an export folder against its checkpoint, after the fact.

``feather-export`` validates every graph right after writing it; ``validate_folder`` runs
the same comparison later on a folder that may have been copied, edited or quantized:
each graph named by ``feather.json`` is compared in ONNX Runtime with the PyTorch module
rebuilt from the source checkpoint, on the same cases the export used.
"""

from __future__ import annotations

from pathlib import Path

from feather.errors import ConfigError, ManifestError, ModelError
from feather.export import api, validate
from feather.export.chain import SegmentPlan
from feather.hf import checkpoint as model_mod
from feather.manifest import GraphSpec, Manifest, graphs, load_manifest


def validate_folder(folder: str | Path, model: str | None = None,
                    precision_tolerance: float | str | None = None) -> None:
    """Compare every graph of the export ``folder`` with PyTorch; raise once for all mismatches.

    This is how a user re-checks an export folder against its checkpoint (for instance
    after copying it to a device, or after editing a graph by hand).

    ``model``: the checkpoint to compare with (HF id, local folder or ``tiny``); default:
    the manifest's ``source.model``. ``precision_tolerance``: the allowed max abs diff
    (relative to ``max(1, max |reference|)``) as a number, or a precision name whose
    default tolerance applies (``fp32``, ``fp16``); default: the export's precision.

    File hashes are not checked here (``load_manifest(folder, verify=True)`` does that),
    so that a changed graph is reported by how far its outputs moved. Raises
    ``ManifestError`` for an unreadable manifest or a missing graph, ``ModelError`` when
    the checkpoint cannot be loaded or does not match the manifest's dims, and
    ``ValidationError`` naming every graph output beyond tolerance.
    """
    folder = Path(folder)
    manifest = load_manifest(folder, verify=False)
    tol = _tolerance(manifest.precision, precision_tolerance)
    llava, geom, source = _load_checkpoint(manifest, model)
    dtype = next(llava.parameters()).dtype
    failures: list[str] = []
    for spec, held, make in _jobs(manifest, llava, geom, dtype):
        path = _graph_path(manifest, folder, spec)
        with api._weights(source, *held):  # streamed per graph, as the export does
            module, _trace, cases = make()
            failures += validate.compare(module, path, cases, manifest.precision, tol)
    validate.raise_failures(failures)


def _tolerance(precision: str, given: float | str | None) -> float:
    """The max abs diff allowed: a precision's default, or an explicit number."""
    given = precision if given is None else given
    if isinstance(given, str):
        if given not in validate.TOLERANCE:
            raise ConfigError(f"precision_tolerance: got {given!r}, expected one of {', '.join(validate.TOLERANCE)}")
        return validate.TOLERANCE[given]
    if isinstance(given, bool) or not isinstance(given, (int, float)) or not given > 0:
        raise ConfigError(f"precision_tolerance: got {given!r}, expected a number > 0 or a precision name")
    return float(given)


def _load_checkpoint(manifest: Manifest, model: str | None):
    """``(model, geometry, source)``: the source checkpoint in the export's precision, streamed per
    graph where it can be (``api._load``); its geometry must equal ``dims``."""
    name = model or manifest.source.model
    llava, _processor, source = api._load(name, model_mod.torch_dtype(manifest.precision))
    geom = model_mod.geometry(llava.config)
    for key, want in vars(manifest.dims).items():
        got = getattr(geom, key)
        if got != want:
            raise ModelError(f"{name}: {key} is {got}, but feather.json dims.{key} is {want}; "
                             "pass the checkpoint this folder was exported from")
    return llava, geom, source


def _jobs(manifest: Manifest, llava, geom, dtype) -> list:
    """(graph spec, the modules whose weights it needs, job) in run order; each job returns
    (module, trace args, cases) exactly as the export built them, so the cases (and their
    seeds) are the export's own."""
    from feather.export import segments as seg_mod

    jobs = [(manifest.vision, api._vision_modules(llava), lambda: api._vision_job(llava, dtype)),
            (manifest.embed, api._embed_modules(llava), lambda: api._embed_job(llava))]
    for i, spec in enumerate(manifest.segments):
        plan = _plan(manifest, i, spec)
        jobs.append((spec, api._segment_modules(llava, plan),
                     lambda p=plan: api._segment_job(llava, geom, p, dtype, seg_mod)))
    return jobs


def _plan(manifest: Manifest, index: int, spec: GraphSpec) -> SegmentPlan:
    """The segment's plan from the manifest: a score output means the stage at ``end``
    ranks by attention, with that stage's RoPE flag."""
    start, end = spec.layers
    score_rope = None
    if graphs.SCORE in spec.outputs:
        stages = [s for s in manifest.pruning.stages if s.layer == end]
        if not stages:
            raise ManifestError(f"feather.json: segments[{index}].outputs.score: no pruning stage at layer {end}")
        score_rope = stages[0].rope
    final = end == manifest.dims.num_layers
    return SegmentPlan(index, start, end, None, score_rope, final, spec.n_image_in)


def _graph_path(manifest: Manifest, folder: Path, spec: GraphSpec) -> Path:
    path = manifest.path(folder, spec.file)
    if not path.is_file():
        raise ManifestError(f"{path}: missing (named by feather.json)")
    return path
