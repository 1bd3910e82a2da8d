"""feather-build: one TensorRT engine per graph of an export folder, recorded in feather.json.

    plan = engines.plan("feather-export")           # no TensorRT needed: what --dry-run prints
    print("\\n".join(plan.lines()))
    engines.build("feather-export", precision="as-exported", workspace_gb=4)

The plan comes from the manifest alone (tensor names, KV templates, dims, axis ranges):

- decoder segments get two optimization profiles: ``prefill`` (S in [seq.min, seq.max],
  the one-row dummy cache a prefill binds) and ``decode`` (S = 1, the cache buffer's
  capacity in [cache.min, cache.max]). A segment with a ``decode_file`` gets its prefill
  profile on ``file`` and its decode profile on ``decode_file``, since the runtime runs each
  graph in one phase only;
- the embed graph gets one profile over ``seq`` (prefill and decode); the vision graph is static.

Operating points (docs/operating-points.md): a call may choose any ratio / stride / mode the
export accepts (``pruning.points``), so a segment holds anywhere from its stage's fewest to its
most kept image tokens (``pruning.stages[i].keep_range``) plus the prompt's text. Each
segment's profiles span min ``seq.min`` (1) to max ``seq.max`` (the export's max_seq, which
holds every image token and the longest prompt), so they cover that whole range with no rebuild;
their ``opt`` (the shape TensorRT tunes for) is the export's own point: the segment's image
tokens there (``ImageTokens.point``) plus ``OPT_TEXT`` text tokens. ``--dry-run`` prints, per
segment, the image-token range it must serve beside its profiles.

Precision (``--precision``): ``as-exported`` builds a strongly typed network, so the ONNX
dtypes decide (an fp16 export keeps RMSNorm's reductions and the softmax in fp32 in the
graph itself); that works on TensorRT 10.3 (Jetson) and 11.x. ``fp16`` / ``bf16`` over an
fp32 graph use TensorRT 10's weak typing (builder flag, with reductions, unary ops, softmax
and what they feed pinned to fp32); TensorRT 11 removed those flags, so there the answer
is an fp16 export. ``precision_mode`` is the one place that branches on the version.

Memory (Jetson shares DRAM between CPU and GPU): graphs are built one at a time and every
builder object is dropped (and ``gc.collect()``-ed) before the next; the workspace is capped
with ``--workspace-gb``. Engines go to ``engines/`` (exempt from ``files``; each engine's
sha256 is recorded and checked before it is deserialized), through ``feather.folder.staged_files``
(a work folder ``engines/.engines.partial-<pid>-<random>``; the engines are moved in and the
manifest rewritten, atomically, only once all are built, with SIGINT / SIGTERM / SIGHUP held;
a failure or a signal before that leaves engines/ and feather.json as they were).

None of the TensorRT calls here have run in this project's CI (TensorRT cannot be installed
there); tests drive them through a fake ``tensorrt`` module (tests/trt/fake.py).
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from feather import layout, points
from feather.errors import BackendError, ConfigError
from feather.folder import staged_files, write_atomic
from feather.manifest import GraphSpec, Manifest, load_manifest, save_manifest, sha256_file
from feather.manifest.checks import ENGINE_FOLDER
from feather.manifest.graphs import CACHE, HIDDEN, SEQ, role_shapes
from feather.manifest.schema import EngineProfile, EngineSpec

BUILD_MODES = ("as-exported", "fp16", "bf16")
"""``feather-build --precision``: how an engine is built (the export precisions are another table,
``feather.manifest.PRECISIONS``)."""
MAX_WORKSPACE_GB = 1024
OPT_TEXT = 64
"""Text tokens of a typical prompt (the template and a question): a segment's profile ``opt`` is
its image tokens at the export's point plus these (the exporter's seq opt, 640, is LLaVA's 576
image tokens plus these)."""
Shape = tuple[int, ...]


@dataclass(frozen=True)
class ImageTokens:
    """The image tokens a segment holds (kept ones and never-pruned newlines): ``point`` at the
    export's own operating point, ``fewest`` .. ``most`` over the points it accepts (static mode,
    from ``pruning.stages[i].keep_range``; paper mode keeps at most the static count)."""

    point: int
    fewest: int
    most: int


def image_tokens(m: Manifest) -> dict[str, ImageTokens]:
    """Per segment graph file (and its ``decode_file``), the image tokens it must serve."""
    lay = layout.for_manifest(m)
    n = lo = hi = lay.n
    stage_at = {s.layer: s for s in m.pruning.stages}
    out = {}
    for seg in m.segments:
        stage = stage_at.get(seg.layers[0])
        if stage is not None:
            fewest, most = stage.keep_range or (stage.keep, stage.keep)  # no range recorded: only its own point
            n, lo, hi = stage.keep + lay.newlines, fewest + lay.newlines, most + lay.newlines
        tokens = ImageTokens(seg.n_image_in if seg.n_image_in is not None else n, lo, hi)
        out[seg.file] = tokens
        if seg.decode_file:
            out[seg.decode_file] = tokens
    return out


@dataclass(frozen=True)
class Profile:
    """One optimization profile: ``shapes[tensor] = (min, opt, max)``."""

    name: str
    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def record(self) -> EngineProfile:
        return EngineProfile(self.name, {k: [list(s) for s in v] for k, v in self.shapes.items()})


@dataclass(frozen=True)
class EnginePlan:
    """What one engine is built from and with."""

    graph: str  # graph file, relative to the export folder
    engine: str  # engines/<stem>.engine
    dtype: str  # the graph's float dtype
    method: str  # float, or how its weights are quantized (QDQ)
    precision: str  # as-exported, fp16 or bf16 (as asked)
    profiles: tuple[Profile, ...]
    image_tokens: ImageTokens | None = None  # a segment's: what its profiles must cover

    def describe_precision(self) -> str:
        if strongly_typed(self.dtype, self.precision):
            return f"strongly typed ({self.dtype} graph{'' if self.method == 'float' else ', ' + self.method})"
        return (f"{self.precision} builder flag over a {self.dtype} graph, reductions and softmax pinned to fp32 "
                "(TensorRT 10 only; TensorRT 11 needs an fp16 export)")


@dataclass(frozen=True)
class BuildPlan:
    folder: Path
    precision: str
    engines: tuple[EnginePlan, ...]
    points: str = ""  # the export's own operating point and the range it accepts, in words

    def lines(self) -> list[str]:
        """The plan as text: per engine its graph, precision and profiles (min / opt / max); per
        segment the image tokens it must serve over the operating points the export accepts."""
        out = [f"build plan for {self.folder} (precision {self.precision}, {len(self.engines)} engines)"]
        if self.points:
            out.append(self.points)
        for e in self.engines:
            out.append(f"{e.graph} -> {e.engine}: {e.describe_precision()}")
            if e.image_tokens is not None:
                t = e.image_tokens
                out.append(f"  image tokens to serve: {t.fewest}..{t.most} over the accepted points, {t.point} at "
                           f"the export's point (+ the prompt's text; opt: the export's point + {OPT_TEXT})")
            if not e.profiles:
                out.append("  static shapes (no optimization profile)")
            for p in e.profiles:
                out.append(f"  profile {p.name}:")
                for names, (lo, opt, hi) in _groups(p.shapes):
                    out.append(f"    {names}: min {_dims(lo)} opt {_dims(opt)} max {_dims(hi)}")
        return out


def _groups(shapes: dict) -> list[tuple[str, tuple]]:
    """Consecutive tensors with the same ranges as one line: ``cache.0.key .. cache.7.value (16 tensors)``."""
    out: list[list] = []
    for name, ranges in shapes.items():
        if out and out[-1][2] == ranges:
            out[-1][1].append(name)
        else:
            out.append([name, [name], ranges])
    return [(g[0] if len(g[1]) == 1 else f"{g[0]} .. {g[1][-1]} ({len(g[1])} tensors)", g[2]) for g in out]


def _dims(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


# ---------------------------------------------------------------- the plan (no TensorRT)
def plan(folder: str | os.PathLike, precision: str = "as-exported") -> BuildPlan:
    """The build plan of an export folder (verified first); ``ConfigError`` for a bad option."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    return BuildPlan(folder, precision, tuple(plan_manifest(manifest, precision)), points_line(manifest))


