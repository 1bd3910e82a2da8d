"""Next-token choice from one step's logits, in numpy: shared by the reference and the runtime."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from feather.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """Greedy when ``temperature == 0``; else temperature + nucleus (top-p) sampling, seeded."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature)
        if not 0.0 <= self.temperature < math.inf:
            raise ConfigError(f"temperature: got {self.temperature}, expected a finite number >= 0")
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: got {self.top_p}, expected a number in (0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed: got {self.seed!r}, expected an integer in 0..2**63-1")

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name}: got {value!r}, expected a number")


def next_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """Pick the next token from ``logits`` ``[V]``."""
    logits = np.asarray(logits, dtype=np.float64)
    if sampling.temperature == 0.0:
        return int(np.argmax(logits))
    z = logits / sampling.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    keep = order[: int(np.searchsorted(cum, sampling.top_p) + 1)]  # smallest set with mass >= top_p
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])
