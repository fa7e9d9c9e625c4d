"""The SVI training loop and what makes it safe: history, EMA, checkpoints, resume, guards.

``fit(model, guide, data, ...)`` trains through a Pyro ELBO used as an ``nn.Module`` and a
plain torch optimizer; see ``docs/training.md`` for the metrics and checkpoint formats.
"""

from .ema import EMA
from .evaluate import EVAL_SEED_OFFSET, evaluate_elbo, evaluate_split, evaluation_report
from .history import METRICS_NAME, History, RecordKind
from .loop import fit
from .options import LRSchedule, Precision, learning_rate
from .report import ComparisonReport, ELBOEvaluation, EvaluationReport
from .sampler import EpochSampler

__all__ = [
    "ComparisonReport",
    "ELBOEvaluation",
    "EMA",
    "EvaluationReport",
    "EVAL_SEED_OFFSET",
    "METRICS_NAME",
    "EpochSampler",
    "History",
    "LRSchedule",
    "Precision",
    "RecordKind",
    "evaluate_elbo",
    "evaluate_split",
    "evaluation_report",
    "fit",
    "learning_rate",
]
