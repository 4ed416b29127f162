"""The registered data sets: where each is looked for and how its files are read."""

from __future__ import annotations

import gzip
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset as TorchDataset

from mgtool.data.config import DataConfig
from mgtool.data.registry import (
    Arrays,
    Dataset,
    DatasetInfo,
    check_split,
    data_root,
    register_dataset,
)
from mgtool.errors import MgtoolError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 0.875  # resize to size / 0.875, centre-crop size (the standard 224 <- 256)


def _looked(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in dict.fromkeys(paths))


# ---------------------------------------------------------------- idx (MNIST family)

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


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def has_idx_files(folder: Path) -> bool:
    """Whether ``folder`` holds the four idx files of an MNIST-family data set (.gz or not)."""
    return folder.is_dir() and all(_idx_path(folder, stem) for files in IDX_FILES.values() for stem in files)


class _IdxDataset(Dataset):
    subdirs: tuple[str, ...] = ()
    system_dirs: tuple[Path, ...] = ()
    torchvision_name: str = ""
    get_it: str = ""
    options = {"crop_padding": 2, "flip": True, "cutout": 0}
    mean, std = (0.5,), (0.5,)

    def info(self, cfg: DataConfig) -> DatasetInfo:
        return DatasetInfo(self.name, (1, 28, 28), 10, 60000, 10000, True)

    def candidates(self, cfg: DataConfig) -> list[Path]:
        root = data_root(cfg)
        return [root, *(root / s for s in self.subdirs), *self.system_dirs]

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
        raise MgtoolError(
            f"{self.name}: data not found; looked for train-images-idx3-ubyte[.gz] and the other "
            f"three idx files in {_looked(looked)}; pass --data-dir DIR, or --download to fetch "
            f"it{self.get_it}"
        )

    def arrays(self, cfg: DataConfig, split: str) -> Arrays:
        split = check_split(self.name, split)
        return _idx_arrays(str(self.locate(cfg)), split)


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


# ---------------------------------------------------------------- CIFAR


class _Cifar(Dataset):
    folder_name = ""
    torchvision_name = ""
    classes = 10
    options = {"crop_padding": 4, "flip": True, "cutout": 16}
    mean, std = CIFAR_MEAN, CIFAR_STD

    def info(self, cfg: DataConfig) -> DatasetInfo:
        return DatasetInfo(self.name, (3, 32, 32), self.classes, 50000, 10000, True)

    def locate(self, cfg: DataConfig) -> Path:
        root = data_root(cfg)
        looked = [root, root / self.name]
        for folder in looked:
            if (folder / self.folder_name).is_dir():
                return folder
        if cfg.download:
            root.mkdir(parents=True, exist_ok=True)
            self._torchvision(root, "train", download=True)
            return root
        raise MgtoolError(
            f"{self.name}: data not found; looked for {self.folder_name}/ in {_looked(looked)}; "
            "pass --data-dir DIR (the folder that holds it), or --download to fetch it"
        )

    def _torchvision(self, root: Path, split: str, download: bool = False) -> Any:
        import torchvision

        try:
            return getattr(torchvision.datasets, self.torchvision_name)(
                str(root), train=split == "train", download=download)
        except RuntimeError as e:
            raise MgtoolError(f"{self.name}: {root / self.folder_name}: {e}; "
                              "delete it and pass --download to fetch it again") from None

    def arrays(self, cfg: DataConfig, split: str) -> Arrays:
        split = check_split(self.name, split)
        return _cifar_arrays(self.name, str(self.locate(cfg)), split)


@lru_cache(maxsize=4)
def _cifar_arrays(name: str, root: str, split: str) -> Arrays:
    from mgtool.data.registry import get_dataset

    dataset = get_dataset(name)
    assert isinstance(dataset, _Cifar)
    tv = dataset._torchvision(Path(root), split)
    images = torch.from_numpy(tv.data).permute(0, 3, 1, 2).contiguous()
    return Arrays(images, torch.tensor(tv.targets, dtype=torch.long))


@register_dataset
class Cifar10(_Cifar):
    name = "cifar10"
    summary = "CIFAR-10, 3x32x32, 10 classes (torchvision layout; --download)"
    folder_name = "cifar-10-batches-py"
    torchvision_name = "CIFAR10"


@register_dataset
class Cifar100(_Cifar):
    name = "cifar100"
    summary = "CIFAR-100, 3x32x32, 100 classes (torchvision layout; --download)"
    folder_name = "cifar-100-python"
    torchvision_name = "CIFAR100"
    classes = 100


# ---------------------------------------------------------------- image folders


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


