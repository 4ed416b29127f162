"""Training and evaluation batches.

Every loader yields uint8 images ``(B, C, H, W)`` and int64 labels on the target
device; ``Normaliser`` turns them into normalised floats there (a uint8 copy is a
quarter of a float copy). Two training paths:

- ``DeviceLoader``: the whole uint8 split of an in-memory data set (CIFAR, MNIST,
  Fashion-MNIST, synthetic) lives on the device; each epoch shuffles and runs crop,
  flip and cutout there, batched.
- ``HostLoader``: a ``torch.utils.data.DataLoader`` with worker processes; per-sample
  augmentation on the CPU (the only path for image folders).

Both are deterministic per (seed, epoch, rank): the shuffle and every augmentation
draw come from generators seeded with those numbers, so a resumed run sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, Subset
from torch.utils.data import Dataset as TorchDataset

from mgtool.data.augment import Augment, augment_batch
from mgtool.data.config import DataConfig
from mgtool.data.registry import (
    Arrays,
    FolderDataset,
    InMemoryDataset,
    check_split,
    dataset_names,
    get_dataset,
    resolve_config,
    split_length,
)
from mgtool.errors import MgtoolError, check_choice

LOADERS = ("auto", "device", "dataloader")


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across runs and platforms)."""
    digest = hashlib.sha256(repr(tuple(int(p) for p in parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


class Normaliser:
    """uint8 ``(B, C, H, W)`` -> float32 ``(x / 255 - mean) / std`` on the images' device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = False):
        self._mean = torch.tensor(mean).view(1, -1, 1, 1)
        self._std = torch.tensor(std).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, x: Tensor) -> Tensor:
        if self._mean.device != x.device:
            self._mean, self._std = self._mean.to(x.device), self._std.to(x.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.float().div_(255).sub_(self._mean).div_(self._std)


def _shard(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> Tensor:
    """This rank's sample order for one epoch: ``(steps * batch_size,)`` indices.

    One permutation for all ranks (same seed), cut into steps of ``world * batch_size``;
    rank r takes the r-th slice of every step. The tail that fills no step is dropped.
    """
    steps = n // (batch_size * world)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch)))
    return perm[: steps * world * batch_size].view(steps, world, batch_size)[:, rank].reshape(-1)


class DeviceLoader:
    """The whole uint8 split on ``device``; shuffling and augmentation run there."""

    def __init__(self, arrays: Arrays, *, batch_size: int, augment: Augment, device: torch.device,
                 seed: int, rank: int = 0, world: int = 1):
        self.images = arrays.images.to(device)
        self.labels = arrays.labels.to(device)
        self.batch_size, self.augment, self.device = batch_size, augment, device
        self.seed, self.rank, self.world = seed, rank, world
        self.samples = len(arrays)

    def __len__(self) -> int:
        return self.samples // (self.batch_size * self.world)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = _shard(self.samples, self.batch_size, self.world, self.rank, self.seed, epoch)
        order = order.to(self.device)
        generator = torch.Generator(self.device).manual_seed(seed_for(self.seed, epoch, self.rank, 1))
        for step in range(len(self)):
            idx = order[step * self.batch_size: (step + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment.active:
                x = augment_batch(x, self.augment, generator)
            yield x, self.labels[idx]


class AugmentedArrays(TorchDataset):
    """Per-sample augmentation of in-memory uint8 arrays (the DataLoader path)."""

    def __init__(self, arrays: Arrays, augment: Augment, seed: int):
        self.arrays, self.augment, self.seed = arrays, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.arrays.images[i]
        if self.augment.active:
            generator = torch.Generator().manual_seed(seed_for(self.seed, self.epoch, i))
            x = augment_batch(x[None], self.augment, generator)[0]
        return x, self.arrays.labels[i]


class _OrderSampler(Sampler[int]):
    def __init__(self, order: Tensor):
        self.order = order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return int(self.order.numel())


class HostLoader:
    """A DataLoader with worker processes; batches are moved to ``device`` as they come."""

    def __init__(self, dataset: TorchDataset, *, samples: int, batch_size: int, device: torch.device,
                 seed: int, rank: int = 0, world: int = 1, workers: int | None = None):
        self.dataset, self.samples, self.batch_size, self.device = dataset, samples, batch_size, device
        self.seed, self.rank, self.world = seed, rank, world
        self.workers = default_workers() if workers is None else workers

    def __len__(self) -> int:
        return self.samples // (self.batch_size * self.world)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        order = _shard(self.samples, self.batch_size, self.world, self.rank, self.seed, epoch)
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=_OrderSampler(order),
            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(seed_for(self.seed, epoch, self.rank, 2)),
            prefetch_factor=4 if self.workers else None,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def checked_arrays(dataset: InMemoryDataset, cfg: DataConfig, split: str) -> Arrays:
    """``dataset.arrays``, refused if a label is outside [0, classes): a crafted label file
    must not reach cross-entropy (an index error on the CPU, a device assert on CUDA)."""
    arrays = dataset.arrays(cfg, split)
    classes = dataset.info(cfg).num_classes
    labels = arrays.labels
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        bad = int(labels.max()) if int(labels.max()) >= classes else int(labels.min())
        where = dataset.locate(cfg) or cfg.name
        raise MgtoolError(f"{where}: the {split} labels hold {bad}, but {cfg.name} has {classes} classes "
                          f"(labels 0 to {classes - 1}); the label file is damaged or of another data set")
    return arrays


def train_loader(cfg: DataConfig, *, batch_size: int, device: torch.device | str, seed: int,
                 rank: int = 0, world: int = 1, loader: str = "auto",
                 workers: int | None = None) -> DeviceLoader | HostLoader:
    """The training batches of ``cfg``; ``batch_size`` is per process.

    ``loader``: ``device`` keeps an in-memory set on the device, ``dataloader`` uses
    worker processes, ``auto`` picks ``device`` for in-memory sets (see bench/gpu_check.sh).
    """
    check_choice("loader", loader, LOADERS)
    cfg = resolve_config(cfg)
    device = torch.device(device)
    dataset = get_dataset(cfg.name)
    source: Arrays | TorchDataset
    if isinstance(dataset, InMemoryDataset):
        source = checked_arrays(dataset, cfg, "train")
    else:
        assert isinstance(dataset, FolderDataset)
        if loader == "device":
            in_memory = [n for n in dataset_names() if isinstance(get_dataset(n), InMemoryDataset)]
            raise MgtoolError(f"{cfg.name}: --loader device needs an in-memory data set ({', '.join(in_memory)})")
        source = dataset.folder(cfg, "train", train=True)
    samples = len(source)  # type: ignore[arg-type]
    if samples < batch_size * world:
        raise MgtoolError(f"{cfg.name}: the train split has {samples} samples, fewer than one batch "
                          f"({batch_size} x {world} processes); lower --batch-size")
    if isinstance(source, Arrays):
        if loader in ("auto", "device"):
            return DeviceLoader(source, batch_size=batch_size, augment=dataset.augment(cfg),
                                device=device, seed=seed, rank=rank, world=world)
        source = AugmentedArrays(source, dataset.augment(cfg), seed)
    return HostLoader(source, samples=samples, batch_size=batch_size, device=device, seed=seed,
                      rank=rank, world=world, workers=workers)


def normaliser(cfg: DataConfig, channels_last: bool = False) -> Normaliser:
    cfg = resolve_config(cfg)
    mean, std = get_dataset(cfg.name).normalisation(cfg)
    return Normaliser(mean, std, channels_last)


def eval_batches(cfg: DataConfig, split: str = "test", limit: int | None = None,
                 batch_size: int = 256, device: torch.device | str = "cpu", *, rank: int = 0,
                 world: int = 1, workers: int | None = None,
                 channels_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised float32 images and int64 labels of ``split``, no augmentation, in order.

    ``limit`` keeps the first ``limit`` samples; ``rank``/``world`` give this process a
    contiguous share of them (for evaluation under DDP).
    """
    cfg = resolve_config(cfg)
    dataset = get_dataset(cfg.name)
    split = check_split(cfg.name, split)
    if limit is not None and limit < 1:
        raise MgtoolError(f"--limit must be positive, got {limit}")
    if batch_size < 1:
        raise MgtoolError(f"--batch-size must be positive, got {batch_size}")
    device = torch.device(device)
    norm = normaliser(cfg, channels_last)
    if isinstance(dataset, InMemoryDataset):
        arrays = checked_arrays(dataset, cfg, split)
        n = min(len(arrays), limit) if limit is not None else len(arrays)
        start, end = rank * n // world, (rank + 1) * n // world
        for i in range(start, end, batch_size):
            j = min(i + batch_size, end)
            x = arrays.images[i:j].to(device, non_blocking=True)
            yield norm(x), arrays.labels[i:j].to(device, non_blocking=True)
        return
    assert isinstance(dataset, FolderDataset)
    folder = dataset.folder(cfg, split, train=False)
    n = min(len(folder), limit) if limit is not None else len(folder)  # type: ignore[arg-type]
    start, end = rank * n // world, (rank + 1) * n // world
    workers = default_workers() if workers is None else workers
    loader = DataLoader(Subset(folder, range(start, end)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    for x, y in loader:
        yield norm(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


def split_size(cfg: DataConfig, split: str, limit: int | None = None) -> int:
    """How many samples ``eval_batches`` yields in total over all ranks."""
    cfg = resolve_config(cfg)
    n = split_length(cfg, check_split(cfg.name, split))
    return min(n, limit) if limit is not None else n
