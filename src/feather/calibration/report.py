"""The accuracy report: a quantized folder against the floating-point export it came from.

Per graph, teacher-forced: the feeds the floating-point chain made (``Capture``) go to both
the float graph and the quantized one (its decode graph for decode runs), and their main
output (hidden states, logits, image features) is compared: relative error
||q - f|| / ||f|| and cosine. The same feeds also go to the kernel reference of the quantized
graph (``emulate``: its integer arithmetic computed exactly in float): ||r - f|| / ||f|| is
what the method itself costs on this model, and the kernels' result must stay close to it
(``methods.KERNEL_SLACK``): they do wherever the kernels are right (ratio 0.99-1.02), not where
x86 without VNNI saturates a weight format without headroom (3-14x). Per chain,
free-running on the same calibration prompts: the kept-index overlap (Jaccard) at every
pruning stage, greedy token agreement, and the max logit difference over the steps where both
chains saw the same tokens.

``ok`` (the check) asks only what a random-weight checkpoint can answer: every graph's
relative error within the method's bound and within ``KERNEL_SLACK`` x its exact reference's
error + ``KERNEL_FLOOR`` (the same on every CPU and every method), and finite logits. Token agreement
and kept indices are reported, not judged: 0.1 % weight noise already flips them on random weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from feather.calibration import emulate
from feather.calibration.capture import Capture
from feather.calibration.methods import KERNEL_FLOOR, KERNEL_SLACK
from feather.manifest import GraphSpec, Manifest, graphs, load_manifest


@dataclass
class GraphError:
    """One graph and phase: the worst relative error and cosine over its captured runs."""

    graph: str
    file: str
    method: str
    phase: str
    runs: int
    rel_error: float
    cosine: float
    reference_error: float  # ||r - f|| / ||f||: the exact integer reference r (see the module docstring)
    kernel_error: float  # ||q - r|| / ||r||: how differently the host's kernels rounded (reported)
    kernel_ratio: float  # the worst run's rel error over its exact reference's (1.0: kernels add nothing)
    kernel_excess: float  # max over runs of rel - (KERNEL_SLACK * exact + KERNEL_FLOOR): <= 0 passes

    @property
    def kernels_ok(self) -> bool:
        return math.isfinite(self.kernel_excess) and self.kernel_excess <= 0

    def ok(self, bound: float) -> bool:
        return math.isfinite(self.rel_error) and self.rel_error <= bound and self.kernels_ok


@dataclass
class ChainAgreement:
    """One calibration prompt through both chains."""

    prompt: str
    tokens_equal: int  # positions where both picked the same token
    tokens_total: int
    leading_equal: int  # tokens before the first difference
    jaccard: list[float]  # kept image indices per stage
    max_logit_diff: float  # over the steps with the same prefix (the first difference included)


@dataclass
class Report:
    method: str
    bound: float
    graphs: list[GraphError] = field(default_factory=list)
    chains: list[ChainAgreement] = field(default_factory=list)
    cpu: dict = field(default_factory=dict)  # feather.runtime.cpu.CpuInfo.to_json() of the host that measured

    @property
    def ok(self) -> bool:
        finite = all(math.isfinite(c.max_logit_diff) for c in self.chains)
        return finite and all(g.ok(self.bound) for g in self.graphs)

    @property
    def max_kernel_error(self) -> float:
        return max((g.kernel_error for g in self.graphs), default=0.0)

    @property
    def max_kernel_ratio(self) -> float:
        """The worst relative error over its exact reference's (1.0: the kernels add nothing)."""
        return max((g.kernel_ratio for g in self.graphs), default=1.0)

    @property
    def max_rel_error(self) -> float:
        return max((g.rel_error for g in self.graphs), default=0.0)

    def lines(self) -> list[str]:
        out = [f"method {self.method}: per-graph relative error bound {self.bound:g} (teacher-forced), and at most "
               f"{KERNEL_SLACK:g} x the exact integer reference's error + {KERNEL_FLOOR:g}"]
        if self.cpu:
            out.append(f"  cpu: {self.cpu.get('line', '')}")
        for g in self.graphs:
            flag = "" if g.rel_error <= self.bound else "  OVER BOUND"
            if not g.kernels_ok:
                flag += "  KERNELS ADD ERROR"
            out.append(f"  {g.file:<24} {g.method:<9} {g.phase:<8} runs {g.runs:>3}  rel err {g.rel_error:.4f} "
                       f"(exact {g.reference_error:.4f}, x{g.kernel_ratio:.2f})  cosine {g.cosine:.5f}{flag}")
        for c in self.chains:
            jac = " ".join(f"{j:.3f}" for j in c.jaccard) or "no stages"
            out.append(f"  chain {c.prompt[:36]!r}: tokens {c.tokens_equal}/{c.tokens_total} equal "
                       f"({c.leading_equal} leading), kept Jaccard {jac}, max logit diff {c.max_logit_diff:.3g}")
        out.append("check: " + ("PASS" if self.ok else "FAIL") + f" (worst rel err {self.max_rel_error:.4f}, "
                   f"worst over the exact reference x{self.max_kernel_ratio:.2f})")
        return out

    def failure(self) -> str:
        """One line saying why the check failed ("" when it passed)."""
        for g in self.graphs:
            if not (math.isfinite(g.rel_error) and g.rel_error <= self.bound):
                return f"{g.file} ({g.phase}): relative error {g.rel_error:.3g} > bound {self.bound:g}"
            if not g.kernels_ok:
                return (f"{g.file} ({g.phase}): a run's relative error is {g.kernel_ratio:.3g}x what exact integer "
                        f"arithmetic gives on it (allowed {KERNEL_SLACK:g}x + {KERNEL_FLOOR:g}; worst rel error "
                        f"{g.rel_error:.3g}): this CPU's {self.cpu.get('int8_kernel', 'int8')} kernels add error")
        if not self.ok:
            return "a chain's logits are not finite"
        return ""

    def to_json(self) -> dict:
        return {"method": self.method, "bound": self.bound, "ok": self.ok, "max_rel_error": self.max_rel_error,
                "max_kernel_error": self.max_kernel_error, "max_kernel_ratio": self.max_kernel_ratio,
                "kernel_slack": KERNEL_SLACK, "kernel_floor": KERNEL_FLOOR, "cpu": self.cpu,
                "graphs": [asdict(g) for g in self.graphs], "chains": [asdict(c) for c in self.chains]}


