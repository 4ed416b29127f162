"""CIFAR-10 and CIFAR-100 in torchvision's layout (the python pickles of the official tarball).

The batches are read with a restricted unpickler that builds only numpy arrays, dicts,
lists and strings, so a crafted file cannot run code; torchvision's own reader is used
for downloads only.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from mgtool.data.config import DataConfig
from mgtool.data.registry import (
    ArrayFilesDataset,
    Arrays,
    DatasetInfo,
    check_split,
    data_root,
    not_found,
    register_dataset,
    search_path,
)
from mgtool.errors import MgtoolError, first_line

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SIDE = 32
_ALLOWED = {  # what numpy arrays pickled by Python 2 or 3 (any protocol) refer to
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("__builtin__", "bytes"),
    ("builtins", "bytes"),
}


_NUMPY_2 = importlib.util.find_spec("numpy._core") is not None


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and _NUMPY_2:  # numpy 1 names; numpy 2 warns on them
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: str) -> Arrays:
    """One pickled CIFAR batch as uint8 ``(N, 3, 32, 32)`` images and int64 labels."""
    import numpy as np

    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (OSError, EOFError, ValueError, TypeError, AttributeError, pickle.UnpicklingError) as e:
        raise MgtoolError(f"{path}: not a CIFAR batch ({first_line(e)}); delete it and pass --download") from None
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * SIDE * SIDE or not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise MgtoolError(f"{path}: not a CIFAR batch (expected 'data' uint8 N x 3072 and "
                          f"'{label_key}' of N labels); delete it and pass --download")
    images = torch.from_numpy(data.copy()).view(-1, 3, SIDE, SIDE)
    return Arrays(images, torch.tensor(labels, dtype=torch.long))


def write_batch(path: Path, arrays: Arrays, label_key: str) -> None:
    """``arrays`` as one pickled batch in the official layout (what ``read_batch`` reads)."""
    batch = {"batch_label": path.name, label_key: arrays.labels.tolist(),
             "data": arrays.images.reshape(len(arrays), 3 * SIDE * SIDE).numpy(),
             "filenames": [f"{i}.png" for i in range(len(arrays))]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(pickle.dumps(batch, protocol=2))
    tmp.replace(path)


class _Cifar(ArrayFilesDataset):
    folder_name = ""
    torchvision_name = ""
    files: dict[str, tuple[str, ...]] = {}
    label_key = ""
    classes = 10
    options = {"crop_padding": 4, "flip": True, "cutout": 16}
    mean, std = CIFAR_MEAN, CIFAR_STD

    def info(self, cfg: DataConfig) -> DatasetInfo:
        return DatasetInfo(self.name, (3, SIDE, SIDE), self.classes, 50000, 10000, True)

    def data_files(self, cfg: DataConfig) -> list[Path]:
        folder = self.locate(cfg) / self.folder_name
        return [folder / name for split in self.files.values() for name in split if (folder / name).is_file()]

    def locate(self, cfg: DataConfig) -> Path:
        looked = search_path(cfg, (self.name,))
        for folder in looked:
            if (folder / self.folder_name).is_dir():
                return folder
        if cfg.download:
            import torchvision

            root = data_root(cfg)
            root.mkdir(parents=True, exist_ok=True)
            try:
                getattr(torchvision.datasets, self.torchvision_name)(str(root), download=True)
            except Exception as e:  # network and archive errors come in many types
                raise MgtoolError(f"{self.name}: download into {root} failed ({first_line(e)})") from None
            return root
        raise not_found(self.name, f"{self.folder_name}/", looked, cfg,
                        "pass --data-dir DIR (the folder that holds it), or --download to fetch it")

    def arrays(self, cfg: DataConfig, split: str) -> Arrays:
        split = check_split(self.name, split)
        return _cifar_arrays(str(self.locate(cfg) / self.folder_name), self.files[split], self.label_key)

    def write_arrays(self, folder: Path, split: str, arrays: Arrays) -> None:
        split = check_split(self.name, split)
        if arrays.images.shape[1:] != (3, SIDE, SIDE):
            raise MgtoolError(f"{self.name}: batches hold 3x32x32 images, got {tuple(arrays.images.shape)}")
        target = folder / self.folder_name
        target.mkdir(parents=True, exist_ok=True)
        names = self.files[split]
        chunks = torch.arange(len(arrays)).tensor_split(len(names))
        for name, idx in zip(names, chunks, strict=True):
            write_batch(target / name, Arrays(arrays.images[idx], arrays.labels[idx]), self.label_key)
        _cifar_arrays.cache_clear()


@lru_cache(maxsize=4)
def _cifar_arrays(folder: str, names: tuple[str, ...], label_key: str) -> Arrays:
    missing = [n for n in names if not (Path(folder) / n).is_file()]
    if missing:
        raise MgtoolError(f"{folder}: missing {', '.join(missing)}; delete the folder and pass --download")
    parts = [read_batch(Path(folder) / n, label_key) for n in names]
    return Arrays(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


@register_dataset
class Cifar10(_Cifar):
    name = "cifar10"
    summary = "CIFAR-10, 3x32x32, 10 classes (torchvision layout; --download)"
    folder_name = "cifar-10-batches-py"
    torchvision_name = "CIFAR10"
    files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    label_key = "labels"


@register_dataset
class Cifar100(_Cifar):
    name = "cifar100"
    summary = "CIFAR-100, 3x32x32, 100 classes (torchvision layout; --download)"
    folder_name = "cifar-100-python"
    torchvision_name = "CIFAR100"
    files = {"train": ("train",), "test": ("test",)}
    label_key = "fine_labels"
    classes = 100
