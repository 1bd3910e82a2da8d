"""Validation is part of export: every graph against its PyTorch module, in ONNX Runtime,
on shapes other than the traced ones. All failures are collected and raised once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feather.errors import ValidationError

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
"""Max abs diff allowed, relative to max(1, max |reference|) of each output."""


@dataclass
class Case:
    """One set of inputs to compare a graph on, e.g. 'prefill S=23' or 'decode P=29'."""

    name: str
    args: tuple  # torch tensors, in the module's input order


def compare(module, path: Path, cases: list[Case], precision: str, tol: float | None = None) -> list[str]:
    """Run ``module`` (PyTorch) and the ONNX graph at ``path`` (ONNX Runtime, CPU) on each
    case; return one line per output beyond tolerance (``tol``, else the precision's)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tol, failures = TOLERANCE[precision] if tol is None else tol, []
    for case in cases:
        with torch.no_grad():
            ref = module(*case.args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        feeds = {name: t.numpy() for name, t in zip(module.input_names, case.args)}
        got = session.run(module.output_names, feeds)
        for name, r, g in zip(module.output_names, ref, got):
            failures += _check(path.name, case.name, name, r.float().numpy(), g.astype(np.float32), tol)
    return failures


def _check(graph: str, case: str, output: str, ref: np.ndarray, got: np.ndarray, tol: float) -> list[str]:
    if ref.shape != got.shape:
        return [f"{graph} [{case}] {output}: shape {got.shape}, expected {ref.shape}"]
    if ref.size == 0:
        return []
    diff = float(np.abs(ref - got).max())
    limit = tol * max(1.0, float(np.abs(ref).max()))
    if not np.isfinite(diff) or diff > limit:
        return [f"{graph} [{case}] {output}: max abs diff {diff:.3g} > {limit:.3g}"]
    return []


def raise_failures(failures: list[str]) -> None:
    if failures:
        raise ValidationError(f"{len(failures)} graph output(s) disagree with PyTorch: " + "; ".join(failures))


def segment_cases(seg, hidden: int, kv_heads: int, head_dim: int, dtype, seed: int = 0) -> list[Case]:
    """A prefill with a gather and no past, and a decode step with a past; neither is the
    traced shape (see ``trace_args``)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n_layers = seg.end - seg.start

    def args(s_in: int, keep: torch.Tensor, pos: torch.Tensor, past: int, cap: int) -> tuple:
        h = torch.randn(1, s_in, hidden, generator=g).to(dtype)
        # rows >= past are stale: random, as a reused buffer would hold; they must not matter
        kv = [torch.randn(1, kv_heads, cap, head_dim, generator=g).to(dtype) for _ in range(2 * n_layers)]
        return (h, keep, pos[None], torch.tensor([past]), *kv)

    keep = torch.sort(torch.randperm(23, generator=g)[:17]).values
    return [
        Case("prefill S_in=23 S=17", args(23, keep, keep + 2, 0, 1)),
        Case("decode P=29 C=37", args(1, torch.tensor([0]), torch.tensor([40]), 29, 37)),
    ]


def trace_args(seg, hidden: int, kv_heads: int, head_dim: int, dtype) -> tuple:
    """The example inputs the segment is traced with: S_in=12, S=10, past 3 in a cache of 5."""
    import torch

    n_layers = seg.end - seg.start
    kv = [torch.zeros(1, kv_heads, 5, head_dim, dtype=dtype) for _ in range(2 * n_layers)]
    keep = torch.arange(10)
    return (torch.randn(1, 12, hidden).to(dtype), keep, keep[None] + 3, torch.tensor([3]), *kv)