class _Folder(Dataset):
    in_memory = False
    options = {"image_size": 224}
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    hint = ""

    def candidates(self, cfg: DataConfig) -> list[Path]:
        return [data_root(cfg)]

    def locate(self, cfg: DataConfig) -> Path:
        looked = self.candidates(cfg)
        for folder in looked:
            if (folder / "train").is_dir() and self._test_dir(folder) is not None:
                return folder
        raise MgtoolError(
            f"{self.name}: data not found; looked for train/ and val/ (or test/) class folders in "
            f"{_looked(looked)}; {self.hint}"
        )

    @staticmethod
    def _test_dir(folder: Path) -> Path | None:
        for name in ("val", "test"):
            if (folder / name).is_dir():
                return folder / name
        return None

    def info(self, cfg: DataConfig) -> DatasetInfo:
        folder = self.locate(cfg)
        classes = _class_dirs(folder / "train")
        if not classes:
            raise MgtoolError(f"{self.name}: {folder / 'train'} has no class folders")
        size = int(cfg.options["image_size"])
        return DatasetInfo(self.name, (3, size, size), len(classes), None, None, False)

    def folder(self, cfg: DataConfig, split: str, *, train: bool) -> TorchDataset:
        import torchvision
        from torchvision.transforms import v2

        split = check_split(self.name, split)
        root = self.locate(cfg)
        path = root / "train" if split == "train" else self._test_dir(root)
        assert path is not None
        size = int(cfg.options["image_size"])
        if train:
            transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True),
                                    v2.RandomHorizontalFlip()])
        else:
            transform = v2.Compose([v2.PILToTensor(),
                                    v2.Resize(round(size / EVAL_CROP_RATIO), antialias=True),
                                    v2.CenterCrop(size)])
        dataset = torchvision.datasets.ImageFolder(str(path), transform=transform)
        train_classes = _class_dirs(root / "train")
        if dataset.classes != train_classes:
            raise MgtoolError(f"{self.name}: {path} has {len(dataset.classes)} class folders, "
                              f"{root / 'train'} has {len(train_classes)}; they must be the same")
        return dataset


@register_dataset
class ImageNet(_Folder):
    name = "imagenet"
    summary = "ImageNet (ILSVRC2012) as ImageFolder train/ and val/, standard 224 pipeline"
    hint = ("ImageNet cannot be downloaded automatically: put the ILSVRC2012 train/ and val/ "
            "class folders under --data-dir DIR")

    def candidates(self, cfg: DataConfig) -> list[Path]:
        root = data_root(cfg)
        return [root, root / "imagenet"]


@register_dataset
class ImageFolder(_Folder):
    name = "imagefolder"
    summary = "any ImageFolder: DIR/train and DIR/val (or DIR/test); --data-opt image_size=N"
    hint = "pass --data-dir DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg"


# ---------------------------------------------------------------- synthetic


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in str(text).lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise MgtoolError(f"synthetic: shape must be CxHxW such as 3x32x32, got {text!r}")
    return dims  # type: ignore[return-value]


SYNTHETIC_MAX_BYTES = 2**32  # uint8 images per split: random data for tests never needs more


@register_dataset
class Synthetic(Dataset):
    """Seeded random images: a low-frequency pattern per class plus noise (so it is learnable)."""

    name = "synthetic"
    summary = "random tensors for tests and smoke runs only: --data-opt shape=3x32x32 classes=10"
    options = {"shape": "3x32x32", "classes": 10, "train_size": 512, "test_size": 256, "seed": 0,
               "crop_padding": 2, "flip": True, "cutout": 0}

    def info(self, cfg: DataConfig) -> DatasetInfo:
        o = cfg.options
        classes = int(o["classes"])
        if classes < 1 or int(o["train_size"]) < 1 or int(o["test_size"]) < 1:
            raise MgtoolError("synthetic: classes, train_size and test_size must be positive")
        shape = parse_shape(o["shape"])  # bounded before anything is allocated:
        if max(int(o["train_size"]), int(o["test_size"])) * math.prod(shape) > SYNTHETIC_MAX_BYTES:
            raise MgtoolError(f"synthetic: train_size/test_size of {shape} images exceed "
                              f"{SYNTHETIC_MAX_BYTES / 2**30:g} GiB per split; use fewer or smaller images")
        return DatasetInfo(self.name, parse_shape(o["shape"]), classes, int(o["train_size"]),
                           int(o["test_size"]), True)

    def normalisation(self, cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
        c = parse_shape(cfg.options["shape"])[0]
        return (0.5,) * c, (0.25,) * c

    def arrays(self, cfg: DataConfig, split: str) -> Arrays:
        split = check_split(self.name, split)
        info = self.info(cfg)
        size = info.train_size if split == "train" else info.test_size
        assert size is not None
        return _synthetic(info.shape, info.num_classes, size, int(cfg.options["seed"]), split)


@lru_cache(maxsize=8)
def _synthetic(shape: tuple[int, int, int], classes: int, size: int, seed: int, split: str) -> Arrays:
    c, h, w = shape
    patterns = torch.rand(classes, c, 4, 4, generator=torch.Generator().manual_seed(seed))
    patterns = F.interpolate(patterns, size=(h, w), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed * 2 + (1 if split == "train" else 2))
    labels = torch.randint(0, classes, (size,), generator=gen)
    noise = torch.rand(size, c, h, w, generator=gen)
    images = (0.6 * patterns[labels] + 0.4 * noise).mul(255).round().clamp(0, 255).to(torch.uint8)
    return Arrays(images, labels)
