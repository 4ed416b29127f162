"""The MNIST family (MNIST, Fashion-MNIST): four idx files, plain or gzipped."""

from __future__ import annotations

import gzip
import math
import struct
from functools import lru_cache
from pathlib import Path

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
from mgtool.errors import MgtoolError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (plain or .gz) of unsigned bytes as a uint8 tensor of its shape."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise MgtoolError(f"{path}: cannot read idx file ({e}); is it truncated?") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise MgtoolError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    if len(raw) - start != math.prod(dims):
        raise MgtoolError(f"{path}: idx header says {dims} but the file holds "
                          f"{len(raw) - start} values; is it truncated?")
    return torch.frombuffer(bytearray(raw[start:]), dtype=torch.uint8).view(*dims)


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """The idx encoding of a uint8 tensor (magic 0x0000080N, big-endian dims, raw bytes)."""
    if tensor.dtype != torch.uint8:
        tensor = tensor.to(torch.uint8)
    header = bytes([0, 0, 0x08, tensor.ndim]) + b"".join(struct.pack(">I", d) for d in tensor.shape)
    return header + tensor.contiguous().numpy().tobytes()


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def has_idx_files(folder: Path) -> bool:
    """Whether ``folder`` holds the four idx files of an MNIST-family data set (.gz or not)."""
    return folder.is_dir() and all(_idx_path(folder, stem) for files in IDX_FILES.values() for stem in files)


class _IdxDataset(ArrayFilesDataset):
    subdirs: tuple[str, ...] = ()
    system_dirs: tuple[Path, ...] = ()
    torchvision_name: str = ""
    get_it: str = ""
    options = {"crop_padding": 2, "flip": True, "cutout": 0}
    mean, std = (0.5,), (0.5,)

    def info(self, cfg: DataConfig) -> DatasetInfo:
        return DatasetInfo(self.name, (1, 28, 28), 10, 60000, 10000, True)

    def candidates(self, cfg: DataConfig) -> list[Path]:
        return search_path(cfg, self.subdirs, self.system_dirs)

    def locate(self, cfg: DataConfig) -> Path:
        looked = self.candidates(cfg)
        for folder in looked:
            if has_idx_files(folder):
                return folder
        if cfg.download:
            import torchvision

            root = data_root(cfg)
            root.mkdir(parents=True, exist_ok=True)
            try:
                getattr(torchvision.datasets, self.torchvision_name)(str(root), download=True)
            except Exception as e:  # network errors come in many types
                raise MgtoolError(f"{self.name}: download into {root} failed ({e})") from None
            return self.locate(DataConfig(cfg.name, cfg.data_dir, cfg.options, False))
        raise not_found(self.name, "train-images-idx3-ubyte[.gz] and the other three idx files", looked, cfg,
                        f"pass --data-dir DIR, or --download to fetch it{self.get_it}")

    def data_files(self, cfg: DataConfig) -> list[Path]:
        folder = self.locate(cfg)
        return [p for files in IDX_FILES.values() for stem in files if (p := _idx_path(folder, stem))]

    def arrays(self, cfg: DataConfig, split: str) -> Arrays:
        split = check_split(self.name, split)
        return _idx_arrays(str(self.locate(cfg)), split)

    def write_arrays(self, folder: Path, split: str, arrays: Arrays) -> None:
        split = check_split(self.name, split)
        if arrays.images.ndim != 4 or arrays.images.shape[1] != 1:
            raise MgtoolError(f"{self.name}: idx files hold 1-channel images, got {tuple(arrays.images.shape)}")
        folder.mkdir(parents=True, exist_ok=True)
        for stem, tensor in zip(IDX_FILES[split], (arrays.images[:, 0], arrays.labels), strict=True):
            for stale in (folder / stem, folder / f"{stem}.gz"):  # the reader takes a plain file first
                stale.unlink(missing_ok=True)
            tmp = folder / f".{stem}.gz.tmp"
            tmp.write_bytes(gzip.compress(idx_bytes(tensor), compresslevel=1, mtime=0))
            tmp.replace(folder / f"{stem}.gz")
        _idx_arrays.cache_clear()


@lru_cache(maxsize=8)
def _idx_arrays(folder: str, split: str) -> Arrays:
    images_stem, labels_stem = IDX_FILES[split]
    images_path = _idx_path(Path(folder), images_stem)
    labels_path = _idx_path(Path(folder), labels_stem)
    assert images_path is not None and labels_path is not None
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise MgtoolError(f"{folder}: {split} images {tuple(images.shape)} and labels "
                          f"{tuple(labels.shape)} do not match")
    return Arrays(images.unsqueeze(1).contiguous(), labels.long())


@register_dataset
class FashionMNIST(_IdxDataset):
    name = "fashion-mnist"
    summary = "Fashion-MNIST, 1x28x28, 10 classes (also found in Debian's /usr/share/datasets)"
    subdirs = ("FashionMNIST/raw", "fashion-mnist")
    system_dirs = (Path("/usr/share/datasets/fashion-mnist"),)
    torchvision_name = "FashionMNIST"
    get_it = " (or on Debian: apt-get install dataset-fashion-mnist)"
    mean, std = (0.2860,), (0.3530,)


@register_dataset
class MNIST(_IdxDataset):
    name = "mnist"
    summary = "MNIST digits, 1x28x28, 10 classes"
    subdirs = ("MNIST/raw", "mnist")
    torchvision_name = "MNIST"
    options = {"crop_padding": 2, "flip": False, "cutout": 0}  # flipped digits are other digits
    mean, std = (0.1307,), (0.3081,)
