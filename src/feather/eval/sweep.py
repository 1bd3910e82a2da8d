"""``--sweep`` specs: several pruning configs in one run, e.g. ``none,original@3:r0.75,feather``.

Each entry is ``criterion[@K[+K2]][:rR][:sS][:paper]``; what an entry leaves out comes from the
base options (``--K``, ``--ratio``, ``--stride``, ``--mode``), with ``--K`` cut to the number
of stages the criterion has (``original`` takes the first K). ``poster`` expands to the
poster's rows: no pruning, the K = 3 criteria at R = 0.75 (uniform and ensemble with stride 2),
and FEATHER (K = 8, 16, R = 0.7, s = 3).
"""

from __future__ import annotations

from feather.config import CRITERIA, PruneConfig
from feather.errors import ConfigError

POSTER = ("none,original@3:r0.75,norope@3:r0.75,knn@3:r0.75,uniform@3:s2,ensemble@3:r0.75:s2,"
          "feather@8+16:r0.7:s3")


def parse_sweep(spec: str, base: PruneConfig) -> list[PruneConfig]:
    """The configs ``spec`` names, in order (``poster``: the poster's rows)."""
    entries = [e.strip() for e in spec.split(",")]
    if "poster" in entries:
        i = entries.index("poster")
        entries[i:i + 1] = POSTER.split(",")
    if not all(entries):
        raise ConfigError(f"--sweep {spec!r}: empty entry; expected comma-separated criterion[@K[+K2]][:rR][:sS]")
    configs = [parse_entry(e, base) for e in entries]
    if len({c for c in configs}) != len(configs):
        raise ConfigError(f"--sweep {spec!r}: names the same config twice")
    return configs


def parse_entry(entry: str, base: PruneConfig) -> PruneConfig:
    """One sweep entry as a ``PruneConfig`` (``ConfigError`` naming the entry)."""
    head, *options = entry.split(":")
    name, _, ks = head.partition("@")
    if name not in CRITERIA:
        raise ConfigError(f"--sweep entry {entry!r}: criterion {name!r}, expected one of {', '.join(sorted(CRITERIA))}")
    crit = CRITERIA[name]
    takes_k = bool(crit.rules) and crit.fixed_k is None  # none and text_only fix their own K
    kw = {"criterion": name, "K": tuple(base.K)[: len(crit.rules)] if takes_k else None, "ratio": base.ratio,
          "stride": base.stride, "mode": base.mode}
    try:
        if ks:
            kw["K"] = tuple(int(k) for k in ks.split("+"))
        for opt in options:
            if opt == "paper" or opt == "static":
                kw["mode"] = opt
            elif opt[:1] == "r":
                kw["ratio"] = float(opt[1:])
            elif opt[:1] == "s":
                kw["stride"] = int(opt[1:])
            else:
                raise ValueError(opt)
    except ValueError:
        raise ConfigError(f"--sweep entry {entry!r}: expected criterion[@K[+K2]][:rR][:sS][:paper], "
                          "e.g. original@3:r0.75") from None
    try:
        return PruneConfig(**kw)
    except ConfigError as err:
        raise ConfigError(f"--sweep entry {entry!r}: {err}") from None
