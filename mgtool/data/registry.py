"""Registry of data sets: name -> ``Dataset``, filled by ``@register_dataset``.

Two kinds of data set, told apart by type, never by a flag:

* ``InMemoryDataset``: a whole split as uint8 arrays (``arrays(cfg, split) -> Arrays``).
  ``ArrayFilesDataset`` is one read from files in a folder; it can also write arrays in
  its own layout, which is how subsets are made (``mgtool.subset``).
* ``FolderDataset``: a folder of images read sample by sample
  (``folder(cfg, split, train=...) -> torch Dataset``).

Every module in ``mgtool/data/sources/`` is imported on the first registry look-up, so a
new data set is one file there (plus its test).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from mgtool.data.augment import Augment
from mgtool.data.config import DataConfig
from mgtool.errors import MgtoolError, SettingError, did_you_mean
from mgtool.plugins import import_plugins

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


class Dataset(ABC):
    """One kind of data set: what every kind has (name, options, normalisation, augmentation).

    ``options`` are the defaults of the options a user may set with ``--data-opt``;
    the augmentation options (``crop_padding``, ``flip``, ``cutout``) of in-memory sets
    follow the paper (crop + flip, cutout 16 on CIFAR).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    train_preset: ClassVar[str] = "standard"  # training defaults: a name in mgtool.train.settings.PRESETS

    @abstractmethod
    def info(self, cfg: DataConfig) -> DatasetInfo: ...

    def locate(self, cfg: DataConfig) -> Path | None:
        """The folder the data is read from; None for generated data."""
        return None

    def data_files(self, cfg: DataConfig) -> list[Path]:
        """The files the data is read from (resume checks them for changes): by default every
        file under ``locate``'s folder."""
        folder = self.locate(cfg)
        return [] if folder is None else sorted(p for p in folder.rglob("*") if p.is_file())

    def augment(self, cfg: DataConfig) -> Augment:
        o = cfg.options
        fill = tuple(round(m * 255) for m in self.normalisation(cfg)[0])
        return Augment(int(o.get("crop_padding", 0)), bool(o.get("flip", False)),
                       int(o.get("cutout", 0)), fill)

    def normalisation(self, cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std


class InMemoryDataset(Dataset):
    """A data set whose splits fit in memory as uint8 arrays (trained from the device)."""

    @abstractmethod
    def arrays(self, cfg: DataConfig, split: str) -> Arrays: ...


class ArrayFilesDataset(InMemoryDataset):
    """An in-memory data set read from files in a folder, in a layout it can also write."""

    @abstractmethod
    def locate(self, cfg: DataConfig) -> Path: ...

    @abstractmethod
    def write_arrays(self, folder: Path, split: str, arrays: Arrays) -> None:
        """Write ``arrays`` as ``split`` into ``folder``, so that ``data_dir=folder`` reads them."""


class FolderDataset(Dataset):
    """A data set read image by image from class folders (trained through a DataLoader)."""

    @abstractmethod
    def locate(self, cfg: DataConfig) -> Path: ...

    @abstractmethod
    def folder(self, cfg: DataConfig, split: str, *, train: bool) -> TorchDataset: ...


_DATASETS: dict[str, Dataset] = {}


def register_dataset(cls: type[Dataset]) -> type[Dataset]:
    """Class decorator: register one instance under ``cls.name``; a name is taken once."""
    if cls.name in _DATASETS:
        raise ValueError(f"data set {cls.name!r} is registered twice")
    if issubclass(cls, InMemoryDataset) == issubclass(cls, FolderDataset):
        raise TypeError(f"data set {cls.name!r} must be an InMemoryDataset or a FolderDataset")
    _DATASETS[cls.name] = cls()
    return cls


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    from mgtool.data import sources

    import_plugins(sources)
    _loaded = True


def get_dataset(name: str) -> Dataset:
    _ensure_loaded()
    try:
        return _DATASETS[name]
    except KeyError:
        raise SettingError("data", f"names no known data set: {name!r}{did_you_mean(name, _DATASETS)}; known: "
                                   f"{', '.join(sorted(_DATASETS))}") from None


def dataset_names() -> list[str]:
    _ensure_loaded()
    return sorted(_DATASETS)


def data_config(name: str, data_dir: str | Path | None = None, options: dict[str, Any] | None = None,
                download: bool = False) -> DataConfig:
    """A resolved ``DataConfig``: defaults filled in, unknown options refused, values typed,
    ``data_dir`` made absolute (so a checkpoint names the same folder from any directory)."""
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
    folder = None if data_dir is None else os.path.abspath(Path(data_dir).expanduser())
    return DataConfig(name, folder, resolved, download)


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


def search_path(cfg: DataConfig, subdirs: tuple[str, ...] = (), system_dirs: tuple[Path, ...] = ()) -> list[Path]:
    """Where a data set is looked for: the root and its ``subdirs``; the ``system_dirs`` only
    when no folder was named (a named folder is the only place looked in)."""
    root = data_root(cfg)
    found = [root, *(root / s for s in subdirs)]
    return found if cfg.data_dir is not None else [*found, *system_dirs]


def not_found(name: str, what: str, looked: list[Path], cfg: DataConfig, hint: str) -> MgtoolError:
    """The error for data that is nowhere it was looked for; it names every folder."""
    places = ", ".join(str(p) for p in dict.fromkeys(looked))
    named = data_root(cfg) if cfg.data_dir is not None else None
    missing = f" ({named} does not exist)" if named is not None and not named.exists() else ""
    return MgtoolError(f"{name}: data not found; looked for {what} in {places}{missing}; {hint}")


def check_split(name: str, split: str) -> str:
    split = "test" if split == "val" else split
    if split not in SPLITS:
        raise SettingError("split", f"must be train, test or val, got {split!r} (data set {name})")
    return split


@dataclass(frozen=True)
class DataSource:
    """Where a split was read from and how many images it gives (reported by ``eval --json``)."""

    path: str | None  # None: generated data (synthetic)
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"data_path": self.path, "images": self.images}


def split_length(cfg: DataConfig, split: str) -> int:
    dataset = get_dataset(cfg.name)
    if isinstance(dataset, InMemoryDataset):
        return len(dataset.arrays(cfg, split))
    assert isinstance(dataset, FolderDataset)
    return len(dataset.folder(cfg, split, train=False))  # type: ignore[arg-type]


def data_source(cfg: DataConfig, split: str = "test", limit: int | None = None) -> DataSource:
    """The folder ``cfg`` reads ``split`` from, and the number of images used (``limit`` applied)."""
    cfg = resolve_config(cfg)
    split = check_split(cfg.name, split)
    dataset = get_dataset(cfg.name)
    folder = dataset.locate(cfg)
    n = split_length(cfg, split)
    return DataSource(None if folder is None else str(folder), min(n, limit) if limit is not None else n)
