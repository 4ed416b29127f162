"""mgtool: grow neural networks the MixtureGrowth way (Pham et al., WACV 2024).

The library entry points are imported on first use, so ``mgtool --help`` and
``mgtool --version`` start without importing torch.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"

from mgtool.errors import MgtoolError  # noqa: E402  (pure Python, no torch)

_LAZY = {
    "convert": "mgtool.convert",
    "export": "mgtool.export",
    "load": "mgtool.loading",
    "load_checkpoint": "mgtool.loading",
    # Files and their metadata
    "read_meta": "mgtool.checkpoint",
    "save_checkpoint": "mgtool.checkpoint",
    "CheckpointMeta": "mgtool.checkpoint",
    "new_provenance": "mgtool.provenance",
    "read_plain_weights": "mgtool.weights",
    "checkpoint_info": "mgtool.info",
    # Models
    "TemplateMixingNet": "mgtool.model",
    "to_template_mixing": "mgtool.templates",
    "fresh_template_mixing": "mgtool.templates",
    "forward_flops": "mgtool.flops",
    "flops_per_training_sample": "mgtool.flops",
    # Stages (mgtool.fuse.fuse and mgtool.train.* are in their packages)
    "grow": "mgtool.grow_baselines",
    "recalibrate_bn": "mgtool.recalibrate",
    "train_plain": "mgtool.scratch",
    "write_subset": "mgtool.subset",
    # Recipes
    "load_recipe": "mgtool.recipe",
    "recipe_from_dict": "mgtool.recipe",
    "run_pipeline": "mgtool.pipeline",
}

# The public library API: these names, and the ``__all__`` of mgtool.archs, mgtool.data,
# mgtool.train and mgtool.fuse (tests/test_bench_scripts.py holds bench/ to it).
__all__ = ["MgtoolError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mgtool' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Keeps ``mgtool.convert``/``mgtool.export`` the functions: importing the submodules of
    the same name would otherwise bind the modules over them."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