def evaluate(capture: Capture, float_dir: str | Path, quant_dir: str | Path, method: str, bound: float,
             threads: int | None = None, progress=None, chains: bool = True) -> Report:
    """The report for ``quant_dir`` against ``float_dir`` on what ``capture`` recorded there
    (``chains=False``: the per-graph part only, without the free-running chain comparison)."""
    from feather.runtime import cpu

    quant = load_manifest(quant_dir)
    host = cpu.detect()
    report = Report(method, bound, cpu={**host.to_json(), "line": host.line()})
    for path, graph in quant.graphs_with_paths():
        if graph.method != "float" or graph.decode_file:
            report.graphs += graph_errors(capture, Path(float_dir), Path(quant_dir), path, graph, threads)
        if progress is not None:
            progress()
    if chains:
        report.chains = chain_agreement(capture, quant_dir, threads)
    return report


def graph_errors(capture: Capture, float_dir: Path, quant_dir: Path, path: str, graph: GraphSpec,
                 threads: int | None) -> list[GraphError]:
    runs = capture.records.get(graph.file, [])
    output = _main_output(graph)
    ref = _session(float_dir / graph.file, threads)
    phases = {"prefill": (graph.file, graph.method), "decode": (graph.decode_file or graph.file,
                                                                graph.decode_method or graph.method)}
    out = []
    for phase, (file, how) in phases.items():
        feeds = [r.feeds for r in runs if r.phase == phase]
        if not feeds:
            continue
        sess = _session(quant_dir / file, threads)
        exact = emulate.reference_session(quant_dir / file, threads)
        errs, coss, exacts, kerns = [], [], [], []
        for f in feeds:
            q, r, fl = sess.run([output], f)[0], exact.run([output], f)[0], ref.run([output], f)[0]
            rel, cos = compare(fl, q)
            errs.append(rel)
            coss.append(cos)
            exacts.append(compare(fl, r)[0])
            kerns.append(compare(r, q)[0])
        # the kernel check runs per run: the same feeds through both, so one saturated decode
        # step cannot hide behind another run's larger error
        ratios = [e / x if x > 0 else (1.0 if e == 0 else math.inf) for e, x in zip(errs, exacts)]
        excess = max(e - (KERNEL_SLACK * x + KERNEL_FLOOR) for e, x in zip(errs, exacts))
        out.append(GraphError(path, file, how, phase, len(feeds), max(errs), min(coss), max(exacts), max(kerns),
                              max(ratios), excess))
    return out


