"""feather-run --check: the chain against the PyTorch reference on the user's own input.

Needs the export extra (torch, transformers) and the source checkpoint named in the
manifest; the runtime itself never does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feather.errors import BackendError
from feather.runtime.pipeline import Pipeline, Result


@dataclass
class Report:
    tokens_agree: int  # leading tokens equal
    tokens_total: int
    max_abs_diff: list[float]  # per step, over the steps where both saw the same prefix
    cosine: list[float]
    kept_agree: list[bool]  # per stage
    tolerance: float
    exact: bool = True  # float graphs: tokens and kept indices must agree; quantized: logits only

    @property
    def ok(self) -> bool:
        logits_ok = max(self.max_abs_diff, default=0.0) <= self.tolerance
        if not self.exact:  # quantized weights move scores and tokens; the method's tolerance judges
            return logits_ok
        return self.tokens_agree == self.tokens_total and all(self.kept_agree) and logits_ok

    def lines(self) -> list[str]:
        worst = max(self.max_abs_diff, default=0.0)
        return [
            f"tokens: {self.tokens_agree}/{self.tokens_total} agree",
            "kept indices per stage: "
            + (", ".join("equal" if k else "DIFFER" for k in self.kept_agree) or "no stages"),
            f"logits: max abs diff {worst:.3g} (tolerance {self.tolerance:g}), "
            f"min cosine {min(self.cosine, default=1.0):.6f}",
            "per step max abs diff: " + " ".join(f"{d:.2g}" for d in self.max_abs_diff),
            "check: " + ("PASS" if self.ok else "FAIL")
            + ("" if self.exact else " (quantized: judged on logits within the method's tolerance over the "
                                     "steps with the same prefix; tokens and kept indices reported)"),
        ]


def reference_result(pipe: Pipeline, image, prompt: str, max_new_tokens: int, model: str | None = None):
    """Greedy reference tokens, logits and kept indices for the pipeline's source checkpoint."""
    try:
        from feather.reference import Reference
    except ImportError as err:
        raise BackendError(
            f"--check needs the export extra ({err.name} missing): pip install 'feather-vlm[export]'"
        ) from None
    ref = Reference.load(model or pipe.manifest.source.model, prune_config(pipe.manifest))
    return ref.generate(image, prompt, max_new_tokens)


def prune_config(manifest):
    """The ``PruneConfig`` the reference needs to reproduce ``manifest.pruning``."""
    from feather.config import PruneConfig

    p = manifest.pruning
    return PruneConfig(criterion=p.criterion, K=tuple(p.K), ratio=p.ratio, stride=p.stride, mode=p.mode)


def compare(chain: Result, ref, tolerance: float) -> Report:
    """Compare a chain result with a reference result step by step."""
    agree = 0
    for a, b in zip(chain.tokens, ref.tokens):
        if a != b:
            break
        agree += 1
    steps = min(agree + 1, len(chain.logits), len(ref.logits))  # same prefix up to and incl. the first mismatch
    diffs, cosines = [], []
    for a, b in zip(chain.logits[:steps], ref.logits[:steps]):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diffs.append(float(np.abs(a64 - b64).max()))
        cosines.append(float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64))))
    kept = [x["kept"] == y["kept"] for x, y in zip(chain.stages, ref.stages)]
    kept += [False] * abs(len(chain.stages) - len(ref.stages))
    return Report(agree, max(len(chain.tokens), len(ref.tokens)), diffs, cosines, kept, tolerance)


def check(pipe: Pipeline, image, prompt: str, max_new_tokens: int, model: str | None = None) -> tuple[Result, Report]:
    chain = pipe.generate(image, prompt, max_new_tokens)
    ref = reference_result(pipe, image, prompt, max_new_tokens, model)
    report = compare(chain, ref, pipe.manifest.tolerance.logits_abs)
    report.exact = not quantized(pipe.manifest)
    return chain, report


def quantized(manifest) -> bool:
    """Whether any graph's weights are stored by a quantization method (not plain float)."""
    graphs = [g for _, g in manifest.graphs_with_paths()]
    return any(g.method != "float" or (g.decode_method or "float") != "float" for g in graphs)
