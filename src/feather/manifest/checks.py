"""What types cannot say about a manifest, checked at load (and before every save).

Every refusal is one line naming the JSON path, what was expected and what was found. The
rules: numbers lie inside bounds that no real LLaVA exceeds (so a hostile feather.json cannot
make the runtime allocate terabytes); preprocessing numbers are finite; axis ranges are
ordered; the pruning stages agree with their rules (``feather.rules``: rope flag and keep
count) and with the segment cuts (a stage at every cut, a score output before every stage
that ranks by attention); every graph names the tensors its role needs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from feather import layout, rules
from feather.jsoncodec import fail, from_json, join_path
from feather.manifest.graphs import ROLES, SEGMENT
from feather.manifest.names import BAD_NAME, plain_name
from feather.manifest.schema import (
    BOUNDS,
    DTYPES,
    MAX_IMAGE_SIDE,
    PRECISIONS,
    SCHEMA_VERSION,
    TARGETS,
    GraphSpec,
    KVNames,
    Manifest,
)


def parse(data: Any) -> Manifest:
    """Decode and check a parsed ``feather.json`` (JSON types); raises ``ManifestError``."""
    # before decoding: another schema may have keys this version calls unknown
    if type(data) is dict and type(data.get("schema_version")) is int:
        check_version(data["schema_version"])
    manifest = from_json(Manifest, data)
    check_manifest(manifest)
    return manifest


def check_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        fail("schema_version",
             f"{version} is newer than this feather-vlm reads ({SCHEMA_VERSION}); upgrade feather-vlm")
    if version == 1:
        fail("schema_version", "1 was written by feather-vlm 0.1 (KV caches concatenated in the graphs); "
             "re-export the checkpoint with this feather-vlm (feather-export)")
    if version != SCHEMA_VERSION:
        fail("schema_version", f"{version} is not a valid version (this feather-vlm reads {SCHEMA_VERSION})")


def check_manifest(m: Manifest) -> None:
    """Every check below, in order; the first violation raises ``ManifestError``."""
    check_version(m.schema_version)
    _choice("precision", m.precision, PRECISIONS)
    _choice("target", m.target, TARGETS)
    _choice("pruning.mode", m.pruning.mode, rules.MODES)
    _bounds(m)
    _image(m)
    _prompt(m)
    _segments(m.segments, m.dims.num_layers)
    for path, graph in m.graphs_with_paths():
        _graph(path, graph, m.max_seq)
    _stages(m)
    _points(m)
    _name("tokenizer", m.tokenizer)
    for name in m.files:
        _name(join_path("files", name), name)
    _engines(m)


def _choice(path: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        fail(path, f"{value!r} is not one of {', '.join(allowed)}")


def _length(path: str, values: list, n: int, what: str) -> None:
    if len(values) != n:
        fail(path, f"expected {what}, got {len(values)} values")


def _within(path: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        fail(path, f"{value} is outside [{lo}, {hi}]")


def _get(m: Manifest, path: str):
    obj = m
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _bounds(m: Manifest) -> None:
    for path, (lo, hi) in BOUNDS.items():
        _within(path, _get(m, path), lo, hi)
    d = m.dims
    if d.heads % d.kv_heads:
        fail("dims.kv_heads", f"{d.kv_heads} does not divide dims.heads = {d.heads}")
    if m.tiles is None and d.grid * d.grid != d.n_image:
        fail("dims.n_image", f"{d.n_image} is not dims.grid^2 = {d.grid * d.grid}")
    if m.tiles is not None:
        _tiles(m)
    if not 0.0 < m.pruning.ratio < 1.0:
        fail("pruning.ratio", f"{m.pruning.ratio} is not a fraction strictly between 0 and 1")
    for key in ("logits_abs", "hidden_abs"):
        value = getattr(m.tolerance, key)
        if not (math.isfinite(value) and value >= 0):
            fail(f"tolerance.{key}", f"{value} is not a finite number >= 0")


def _tiles(m: Manifest) -> None:
    """A NeXT block: base grid^2 features + features[0] lines of features[1] and a newline."""
    t, d = m.tiles, m.dims
    for key in ("frame", "resolution", "resized", "grid", "features"):
        values = getattr(t, key)
        _length(f"tiles.{key}", values, 2, "[rows, cols]" if key in ("grid", "features") else "[height, width]")
        for i, v in enumerate(values):
            _within(f"tiles.{key}[{i}]", v, 1, MAX_IMAGE_SIDE)
    side = m.image.size[0]
    for i in range(2):  # the tiles cut the padded resolution exactly; the frame and features fit in it
        if t.resolution[i] != t.grid[i] * side:
            fail(f"tiles.resolution[{i}]", f"{t.resolution[i]}, expected tiles.grid[{i}] * image.size = "
                 f"{t.grid[i] * side}")
        if t.resized[i] > t.resolution[i]:
            fail(f"tiles.resized[{i}]", f"{t.resized[i]} exceeds tiles.resolution[{i}] = {t.resolution[i]}")
        if t.features[i] > t.grid[i] * d.grid:
            fail(f"tiles.features[{i}]", f"{t.features[i]} exceeds tiles.grid[{i}] * dims.grid = {t.grid[i] * d.grid}")
    rows, cols = t.features
    n = d.grid * d.grid + rows * (cols + 1)
    if d.n_image != n:
        fail("dims.n_image", f"{d.n_image}, expected dims.grid^2 + rows * (cols + 1) = {n} from tiles.features")


def _image(m: Manifest) -> None:
    img = m.image
    _length("image.size", img.size, 2, "[height, width]")
    for i, side in enumerate(img.size):
        _within(f"image.size[{i}]", side, 1, MAX_IMAGE_SIDE)
    if img.resize_shortest_edge is not None:
        _within("image.resize_shortest_edge", img.resize_shortest_edge, 1, MAX_IMAGE_SIDE)
    if not (math.isfinite(img.rescale_factor) and img.rescale_factor > 0):
        fail("image.rescale_factor", f"{img.rescale_factor} is not a finite number > 0")
    for key in ("mean", "std"):
        values = getattr(img, key)
        _length(f"image.{key}", values, 3, "one value per RGB channel")
        for i, v in enumerate(values):
            if not math.isfinite(v) or (key == "std" and v <= 0):
                fail(f"image.{key}[{i}]", f"{v} is not a finite number{' > 0' if key == 'std' else ''}")


def _prompt(m: Manifest) -> None:
    prompt = m.prompt
    for needle in ("{prompt}", prompt.image_token):
        if not needle or needle not in prompt.template:
            fail("prompt.template", f"must contain {needle!r}")
    if prompt.n_image_tokens != m.dims.n_image:
        fail("prompt.n_image_tokens", f"{prompt.n_image_tokens}, expected dims.n_image = {m.dims.n_image}")
    if len(prompt.template) > 65536:
        fail("prompt.template", f"{len(prompt.template)} characters, expected at most 65536")


def _segments(segments: list[GraphSpec], num_layers: int) -> None:
    if not segments:
        fail("segments", "must list at least one segment")
    start = 0
    for i, seg in enumerate(segments):
        path = f"segments[{i}].layers"
        if seg.layers is None:
            fail(path, "missing (every segment needs its [start, end) layer range)")
        _length(path, seg.layers, 2, "[start, end]")
        lo, hi = seg.layers
        if lo != start:
            fail(path, f"starts at {lo}, expected {start} (segments must cover the layers contiguously)")
        if hi <= lo:
            fail(path, f"[{lo}, {hi}) holds no layer")
        if seg.kv is None:
            fail(f"segments[{i}].kv", "missing (every segment needs its KV name templates)")
        start = hi
    if start != num_layers:
        fail(f"segments[{len(segments) - 1}].layers", f"ends at {start}, expected dims.num_layers = {num_layers}")


def _graph(path: str, graph: GraphSpec, max_seq: int) -> None:
    _name(f"{path}.file", graph.file)
    if graph.decode_file is not None:
        _name(f"{path}.decode_file", graph.decode_file)
    _choice(f"{path}.dtype", graph.dtype, DTYPES)
    kind = SEGMENT if path.startswith("segments") else path
    allowed_in, allowed_out = ROLES[kind]
    for where, roles, allowed in (("inputs", graph.inputs, allowed_in), ("outputs", graph.outputs, allowed_out)):
        for role in roles:
            if role not in allowed:
                fail(f"{path}.{where}.{role}", f"unknown role (expected one of {', '.join(sorted(allowed))})")
    for role in sorted(allowed_in - set(graph.inputs)):
        fail(f"{path}.inputs.{role}", "missing")
    if kind == SEGMENT and len({"hidden", "logits"} & set(graph.outputs)) != 1:
        fail(f"{path}.outputs", "expected exactly one of 'hidden' (inner segment) or 'logits' (last segment)")
    if kind != SEGMENT and set(allowed_out) - set(graph.outputs):
        fail(f"{path}.outputs.{sorted(set(allowed_out) - set(graph.outputs))[0]}", "missing")
    if graph.kv is not None:
        for f in dataclasses.fields(KVNames):
            template = getattr(graph.kv, f.name)
            if template.count("%d") != 1 or template.count("%") != 1:
                fail(f"{path}.kv.{f.name}", f"{template!r} must contain exactly one %d (the layer index)")
    for axis, r in graph.axes.items():
        where = f"{path}.axes.{axis}"
        if not 0 <= r.min <= r.opt <= r.max:
            fail(where, f"min {r.min}, opt {r.opt}, max {r.max}: expected 0 <= min <= opt <= max")
        if r.max > max_seq:
            fail(where, f"max {r.max} exceeds max_seq {max_seq}")


def _stages(m: Manifest) -> None:
    p, d = m.pruning, m.dims
    if [s.layer for s in p.stages] != list(p.K):
        fail("pruning.stages", f"layers {[s.layer for s in p.stages]} do not match pruning.K = {list(p.K)}")
    params = rules.Params.from_ratio(p.ratio, p.stride, p.mode)
    starts = {seg.layers[0]: i for i, seg in enumerate(m.segments)}
    at = {}
    for i, stage in enumerate(p.stages):
        where = f"pruning.stages[{i}]"
        if stage.rule not in rules.RULES:
            fail(f"{where}.rule", f"{stage.rule!r} is not one of {', '.join(rules.RULES)}")
    lay = layout.for_manifest(m)  # square, or NeXT's tiles (feather.layout): the exporter's counts
    counts = lay.static_counts([rules.RULES[s.rule] for s in p.stages], params)
    for i, stage in enumerate(p.stages):
        where = f"pruning.stages[{i}]"
        rule = rules.RULES[stage.rule]
        if stage.rope != rule.rope:
            fail(f"{where}.rope", f"{stage.rope}, but rule {rule.name} {'applies' if rule.rope else 'has no'} RoPE")
        n = counts[i]
        if stage.keep != n:
            fail(f"{where}.keep", f"{stage.keep}, but rule {rule.name} keeps {n} here")
        if stage.layer not in starts:
            fail(f"{where}.layer", f"{stage.layer} is not where a segment starts (segments start at {sorted(starts)})")
        if rule.needs_score and stage.layer == 0:
            fail(f"{where}.layer", f"0, but rule {rule.name} ranks by layer K-1's attention (K >= 1)")
        at[stage.layer] = (rule, n + lay.newlines)  # a segment holds the kept tokens and the newlines
    n_in = d.n_image
    for i, seg in enumerate(m.segments):
        start, end = seg.layers
        if start in at:
            n_in = at[start][1]
        wants = end in at and at[end][0].needs_score
        if wants != ("score" in seg.outputs):
            what = "needs a 'score' output (the next stage ranks by attention)" if wants else "has a 'score' output"
            fail(f"segments[{i}].outputs", f"{what}{'' if wants else ' but no stage at its end ranks by it'}")
        if seg.n_image_in is not None and seg.n_image_in != n_in:
            fail(f"segments[{i}].n_image_in", f"{seg.n_image_in}, expected {n_in} from the stages before it")


def _points(m: Manifest) -> None:
    """The operating-point range (``feather.points``): ordered ends inside the fields' own bounds,
    holding the export's point, and each stage's ``keep_range`` as the rules count it."""
    p, r = m.pruning, m.pruning.points
    if r is None:
        for i, stage in enumerate(p.stages):
            if stage.keep_range is not None:
                fail(f"pruning.stages[{i}].keep_range",
                     "is given, but pruning.points (the range it counts over) is not")
        return
    _length("pruning.points.ratio", r.ratio, 2, "[min, max]")
    _length("pruning.points.stride", r.stride, 2, "[min, max]")
    if not 0.0 < r.ratio[0] <= p.ratio <= r.ratio[1] < 1.0:
        fail("pruning.points.ratio", f"{r.ratio}: expected 0 < min <= pruning.ratio ({p.ratio}) <= max < 1")
    lo, hi = BOUNDS["pruning.stride"]
    if not lo <= r.stride[0] <= p.stride <= r.stride[1] <= hi:
        fail("pruning.points.stride", f"{r.stride}: expected {lo} <= min <= pruning.stride ({p.stride}) <= max <= {hi}")
    for j, mode in enumerate(r.modes):
        _choice(f"pruning.points.modes[{j}]", mode, rules.MODES)
    if p.mode not in r.modes or len(set(r.modes)) != len(r.modes):
        fail("pruning.points.modes", f"{r.modes}: expected distinct modes including pruning.mode ({p.mode!r})")
    from feather import points

    ranges = points.keep_ranges(lambda s: layout.for_tiles(m.dims.grid, m.tiles, s),
                                [rules.RULES[s.rule] for s in p.stages], tuple(r.ratio), tuple(r.stride))
    for i, (stage, want) in enumerate(zip(p.stages, ranges)):
        if stage.keep_range is None or list(stage.keep_range) != list(want):
            fail(f"pruning.stages[{i}].keep_range", f"{stage.keep_range}, but rule {stage.rule} keeps "
                 f"{list(want)} over pruning.points")


ENGINE_FOLDER = "engines"
MAX_PROFILE_DIM = 1 << 22
"""Where feather-build writes engines (exempt from ``files``; each engine carries its sha256)."""


def _engines(m: Manifest) -> None:
    """Each engine: a plain name under engines/, built from a graph this manifest names, with
    sha256 digests and profiles (none for a static graph) whose [min, opt, max] shapes are
    ordered and of one rank."""
    graphs = {name for _, name in m.graph_files()}
    for i, e in enumerate(m.engines):
        where = f"engines[{i}]"
        _name(f"{where}.file", e.file)
        if not e.file.startswith(ENGINE_FOLDER + "/"):
            fail(f"{where}.file", f"{e.file!r} is not under {ENGINE_FOLDER}/")
        if e.graph not in graphs:
            fail(f"{where}.graph", f"{e.graph!r} is not a graph file of this export")
        for key in ("sha256", "graph_sha256"):
            digest = getattr(e, key)
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                fail(f"{where}.{key}", "expected 64 lowercase hex digits")
        for j, profile in enumerate(e.profiles):
            for tensor, shapes in profile.shapes.items():
                _profile_shapes(join_path(f"{where}.profiles[{j}].shapes", tensor), shapes)


def _profile_shapes(path: str, shapes: list[list[int]]) -> None:
    _length(path, shapes, 3, "[min, opt, max] shapes")
    if len({len(s) for s in shapes}) != 1:
        fail(path, "min, opt and max shapes differ in rank")
    for lo, opt, hi in zip(*shapes):
        if not 0 <= lo <= opt <= hi <= MAX_PROFILE_DIM:
            fail(path, f"dims {lo}, {opt}, {hi}: expected 0 <= min <= opt <= max <= {MAX_PROFILE_DIM}")


def _name(path: str, name: str) -> None:
    if not plain_name(name):
        fail(path, f"{name!r} {BAD_NAME}")