def compare(f: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """(relative error ||q - f|| / ||f||, cosine) of two outputs, in float64."""
    f64, q64 = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    nf, nq = np.linalg.norm(f64), np.linalg.norm(q64)
    rel = float(np.linalg.norm(q64 - f64) / nf) if nf > 0 else float(np.linalg.norm(q64))
    cos = float(f64 @ q64 / (nf * nq)) if nf > 0 and nq > 0 else 0.0
    return (rel if math.isfinite(rel) else math.inf), (cos if math.isfinite(cos) else 0.0)


def chain_agreement(capture: Capture, quant_dir: str | Path, threads: int | None) -> list[ChainAgreement]:
    """The quantized chain run free on the capture's samples, against the float chain's results;
    one session open at a time when the chain is too large to hold beside the capture
    (``capture.one_at_a_time``: an int8-int4 7B chain holds both weight copies, 10.4 GB)."""
    from feather.calibration.capture import OneAtATime, one_at_a_time
    from feather.runtime import Pipeline
    from feather.runtime.backends.onnxruntime import OrtBackend
    from feather.runtime.check import compare as compare_results

    backend = OneAtATime(OrtBackend("cpu", threads)) if one_at_a_time(quant_dir)[0] else None
    pipe = Pipeline.load(quant_dir, threads=threads, backend=backend)
    out = []
    for sample, ref in zip(capture.samples, capture.results):
        res = pipe.generate(str(sample.image), sample.prompt, capture.max_new_tokens)
        cmp = compare_results(res, ref, math.inf)
        equal = sum(a == b for a, b in zip(res.tokens, ref.tokens))
        jac = [_jaccard(a["kept"], b["kept"]) for a, b in zip(res.stages, ref.stages)]
        worst = max(cmp.max_abs_diff, default=0.0)
        out.append(ChainAgreement(sample.prompt, equal, max(len(res.tokens), len(ref.tokens)), cmp.tokens_agree,
                                  jac, worst if math.isfinite(worst) else math.inf))
    return out


def _jaccard(a: list[int], b: list[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _main_output(graph: GraphSpec) -> str:
    for role in (graphs.HIDDEN, graphs.LOGITS, graphs.IMAGE_FEATURES, graphs.EMBEDS):
        if role in graph.outputs:
            return graph.outputs[role]
    raise KeyError(graph.file)


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    from feather.runtime.backends.onnxruntime import SESSION_CONFIG

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def quantized_graphs(manifest: Manifest) -> list[str]:
    """Files of the graphs a manifest records as quantized (empty for a float export)."""
    return [f for _, g in manifest.graphs_with_paths() for f, how in ((g.file, g.method),
                                                                       (g.decode_file, g.decode_method))
            if f and how not in (None, "float")]
