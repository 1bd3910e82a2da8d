"""feather-run --check: the chain against the PyTorch reference on the user's own input.

Needs the export extra (torch, transformers) and the source checkpoint named in the
manifest; the runtime itself never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
    forced: bool = False  # fp16: the reference followed the chain's kept indices and tokens (``forced_check``)
    kept_tie: list[bool] = field(default_factory=list)  # forced: per stage, differs only by a near-tie

    @property
    def ok(self) -> bool:
        logits_ok = max(self.max_abs_diff, default=0.0) <= self.tolerance
        if self.forced:  # every step compared on the same path; a kept set may differ by a near-tie
            return logits_ok and all(k or t for k, t in zip(self.kept_agree, self.kept_tie))
        if not self.exact:  # quantized weights move scores and tokens; the method's tolerance judges
            return logits_ok
        return self.tokens_agree == self.tokens_total and all(self.kept_agree) and logits_ok

    def lines(self) -> list[str]:
        worst = max(self.max_abs_diff, default=0.0)
        ties = self.kept_tie or [False] * len(self.kept_agree)
        return [
            f"tokens: {self.tokens_agree}/{self.tokens_total} agree"
            + (" with the reference's argmax on the chain's path" if self.forced else ""),
            "kept indices per stage: "
            + (", ".join("equal" if k else "near-tie" if t else "DIFFER" for k, t in zip(self.kept_agree, ties))
               or "no stages"),
            f"logits: max abs diff {worst:.3g} (tolerance {self.tolerance:g}), "
            f"min cosine {min(self.cosine, default=1.0):.6f}",
            "per step max abs diff: " + " ".join(f"{d:.2g}" for d in self.max_abs_diff),
            "check: " + ("PASS" if self.ok else "FAIL")
            + ("" if self.exact else " (quantized: judged on logits within the method's tolerance over the "
                                     "steps with the same prefix; tokens and kept indices reported)")
            + (" (fp16: the reference teacher-forced on the chain's kept indices and tokens, logits judged at "
               "every step; kept sets may differ only by near-ties, docs/precision.md)" if self.forced else ""),
        ]


def reference_result(pipe: Pipeline, image, prompt: str, max_new_tokens: int | None, model: str | None = None,
                     prune=None):
    """Greedy reference tokens, logits and kept indices for the pipeline's source checkpoint, at the
    operating point ``prune`` (None: the export's own)."""
    try:
        from feather.reference import Reference
    except ImportError as err:
        raise BackendError(
            f"--check needs the export extra ({err.name} missing): pip install 'feather-vlm[export]'"
        ) from None
    ref = Reference.load(model or pipe.manifest.source.model, prune_config(pipe.manifest, pipe.resolve(prune)))
    return ref if max_new_tokens is None else ref.generate(image, prompt, max_new_tokens)  # None: the Reference


def prune_config(manifest, point=None):
    """The ``PruneConfig`` the reference needs to reproduce ``manifest.pruning`` at ``point`` (a
    resolved ``feather.points.Point``; None: the export's own)."""
    from feather.config import PruneConfig

    p = manifest.pruning
    ratio, stride, mode = (p.ratio, p.stride, p.mode) if point is None else (point.ratio, point.stride, point.mode)
    return PruneConfig(criterion=p.criterion, K=tuple(p.K), ratio=ratio, stride=stride, mode=mode)


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


def check(pipe: Pipeline, image, prompt: str, max_new_tokens: int, model: str | None = None,
          prune=None) -> tuple[Result, Report]:
    """The chain and the PyTorch reference on the same input, both at the operating point ``prune``."""
    chain = pipe.generate(image, prompt, max_new_tokens, prune=prune)
    if pipe.manifest.precision != "fp32" and not quantized(pipe.manifest):
        ref = reference_result(pipe, image, prompt, None, model, prune)
        return chain, forced_check(chain, ref, image, prompt, pipe.manifest.tolerance.logits_abs)
    ref = reference_result(pipe, image, prompt, max_new_tokens, model, prune)
    report = compare(chain, ref, pipe.manifest.tolerance.logits_abs)
    report.exact = not quantized(pipe.manifest)
    return chain, report


def quantized(manifest) -> bool:
    """Whether any graph's weights are stored by a quantization method (not plain float)."""
    graphs = [g for _, g in manifest.graphs_with_paths()]
    return any(g.method != "float" or (g.decode_method or "float") != "float" for g in graphs)


# ---------------------------------------------------------------- fp16: the reference on the chain's path
def forced_check(chain: Result, ref, image, prompt: str, tolerance: float) -> Report:
    """An fp16 chain against the float32 reference run along the chain's own path: at each stage
    the reference ranks with its own scores (recorded) but keeps what the chain kept, and it
    decodes the chain's tokens. Every step's logits are then comparable; a free-running compare
    is not, since fp16 activations move near-equal scores across the top-k boundary and one
    swapped token changes every later logit (docs/precision.md has the measurements).

    A stage passes when the kept sets are equal or differ by a near-tie: the reference's best
    score among the tokens only it kept is at most ``e^(2 * tolerance)`` times its worst among the
    tokens only the chain kept, i.e. score logits within ``tolerance`` would rank them the same.
    The tokens need no rule of their own: logits within ``tolerance`` can flip the argmax only
    where the reference's top two are within ``2 * tolerance``."""
    enc = ref.encode(image, prompt)
    sizes = enc.get("image_sizes")
    features = ref.image_features(enc["pixel_values"].to(ref.model.dtype), sizes)
    follow = _Follow(ref.layout(None if sizes is None else sizes[0].tolist()), [s["kept"] for s in chain.stages])
    logits, state, _ = ref.prefill(enc["input_ids"], features, follow)
    steps = [logits] + [ref.decode_step(token, state) for token in chain.tokens[:-1]]
    agree = sum(int(np.argmax(lg)) == t for lg, t in zip(steps, chain.tokens))
    diffs, cosines = _logit_stats(chain.logits, steps)
    kept = [own == s["kept"] for own, s in zip(follow.own, chain.stages)]
    ties = [near_tie(own, s["kept"], scores, tolerance)
            for own, s, scores in zip(follow.own, chain.stages, follow.scores)]
    return Report(agree, len(chain.tokens), diffs, cosines, kept, tolerance, forced=True, kept_tie=ties)


def _logit_stats(chain: list[np.ndarray], ref: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per step: max abs diff and cosine of two logit vectors, in float64."""
    diffs, cosines = [], []
    for a, b in zip(chain, ref):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diffs.append(float(np.abs(a64 - b64).max()))
        cosines.append(float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64))))
    return diffs, cosines


def near_tie(own: list[int], kept: list[int], scores: dict[int, float] | None, tolerance: float) -> bool:
    """Whether kept set ``kept`` differs from the reference's ``own`` only by a near-tie of the
    reference's ``scores`` (original index -> score); False for rules that rank without scores."""
    ref_only, chain_only = set(own) - set(kept), set(kept) - set(own)
    if not ref_only and not chain_only:
        return True
    if scores is None or len(ref_only) != len(chain_only):
        return False
    best = max(scores[i] for i in ref_only)
    return best <= math.exp(2 * tolerance) * min(scores[i] for i in chain_only)


class _Follow:
    """A ``Layout`` whose ``select`` records the reference's own choice and scores, then
    returns the chain's kept tokens (``kept``: original indices per stage)."""

    def __init__(self, layout, kept: list[list[int]]):
        self.layout, self.kept = layout, kept
        self.own: list[list[int]] = []
        self.scores: list[dict[int, float] | None] = []

    def __getattr__(self, name):
        return getattr(self.layout, name)

    def apply_stage(self, *args, **kwargs):
        """``Layout.apply_stage`` bound to this object, so that it calls ``select`` below."""
        return type(self.layout).apply_stage(self, *args, **kwargs)

    def select(self, rule, live, params, logits, features, layer):
        from feather.selection import attention_scores

        tokens = self.layout.prunable[live]
        own = self.layout.select(rule, live, params, logits, features, layer)
        self.own.append(tokens[own].tolist())
        self.scores.append(None if logits is None else dict(zip(tokens.tolist(), attention_scores(logits).tolist())))
        forced = self.kept[len(self.own) - 1] if len(self.own) <= len(self.kept) else []
        return np.flatnonzero(np.isin(tokens, forced)).astype(np.int64)
