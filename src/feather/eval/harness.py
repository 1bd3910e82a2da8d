"""The evaluation loop: ask each model about each sample, score, summarise, save as it goes.

    from feather.eval import evaluate, load_samples, open_models
    report = evaluate(open_models("tiny", None), load_samples("refcoco_val.jsonl"), json_out="out.json")
    report["runs"]["feather K=8+16 R=0.7 s=3"]["summary"]["acc@0.5"]

With ``json_out`` the report is rewritten (atomically) every few seconds, at the end and
when interrupted, and samples already in it are skipped: a stopped run resumes where it
stopped. Summaries cover the samples asked for in this call.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from feather.errors import InputError, OutputError
from feather.eval.data import Sample
from feather.eval.models import Model, label
from feather.eval.scoring import gt_in_view, score_answer, stage_stats
from feather.flops import image_token_reduction
from feather.folder import write_atomic
from feather.image import load_image
from feather.overlay import View

FORMAT = 1
SAVE_EVERY_S = 5.0  # rewrite --json at most this often (and at the end)


def evaluate(models: list[Model], samples: list[Sample], max_new_tokens: int = 128,
             json_out: str | os.PathLike | None = None, progress: bool = True, data: str = "") -> dict:
    """Score every model on every sample. Returns ``{"format", "data", "max_new_tokens",
    "runs": {label: {"config", "dims", "summary", "samples": [record, ...]}}}``; see
    ``summarize`` for the summary and ``score_sample`` for a record."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens: got {max_new_tokens!r}, expected an integer >= 1")
    report = _resume(json_out, data, max_new_tokens)
    todo = []
    for model in models:
        run = report["runs"].setdefault(label(model.config), {
            "config": model.config.to_dict(), "dims": {"grid": model.dims.grid, "n_image": model.dims.n_image},
            "summary": {}, "samples": []})
        _check_same_run(json_out, run, model)
        done = {r["line"] for r in run["samples"]}
        todo += [(model, run, s) for s in samples if s.line not in done]
    last_write = time.monotonic()
    try:
        with _Bar(progress, len(todo)) as bar:
            for model, run, sample in todo:
                bar.describe(label(model.config))
                run["samples"].append(score_sample(model, sample, max_new_tokens))
                if json_out is not None and time.monotonic() - last_write > SAVE_EVERY_S:
                    _write_json(Path(json_out), report)
                    last_write = time.monotonic()
                bar.advance()
    finally:  # an interrupted run keeps what it scored
        lines = {s.line for s in samples}
        for model in models:
            run = report["runs"][label(model.config)]
            run["summary"] = summarize([r for r in run["samples"] if r["line"] in lines], model)
        if json_out is not None:
            _write_json(Path(json_out), report)
    return report


def score_sample(model: Model, sample: Sample, max_new_tokens: int) -> dict:
    """Ask ``model`` about ``sample`` and score it. The record: ``line``, ``split``,
    ``answer``, ``box`` (parsed, or None), ``iou``, ``time_s``, ``gt`` (the truth in the
    normalised view frame), ``gt_tokens`` and per stage ``n_kept``, ``rows``, ``gt_kept``.
    A target the crop removes is recorded as ``{"line", "split", "outside": true}``, unasked."""
    img = load_image(sample.image)
    view = View.of(img.width, img.height, model.image_spec)
    truth = gt_in_view(sample.box_xyxy, view)
    if truth is None:
        return {"line": sample.line, "split": sample.split, "outside": True}
    t = time.perf_counter()
    answer = model.answer(img, sample.prompt, max_new_tokens)
    elapsed = time.perf_counter() - t
    score = score_answer(answer.text, truth)
    gt_tokens, stages = stage_stats(answer.stages, truth, view, model.dims.grid)
    return {"line": sample.line, "split": sample.split, "answer": answer.text,
            "box": None if score.box is None else list(score.box), "iou": score.iou, "time_s": elapsed,
            "gt": list(truth), "gt_tokens": gt_tokens, "stages": stages}


