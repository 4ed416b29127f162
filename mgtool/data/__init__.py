"""Data sets by name (registry), augmentation and loaders. See .notes/data_api.md / README."""

from mgtool.data.augment import Augment, augment_batch
from mgtool.data.config import DataConfig
from mgtool.data.loaders import (
    DeviceLoader,
    HostLoader,
    Normaliser,
    eval_batches,
    normaliser,
    split_size,
    train_loader,
)
from mgtool.data.registry import (
    ArrayFilesDataset,
    Arrays,
    Dataset,
    DatasetInfo,
    DataSource,
    FolderDataset,
    InMemoryDataset,
    data_config,
    data_root,
    data_source,
    dataset_names,
    get_dataset,
    register_dataset,
    resolve_config,
)


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Shape, classes and split sizes of a (resolved or stored) config."""
    cfg = resolve_config(cfg)
    return get_dataset(cfg.name).info(cfg)


__all__ = [
    "ArrayFilesDataset",
    "Arrays",
    "Augment",
    "DataConfig",
    "DataSource",
    "Dataset",
    "DatasetInfo",
    "DeviceLoader",
    "FolderDataset",
    "HostLoader",
    "InMemoryDataset",
    "Normaliser",
    "augment_batch",
    "data_config",
    "data_root",
    "data_source",
    "dataset_info",
    "dataset_names",
    "eval_batches",
    "get_dataset",
    "normaliser",
    "register_dataset",
    "resolve_config",
    "split_size",
    "train_loader",
]
