"""The pruning configuration and the plan it implies, torch-free.

``PruneConfig`` is what a user chooses (criterion, K list, ratio R, stride, mode);
``plan()`` turns it into ``Stage`` records for a model with a given number of layers and
image-token grid. Every bad value raises ``ConfigError`` naming the field, the value
given and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feather import rules as rules_mod
from feather.errors import ConfigError
from feather.rules import MODES, Params, Rule
from feather.selection import floor_count, grid_count

__all__ = ["CRITERIA", "MODES", "Criterion", "PruneConfig", "Stage", "floor_count", "grid_count", "keep_fraction"]


def keep_fraction(ratio: float) -> float:
    """rho = 1 - R, the fraction of image tokens a top-k stage keeps."""
    return 1.0 - ratio


@dataclass(frozen=True)
class Criterion:
    """How one criterion prunes: the rule of each stage, and which K lists it accepts."""

    rules: tuple[str, ...]  # one rule per stage; () for no pruning
    needs_score: bool  # True when its first stage ranks by attention (so K >= 1)
    fixed_k: tuple[int, ...] | None = None  # K forced by the criterion (text_only)
    doc: str = ""


# Each criterion is a list of stage rules; ``feather.rules`` owns what each rule does.
CRITERIA: dict[str, Criterion] = {
    "none": Criterion((), False, doc="no pruning (the baseline every benchmark compares with)"),
    "original": Criterion(("topk_rope",), True, doc="FastV: top-k by the RoPE attention score"),
    "norope": Criterion(("topk_norope",), True, doc="phi_R: top-k by the RoPE-free attention score"),
    "uniform": Criterion(("uniform",), False, doc="uniform grid with stride s"),
    "knn": Criterion(("knn",), False, doc="DPC-KNN density peaks over the vision features"),
    "ensemble": Criterion(("ensemble",), True, doc="phi_R top-k united with the uniform grid"),
    "feather": Criterion(
        ("ensemble", "topk_norope2"), True, doc="FEATHER: ensemble at K1, RoPE-free top-k at K2"
    ),
    "text_only": Criterion(("drop_all",), False, fixed_k=(0,), doc="drop every image token before the LLM"),
}

@dataclass(frozen=True)
class Stage:
    """One pruning stage: before decoder layer ``layer``, apply ``rule``."""

    layer: int
    rule: str

    @property
    def impl(self) -> Rule:
        """The ``feather.rules`` object that owns this stage's rule."""
        return rules_mod.get(self.rule)

    @property
    def needs_score(self) -> bool:
        return self.impl.needs_score

    @property
    def rope(self) -> bool:
        return self.impl.rope


DEFAULT_K = (8, 16)


@dataclass(frozen=True)
class PruneConfig:
    """What the user chooses. Validated on construction; see ``plan`` for the stages."""

    criterion: str = "feather"
    K: tuple[int, ...] | None = None  # None: (8, 16), the paper's; criteria that fix K take theirs
    ratio: float = 0.7
    stride: int = 3
    mode: str = "static"
    stages: tuple[Stage, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ConfigError(
                f"criterion: got {self.criterion!r}, expected one of {', '.join(sorted(CRITERIA))}"
            )
        crit = CRITERIA[self.criterion]
        fixed = () if not crit.rules else crit.fixed_k
        if fixed is not None and self.K is not None and tuple(self.K) != fixed:
            what = "prunes nothing" if not crit.rules else f"always prunes at K = {list(fixed)}"
            raise ConfigError(f"K: got {list(self.K)}, but criterion {self.criterion!r} {what}; leave K out")
        k = fixed if fixed is not None else DEFAULT_K if self.K is None else tuple(self.K)
        object.__setattr__(self, "K", k)
        _check_number("ratio", self.ratio, float)
        if not 0.0 < float(self.ratio) < 1.0:
            raise ConfigError(f"ratio: got {self.ratio}, expected a fraction pruned strictly between 0 and 1")
        _check_number("stride", self.stride, int)
        if self.stride < 1:
            raise ConfigError(f"stride: got {self.stride}, expected an integer >= 1")
        if self.mode not in MODES:
            raise ConfigError(f"mode: got {self.mode!r}, expected one of {', '.join(MODES)}")
        self._check_k(crit, k)
        rules = crit.rules[: len(k)] if self.criterion == "feather" else crit.rules
        object.__setattr__(self, "stages", tuple(Stage(layer, rule) for layer, rule in zip(k, rules)))

    def _check_k(self, crit: Criterion, k: tuple[int, ...]) -> None:
        if not crit.rules:
            return
        for i, layer in enumerate(k):
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise ConfigError(f"K[{i}]: got {layer!r}, expected an integer layer index")
            if layer < 0:
                raise ConfigError(f"K[{i}]: got {layer}, expected a layer index >= 0")
        if list(k) != sorted(set(k)):
            raise ConfigError(f"K: got {list(k)}, expected strictly ascending layer indices")
        max_stages = len(crit.rules)
        if not 1 <= len(k) <= max_stages:
            allowed = "one layer" if max_stages == 1 else f"1 to {max_stages} layers"
            hint = "; use --criterion feather for two stages" if max_stages == 1 else ""
            raise ConfigError(f"K: got {list(k)}, criterion {self.criterion!r} prunes at {allowed}{hint}")
        if crit.needs_score and k[0] < 1:
            raise ConfigError(
                f"K[0]: got 0, criterion {self.criterion!r} ranks by the attention of layer K-1, "
                "so K must be >= 1 (use uniform, knn or text_only to prune before the LLM)"
            )

    def check_layers(self, num_layers: int) -> None:
        """Raise unless every K lies inside a model with ``num_layers`` decoder layers."""
        for i, layer in enumerate(self.K):
            if layer >= num_layers:
                raise ConfigError(
                    f"K[{i}]: got {layer}, expected a layer index below the model's {num_layers} layers"
                )

    @property
    def rho(self) -> float:
        return keep_fraction(self.ratio)

    @property
    def params(self) -> Params:
        """What the stage rules read: rho, stride, mode."""
        return Params(rho=self.rho, stride=self.stride, mode=self.mode)

    def keep_counts(self, n_image: int, grid: int) -> list[int]:
        """Image tokens kept after each stage in static mode (exact), from ``n_image``."""
        return rules_mod.keep_counts([s.rule for s in self.stages], n_image, grid, self.params)

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "K": list(self.K),
            "ratio": self.ratio,
            "stride": self.stride,
            "mode": self.mode,
        }


def _check_number(name: str, value: object, kind: type) -> None:
    ok = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok:
        raise ConfigError(f"{name}: got {value!r}, expected {'a number' if kind is float else 'an integer'}")