def summarize(records: list[dict], model: Model, by_split: bool = True) -> dict:
    """Acc@0.5, Acc@0.25, parse rate, mean IoU (unparsed = 0), mean seconds per sample, the
    paper's FLOPs reduction for the kept counts seen, and per stage: mean kept, the kept
    tokens' share per image row, the bottom third's share, and the mean fraction of the
    ground truth's tokens that survive. With ``by_split``, the same per ``split``."""
    scored = [r for r in records if not r.get("outside")]
    n = len(scored)
    ious = np.array([r["iou"] for r in scored], dtype=float)
    parsed = np.array([r["box"] is not None for r in scored], dtype=bool)
    summary = {
        "n": n, "outside": len(records) - n,
        "acc@0.5": _mean(parsed & (ious >= 0.5)), "acc@0.25": _mean(parsed & (ious >= 0.25)),
        "parse_rate": _mean(parsed), "mean_iou": _mean(ious),
        "time_per_sample_s": _mean(np.array([r["time_s"] for r in scored], dtype=float)),
    }
    summary["stages"] = _stage_summary(scored)
    d = model.dims
    kept = [(s["layer"], int(round(s["mean_kept"]))) for s in summary["stages"]]
    summary["flops_reduction"] = image_token_reduction(d.num_layers, d.hidden, d.intermediate, d.n_image, kept)
    splits = sorted({r["split"] for r in scored if r["split"] is not None})
    if by_split and splits:
        summary["splits"] = {s: summarize([r for r in scored if r["split"] == s], model, False) for s in splits}
    return summary


def _stage_summary(scored: list[dict]) -> list[dict]:
    if not scored:
        return []
    out = []
    for j, first in enumerate(scored[0]["stages"]):
        rows = np.sum([r["stages"][j]["rows"] for r in scored], axis=0).astype(float)
        total = rows.sum()
        share = rows / total if total else rows
        third = len(rows) - len(rows) // 3  # first row of the bottom third
        with_gt = [r for r in scored if r["gt_tokens"]]
        out.append({
            "layer": first["layer"],
            "mean_kept": _mean(np.array([r["stages"][j]["n_kept"] for r in scored], dtype=float)),
            "row_share": share.tolist(),
            "bottom_third_share": float(share[third:].sum()),
            "gt_survival": _mean(np.array([r["stages"][j]["gt_kept"] / r["gt_tokens"] for r in with_gt])),
        })
    return out


def _mean(a: np.ndarray) -> float:
    return float(np.mean(a)) if len(a) else 0.0


def _resume(json_out, data: str, max_new_tokens: int) -> dict:
    fresh = {"format": FORMAT, "data": data, "max_new_tokens": max_new_tokens, "runs": {}}
    if json_out is None or not Path(json_out).exists():
        return fresh
    path = Path(json_out)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot resume from it ({' '.join(str(err).split())}); "
                         "remove it or name another --json file") from None
    if not isinstance(old, dict) or old.get("format") != FORMAT or not isinstance(old.get("runs"), dict):
        raise InputError(f"{path}: not a feather-eval report; remove it or name another --json file")
    for key in ("data", "max_new_tokens"):
        if old.get(key) != fresh[key]:
            raise InputError(f"{path}: holds a run with {key}={old.get(key)!r}, this one has {fresh[key]!r}; "
                             "name another --json file to keep both")
    return old


def _check_same_run(json_out, run: dict, model: Model) -> None:
    if run["config"] != model.config.to_dict():
        raise InputError(f"{json_out}: run {label(model.config)!r} was made with {run['config']}; "
                         "name another --json file")


def write_report(path: str | os.PathLike, report: dict) -> None:
    """Write ``report`` to ``path`` atomically (``OutputError`` in one line)."""
    _write_json(Path(path), report)


def _write_json(path: Path, report: dict) -> None:
    try:
        write_atomic(path, json.dumps(report, indent=1))
    except OSError as err:
        raise OutputError(f"{path}: cannot write the report ({' '.join(str(err).split())})") from None


class _Bar:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.progress = self.task = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.task = self.progress.add_task("", total=total)

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def describe(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)