def points_line(m: Manifest) -> str:
    """``operating points: R=0.7 s=3 static (the export's own); accepts ratio 0.05..0.95, ...``."""
    if not m.pruning.stages:
        return f"operating points: none (criterion {m.pruning.criterion} prunes nothing)"
    return (f"operating points: {points.default(m).label()} (the export's own); accepts {points.describe(m)} "
            "(docs/operating-points.md)")


def plan_manifest(m: Manifest, precision: str = "as-exported") -> list[EnginePlan]:
    """One ``EnginePlan`` per graph file the runtime opens, in run order."""
    if precision not in BUILD_MODES:
        raise ConfigError(f"precision: got {precision!r}, expected one of {', '.join(BUILD_MODES)}")
    if m.target != "portable":
        raise ConfigError(f"target: the export was made for {m.target!r} (operators TensorRT cannot parse); "
                          "re-export with feather-export --target portable")
    out = []
    tokens = image_tokens(m)
    before = None  # the image tokens of the segment before (a segment's hidden input holds its tokens)
    for _, spec in m.graphs_with_paths():
        if spec.layers is None:  # vision, embed
            out.append(_engine(spec, spec.file, spec.method, precision, _io_profiles(m, spec)))
            continue
        t = tokens[spec.file]
        prefill, decode = _segment_profile(m, spec, "prefill", t, before), _segment_profile(m, spec, "decode", t)
        if spec.decode_file is None:
            out.append(_engine(spec, spec.file, spec.method, precision, (prefill, decode), t))
        else:
            out.append(_engine(spec, spec.file, spec.method, precision, (prefill,), t))
            out.append(_engine(spec, spec.decode_file, spec.decode_method or spec.method, precision, (decode,), t))
        before = t
    return out


