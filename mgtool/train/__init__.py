"""Training: the settings (one source), the optimizer factory, timm schedules, the trainer
(set-up, epoch, evaluation, saving), DDP helpers, resume state, and the library
functions behind ``train-small``, ``finetune`` and ``eval``."""

from mgtool.train.api import evaluate_checkpoint, finetune, train_config, train_small
from mgtool.train.evaluate import EvalResult, evaluate
from mgtool.train.lineage import Lineage
from mgtool.train.paths import RunPaths, run_paths
from mgtool.train.settings import TrainConfig, TrainSettings
from mgtool.train.trainer import FitResult, Runtime, Trainer, fit

__all__ = [
    "EvalResult",
    "FitResult",
    "Lineage",
    "RunPaths",
    "Runtime",
    "TrainConfig",
    "TrainSettings",
    "Trainer",
    "evaluate",
    "evaluate_checkpoint",
    "finetune",
    "fit",
    "run_paths",
    "train_config",
    "train_small",
]
