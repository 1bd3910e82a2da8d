"""Operating points: the keep ratio R, grid stride s and mode a call prunes with. Torch-free.

An export fixes WHERE pruning happens (the layers K, hence the segment graphs) and records its
own point (``pruning.ratio`` / ``stride`` / ``mode``: the default) and the range of points a
call may choose (``pruning.points``, with each stage's ``keep_range``). The segment graphs take
any number of image tokens and the selection runs on the host, so HOW MUCH to prune is a
per-call choice, with no re-export and no engine rebuild inside the built range:

    pipe.generate(image, prompt, prune=Point(ratio=0.5, stride=2))     # or prune={"ratio": 0.5}
    feather-run EXPORT --ratio 0.5 --stride 2
    {"feather": {"ratio": 0.5, "stride": 2}}                           # a feather-serve request

``resolve(manifest, prune)`` is the one place a requested point is checked against an export
(every entry point calls it); ``keep_ranges`` is the one place a range's keep counts are
computed (the exporter writes them, the manifest checks recount them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from feather import layout as layout_mod
from feather import rules
from feather.errors import ConfigError, InputError
from feather.manifest.schema import BOUNDS

RATIO_RANGE = (0.05, 0.95)
"""The ratios an export accepts unless ``feather-export --ratio-range`` narrows them."""
FIELDS = ("ratio", "stride", "mode")
STRIDE_MAX = BOUNDS["pruning.stride"][1]


@dataclass(frozen=True)
class Point:
    """How much a call prunes: fraction ``ratio`` pruned by a top-k (rho = 1 - R), grid
    ``stride``, ``mode`` (static or paper). Any field left None takes the export's value."""

    ratio: float | None = None
    stride: int | None = None
    mode: str | None = None

    @property
    def params(self) -> rules.Params:
        """What the stage rules read (a resolved point: every field set)."""
        return rules.Params.from_ratio(self.ratio, self.stride, self.mode)

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "stride": self.stride, "mode": self.mode}

    def label(self) -> str:
        """``R=0.7 s=3 static``."""
        return f"R={self.ratio:g} s={self.stride} {self.mode}"

    def flags(self) -> str:
        """The feather-run options that choose this point."""
        return f"--ratio {self.ratio:g} --stride {self.stride} --mode {self.mode}"


def parse(prune, where: str = "prune") -> Point:
    """A ``Point`` from what a caller hands in: None, a ``Point``, or a mapping with any of
    ratio, stride, mode (a request's ``feather`` field). Types are checked here; ranges by ``resolve``."""
    if prune is None:
        return Point()
    if isinstance(prune, Point):
        values = dataclasses.asdict(prune)
    elif isinstance(prune, Mapping):
        unknown = sorted(set(map(str, prune)) - set(FIELDS))
        if unknown:
            raise InputError(f"{where}: unknown field {unknown[0]!r}; expected any of {', '.join(FIELDS)}")
        values = {k: prune.get(k) for k in FIELDS}
    else:
        raise InputError(f"{where}: got {type(prune).__name__}; expected a Point or a mapping with "
                         f"{', '.join(FIELDS)}")
    ratio, stride, mode = (values[k] for k in FIELDS)
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not math.isfinite(ratio)):
        raise InputError(f"{where}.ratio: got {ratio!r}; expected a number, the fraction pruned")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int)):
        raise InputError(f"{where}.stride: got {stride!r}; expected an integer grid stride")
    if mode is not None and mode not in rules.MODES:
        raise InputError(f"{where}.mode: got {mode!r}; expected one of {', '.join(rules.MODES)}")
    return Point(None if ratio is None else float(ratio), stride, mode)


def default(manifest) -> Point:
    """The export's own point."""
    p = manifest.pruning
    return Point(float(p.ratio), p.stride, p.mode)


def accepted(manifest) -> tuple[tuple[float, float], tuple[int, int], tuple[str, ...]]:
    """(ratio range, stride range, modes) the export accepts; an export that records no range
    (made before operating points) accepts only its own point."""
    p = manifest.pruning
    r = p.points
    if r is None:
        return (p.ratio, p.ratio), (p.stride, p.stride), (p.mode,)
    return (r.ratio[0], r.ratio[1]), (r.stride[0], r.stride[1]), tuple(r.modes)