def engine_name(graph_file: str) -> str:
    """engines/<graph file without .onnx>.engine (segment0.int4.onnx -> engines/segment0.int4.engine)."""
    name = Path(graph_file).name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return f"{ENGINE_FOLDER}/{stem}.engine"


def _engine(spec: GraphSpec, file: str, method: str, precision: str, profiles,
            tokens: ImageTokens | None = None) -> EnginePlan:
    return EnginePlan(file, engine_name(file), spec.dtype, method, precision, tuple(profiles), tokens)


def _io_profiles(m: Manifest, spec: GraphSpec) -> tuple[Profile, ...]:
    """The embed graph: one profile over the seq axis (prefill and decode). The vision graph: static."""
    r = spec.axes.get(SEQ)
    if r is None or not role_shapes(spec, m.dims, 1, 1):
        return ()
    return (_profile("all", spec, m, (r.min, r.opt, r.max), (1, 1, 1)),)


def _segment_profile(m: Manifest, spec: GraphSpec, phase: str, tokens: ImageTokens,
                     before: ImageTokens | None = None) -> Profile:
    """Prefill: S over the seq axis and the one-row dummy cache. Decode: S = 1 and the cache
    capacity over the cache axis. Shapes from ``feather.manifest.graphs.role_shapes``. min / max
    are the axis' own (1 .. max_seq: every operating point's token count); ``opt`` is the export's
    point, ``tokens.point`` image tokens + ``OPT_TEXT`` (the prefill's hidden input: the tokens of
    the segment ``before``, which it gathers from)."""
    seq = spec.axes.get(SEQ)
    cache = spec.axes.get(CACHE)
    if seq is None or cache is None:
        raise ConfigError(f"{spec.file}: the manifest gives no seq/cache axis ranges; re-export it")
    if tokens.most + 1 > seq.max:  # exporters size max_seq for every image token: a hand-edited manifest
        raise ConfigError(f"{spec.file}: seq max {seq.max} cannot hold the {tokens.most} image tokens some "
                          "accepted operating point keeps here plus a prompt; re-export with a larger --max-seq")
    if phase == "decode":
        c_lo = max(cache.min, 1)
        return _profile(phase, spec, m, (1, 1, 1), (c_lo, _opt(tokens, c_lo, cache.max), cache.max))
    profile = _profile(phase, spec, m, (seq.min, _opt(tokens, seq.min, seq.max), seq.max), (1, 1, 1))
    hidden = spec.inputs[HIDDEN]
    if before is not None and hidden in profile.shapes:  # S_in: the previous segment's tokens
        lo, opt, hi = profile.shapes[hidden]
        opt = (*opt[:1], _opt(before, seq.min, seq.max), *opt[2:])
        profile.shapes[hidden] = (lo, opt, hi)
    return profile


def _opt(tokens: ImageTokens, lo: int, hi: int) -> int:
    """A profile's opt length: the export's point + a typical prompt's text, within [lo, hi]."""
    return min(max(tokens.point + OPT_TEXT, lo), hi)


def _profile(name: str, spec: GraphSpec, m: Manifest, seqs: tuple, caps: tuple) -> Profile:
    """``role_shapes`` at (min, opt, max) -> ``shapes[tensor] = (min, opt, max)``."""
    per = [role_shapes(spec, m.dims, s, c) for s, c in zip(seqs, caps)]
    return Profile(name, {tensor: tuple(p[tensor] for p in per) for tensor in per[0]})


# ---------------------------------------------------------------- TensorRT versions: the one branch
def strongly_typed(dtype: str, precision: str) -> bool:
    """Whether the graph's own dtypes decide (``as-exported``, or ``fp16`` over an fp16 graph)
    rather than a builder flag over an fp32 graph."""
    return precision == "as-exported" or (precision == "fp16" and dtype == "float16")


def precision_mode(trt, dtype: str, precision: str) -> str:
    """How to build: ``strong`` (the ONNX dtypes decide; all TensorRT 10.x / 11.x) or ``weak``
    (an fp16 / bf16 builder flag over an fp32 graph; TensorRT 10 only, refused on 11)."""
    if strongly_typed(dtype, precision):
        return "strong"
    if not hasattr(trt.BuilderFlag, precision.upper()):  # TensorRT 11: strongly typed networks only
        raise ConfigError(
            f"precision {precision}: TensorRT {trt.__version__} builds strongly typed networks only (no "
            f"{precision.upper()} builder flag) and this export is {dtype}; re-export with "
            "feather-export --precision fp16, then build with --precision as-exported")
    return "weak"


