"""Training: one engine (``fit``), schedules, DDP helpers, resume state, and the
library functions behind ``train-small``, ``finetune`` and ``eval``."""

from mgtool.train.api import evaluate_checkpoint, finetune, train_small
from mgtool.train.engine import EvalResult, FitResult, Lineage, Runtime, TrainConfig, evaluate, fit
from mgtool.train.paths import RunPaths, run_paths
from mgtool.train.recipes import recipe_for, train_config

__all__ = [
    "EvalResult",
    "FitResult",
    "Lineage",
    "RunPaths",
    "Runtime",
    "TrainConfig",
    "evaluate",
    "evaluate_checkpoint",
    "finetune",
    "fit",
    "recipe_for",
    "run_paths",
    "train_config",
    "train_small",
]
