"""Training: the settings (one source), the optimizer factory, timm schedules, the trainer
(set-up, epoch, evaluation, saving), DDP helpers, resume state, and the library
functions behind ``train-small``, ``finetune`` and ``eval``.

Names are imported on first use, so ``mgtool.train.settings`` (torch-free) can be read by
the CLI's help without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate_checkpoint": "api", "finetune": "api", "train_config": "api", "train_small": "api",
    "EvalResult": "evaluate", "evaluate": "evaluate", "Lineage": "lineage", "RunPaths": "paths",
    "run_paths": "paths", "TrainConfig": "settings", "TrainSettings": "settings", "FitResult": "trainer",
    "Runtime": "trainer", "Trainer": "trainer", "fit": "trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mgtool.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mgtool.train.{module}"), name)