# ---------------------------------------------------------------- building (needs TensorRT)
def build(folder: str | os.PathLike, precision: str = "as-exported", workspace_gb: float | None = None,
          timing_cache: str | os.PathLike | None = None, trt=None, cuda=None,
          log: Callable[[str], None] = print) -> Manifest:
    """Build every engine of ``folder``'s plan on this GPU, write them under engines/ and
    record them in feather.json. ``trt`` / ``cuda`` default to the real modules (tests pass fakes)."""
    from feather.runtime.backends import tensorrt as backend

    folder = Path(folder)
    manifest = load_manifest(folder)  # verified: a tampered graph is never built
    items = plan_manifest(manifest, precision)
    if workspace_gb is not None and not 0 < workspace_gb <= MAX_WORKSPACE_GB:
        raise ConfigError(f"workspace-gb: got {workspace_gb}, expected a number in (0, {MAX_WORKSPACE_GB}]")
    trt = trt or backend.import_tensorrt()
    cuda = cuda or backend.Cuda("feather-build")
    gpu, cc = cuda.device()
    cache_path = Path(timing_cache) if timing_cache else None
    cache = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    specs: list[EngineSpec] = []
    built = manifest

    def commit(work: Path) -> None:
        """With SIGINT, SIGTERM and SIGHUP held: the engines into engines/, then their records."""
        nonlocal built
        for item in items:
            os.replace(work / Path(item.engine).name, folder / item.engine)
        kept = [e for e in manifest.engines if e.graph not in {s.graph for s in specs}]
        built = dataclasses.replace(manifest, engines=kept + specs)
        save_manifest(built, folder)

    # feather.folder's transaction: engines/ made if missing, leftovers of killed builds removed, a
    # work folder inside it; a failure or a signal before the commit leaves engines/ and feather.json as they were
    with staged_files(folder / ENGINE_FOLDER, commit) as work:
        for i, item in enumerate(items, 1):
            log(f"[{i}/{len(items)}] {item.graph} -> {item.engine}")
            blob, cache = build_engine(trt, folder / item.graph, item, workspace_gb, cache)
            (work / Path(item.engine).name).write_bytes(blob)
            specs.append(EngineSpec(
                graph=item.graph, file=item.engine, sha256=sha256_file(work / Path(item.engine).name),
                graph_sha256=manifest.files[item.graph], tensorrt=trt.__version__, gpu=gpu,
                compute_capability=cc, precision=precision, profiles=[p.record() for p in item.profiles]))
            del blob
            gc.collect()
    if cache_path is not None and cache:
        _write_bytes(cache_path, cache)
    return built


def build_engine(trt, onnx_path: Path, item: EnginePlan, workspace_gb: float | None,
                 timing_cache: bytes) -> tuple[bytes, bytes]:
    """One serialized engine and the updated timing cache. Every builder object is local, so
    it is freed when this returns (Jetson: the next graph's build needs that memory)."""
    mode = precision_mode(trt, item.dtype, item.precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == "strong" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):  # reads external data beside the graph
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"{onnx_path.name}: TensorRT cannot parse it ({errors[0] if errors else 'no detail'})")
    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if mode == "weak":
        config.set_flag(getattr(trt.BuilderFlag, item.precision.upper()))
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pin_fp32(trt, network)
    for p in item.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path.name}: the TensorRT build failed (see TensorRT's log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


PINNED = ("REDUCE", "UNARY", "SOFTMAX", "NORMALIZATION")
"""Layer types kept in fp32 under an fp16 / bf16 flag: RMSNorm's mean of squares and rsqrt,
the softmax's max / exp / sum (fp16 reductions there overflow). Elementwise layers are pinned
when they are a Pow or read a pinned layer's output (x^2 before the mean, +eps, the division)."""


def pin_fp32(trt, network) -> list[str]:
    """Pin the layers above to fp32 (with OBEY_PRECISION_CONSTRAINTS); returns their names."""
    pinned, fp32_tensors = [], set()
    types = {getattr(trt.LayerType, t) for t in PINNED}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = {layer.get_input(j).name for j in range(layer.num_inputs) if layer.get_input(j) is not None}
        pin = layer.type in types
        if layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer  # Python bindings hand out the base class
            pin = layer.op == trt.ElementWiseOperation.POW or bool(inputs & fp32_tensors)
        if not pin:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
            fp32_tensors.add(layer.get_output(j).name)
        pinned.append(layer.name)
    return pinned


def _write_bytes(path: Path, data: bytes) -> None:
    """The timing cache, written atomically (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
