"""Registry of data sets: name -> ``Dataset``, filled by ``@register_dataset``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from mgtool.data.augment import Augment
from mgtool.data.config import DataConfig
from mgtool.errors import MgtoolError

DATA_DIR_ENV = "MGTOOL_DATA_DIR"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    shape: tuple[int, int, int]  # (C, H, W) at the training resolution
    num_classes: int
    train_size: int | None
    test_size: int | None
    in_memory: bool


@dataclass(frozen=True)
class Arrays:
    """A whole split as uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``, on the CPU."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Dataset:
    """One kind of data set. In-memory sets implement ``arrays``; folder sets ``folder``.

    ``options`` are the defaults of the options a user may set with ``--data-opt``;
    the augmentation options (``crop_padding``, ``flip``, ``cutout``) of in-memory sets
    follow the paper (crop + flip, cutout 16 on CIFAR).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    in_memory: ClassVar[bool] = True
    train_preset: ClassVar[str] = "standard"  # training defaults: a name in mgtool.train.settings.PRESETS

    def info(self, cfg: DataConfig) -> DatasetInfo:
        raise NotImplementedError

    def arrays(self, cfg: DataConfig, split: str) -> Arrays:
        raise NotImplementedError(f"{self.name} is not an in-memory data set")

    def folder(self, cfg: DataConfig, split: str, *, train: bool) -> TorchDataset:
        raise NotImplementedError(f"{self.name} is not a folder data set")

    def augment(self, cfg: DataConfig) -> Augment:
        o = cfg.options
        fill = tuple(round(m * 255) for m in self.normalisation(cfg)[0])
        return Augment(int(o.get("crop_padding", 0)), bool(o.get("flip", False)),
                       int(o.get("cutout", 0)), fill)

    def normalisation(self, cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std


_DATASETS: dict[str, Dataset] = {}


def register_dataset(cls: type[Dataset]) -> type[Dataset]:
    if cls.name in _DATASETS:
        raise ValueError(f"data set {cls.name!r} is registered twice")
    _DATASETS[cls.name] = cls()
    return cls


def _ensure_loaded() -> None:
    from mgtool.data import sources  # noqa: F401  (importing registers the data sets)


def get_dataset(name: str) -> Dataset:
    _ensure_loaded()
    try:
        return _DATASETS[name]
    except KeyError:
        raise MgtoolError(f"unknown data set {name!r}; known: {', '.join(sorted(_DATASETS))}") from None


def dataset_names() -> list[str]:
    _ensure_loaded()
    return sorted(_DATASETS)


def data_config(name: str, data_dir: str | Path | None = None, options: dict[str, Any] | None = None,
                download: bool = False) -> DataConfig:
    """A resolved ``DataConfig``: defaults filled in, unknown options refused, values typed."""
    dataset = get_dataset(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(dataset.options))
    if unknown:
        known = ", ".join(sorted(dataset.options)) or "none"
        raise MgtoolError(f"{name}: unknown data option(s) {unknown}; known: {known}")
    resolved = {}
    for key, default in dataset.options.items():
        value = options.get(key, default)
        resolved[key] = _typed(name, key, value, default)
    return DataConfig(name, None if data_dir is None else str(data_dir), resolved, download)


def resolve_config(cfg: DataConfig) -> DataConfig:
    """Re-resolve a stored config (e.g. from checkpoint metadata) against this mgtool's registry."""
    return data_config(cfg.name, cfg.data_dir, cfg.options, cfg.download)


def _typed(dataset: str, key: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise MgtoolError(f"{dataset}: data option {key}={value!r} is not a valid "
                          f"{type(default).__name__}") from None


def data_root(cfg: DataConfig) -> Path:
    """``--data-dir``, else ``$MGTOOL_DATA_DIR``, else ``./data``."""
    if cfg.data_dir is not None:
        return Path(cfg.data_dir).expanduser()
    return Path(os.environ.get(DATA_DIR_ENV) or "data").expanduser()


def check_split(name: str, split: str) -> str:
    split = "test" if split == "val" else split
    if split not in SPLITS:
        raise MgtoolError(f"{name}: unknown split {split!r}; use 'train' or 'test'")
    return split
