"""The one discovery rule of every plugin registry: a plugin is one module in its package's folder,
and importing it registers it (``@register_family``, ``@register_dataset``)."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_plugins(package: ModuleType) -> None:
    """Import every module of ``package``: each registers its plugin as it is imported."""
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
