"""feather.eval: score a pruned LLaVA on referring-expression localization, and see where its
kept tokens sit.

    from feather.eval import evaluate, load_samples, open_models, table
    report = evaluate(open_models("tiny", None), load_samples("data.jsonl"))
    print(table(report))

See docs/evaluation.md. Torch is needed only to run a checkpoint (the reference); an export
folder runs on the base install.
"""

from feather.eval.data import PROMPT, Sample, load_samples
from feather.eval.harness import evaluate, score_sample, summarize
from feather.eval.models import Answer, ChainModel, Model, ReferenceModel, label, open_models
from feather.eval.report import plot, table
from feather.eval.scoring import Score, gt_in_view, iou, parse_box, score_answer
from feather.eval.sweep import parse_sweep

__all__ = [
    "PROMPT", "Answer", "ChainModel", "Model", "ReferenceModel", "Sample", "Score", "evaluate", "gt_in_view", "iou",
    "label", "load_samples", "open_models", "parse_box", "parse_sweep", "plot", "score_answer", "score_sample",
    "summarize", "table",
]
