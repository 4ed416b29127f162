"""Image folders (ImageNet, any ImageFolder): ``train/`` and ``val/`` (or ``test/``) class folders."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset as TorchDataset

from mgtool.data.config import DataConfig
from mgtool.data.registry import (
    DatasetInfo,
    FolderDataset,
    check_split,
    not_found,
    register_dataset,
    search_path,
)
from mgtool.errors import MgtoolError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 0.875  # resize to size / 0.875, centre-crop size (the standard 224 <- 256)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _test_dir(folder: Path) -> Path | None:
    for name in ("val", "test"):
        if (folder / name).is_dir():
            return folder / name
    return None


class _ImageFolders(FolderDataset):
    options = {"image_size": 224}
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    subdirs: tuple[str, ...] = ()
    hint = ""

    def locate(self, cfg: DataConfig) -> Path:
        looked = search_path(cfg, self.subdirs)
        for folder in looked:
            if (folder / "train").is_dir() and _test_dir(folder) is not None:
                return folder
        raise not_found(self.name, "train/ and val/ (or test/) class folders", looked, cfg, self.hint)

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
        path = root / "train" if split == "train" else _test_dir(root)
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
class ImageNet(_ImageFolders):
    name = "imagenet"
    train_preset = "imagenet"  # mgtool.train.settings.PRESETS
    summary = "ImageNet (ILSVRC2012) as ImageFolder train/ and val/, standard 224 pipeline"
    subdirs = ("imagenet",)
    hint = ("ImageNet cannot be downloaded automatically: put the ILSVRC2012 train/ and val/ "
            "class folders under --data-dir DIR")


@register_dataset
class ImageFolder(_ImageFolders):
    name = "imagefolder"
    summary = "any ImageFolder: DIR/train and DIR/val (or DIR/test); --data-opt image_size=N"
    hint = "pass --data-dir DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg"