def describe(manifest) -> str:
    """``ratio 0.05..0.95, stride 1..24, modes static, paper``."""
    (rlo, rhi), (slo, shi), modes = accepted(manifest)
    return f"ratio {rlo:g}..{rhi:g}, stride {slo}..{shi}, modes {', '.join(modes)}"


def resolve(manifest, prune=None, where: str = "prune") -> Point:
    """The point a call runs: ``prune``'s fields over the export's own point, checked against the
    range the export accepts (``InputError`` naming the field, the value and the range). An
    export that prunes nothing takes no point."""
    asked = parse(prune, where)
    base = default(manifest)
    point = Point(*(base_v if v is None else v for v, base_v in zip(dataclasses.astuple(asked),
                                                                     dataclasses.astuple(base))))
    if asked == Point() or point == base:
        return base
    if not manifest.pruning.stages:
        raise InputError(f"{where}: this export prunes nothing (criterion {manifest.pruning.criterion}); "
                         "it has no operating point to choose")
    (rlo, rhi), (slo, shi), modes = accepted(manifest)
    rng = describe(manifest)
    if not rlo - 1e-9 <= point.ratio <= rhi + 1e-9:
        raise InputError(f"{where}.ratio: {point.ratio:g} is outside the range this export accepts ({rng})")
    if not slo <= point.stride <= shi:
        raise InputError(f"{where}.stride: {point.stride} is outside the range this export accepts ({rng})")
    if point.mode not in modes:
        raise InputError(f"{where}.mode: {point.mode!r} is outside the range this export accepts ({rng})")
    return point


def layout(manifest, point: Point) -> layout_mod.Layout:
    """The image layout at ``point`` (LLaVA-NeXT's virtual grid depends on the stride)."""
    return layout_mod.for_tiles(manifest.dims.grid, getattr(manifest, "tiles", None), point.stride)


def keep_counts(manifest, point: Point) -> list[int]:
    """Prunable image tokens each stage keeps at ``point`` in static mode (paper mode: at most these)."""
    stage_rules = [rules.get(s.rule) for s in manifest.pruning.stages]
    return layout(manifest, point).static_counts(stage_rules, point.params)


def keep_ranges(layout_at, stage_rules: list[rules.Rule], ratio: tuple[float, float],
                stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Per stage, the fewest and most prunable tokens kept (static mode) over a range. Every rule
    keeps fewer as R grows, so the ratio's two ends bound it; every stride in the range is tried
    (LLaVA-NeXT's virtual grid moves with it). ``layout_at(stride)`` gives the layout at a stride."""
    counts = [layout_at(s).static_counts(stage_rules, rules.Params.from_ratio(r, s))
              for s in range(stride[0], stride[1] + 1) for r in ratio]
    return [(min(c), max(c)) for c in zip(*counts)]


def export_range(ratio: float, stride: int, grid: int, ratio_range=None,
                 stride_range=None) -> tuple[tuple[float, float], tuple[int, int]]:
    """The range an export records (``feather-export --ratio-range LO HI --stride-range LO HI``):
    by default ratios ``RATIO_RANGE`` and strides 1..G, widened to hold the export's own point.
    ``ConfigError`` for a range that is empty, outside (0, 1) / 1..128, or misses the export's point."""
    lo, hi = ratio_range if ratio_range is not None else (min(RATIO_RANGE[0], ratio), max(RATIO_RANGE[1], ratio))
    if not 0.0 < lo <= ratio <= hi < 1.0:
        raise ConfigError(f"ratio-range: got {lo:g} {hi:g}, expected 0 < LO <= the export's ratio ({ratio:g}) "
                          "<= HI < 1")
    slo, shi = stride_range if stride_range is not None else (1, min(max(grid, stride), STRIDE_MAX))
    if not 1 <= slo <= stride <= shi <= STRIDE_MAX:
        raise ConfigError(f"stride-range: got {slo} {shi}, expected 1 <= LO <= the export's stride ({stride}) "
                          f"<= HI <= {STRIDE_MAX}")
    return (float(lo), float(hi)), (int(slo), int(shi))


def grid_points(ratios, strides, base: Point) -> list[Point]:
    """The points of a sweep: every ratio x every stride (None: the export's), in order."""
    return [Point(base.ratio if r is None else float(r), base.stride if s is None else int(s), base.mode)
            for s in (strides or [None]) for r in (ratios or [None])]
