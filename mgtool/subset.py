"""A seeded random subset of an in-memory data set, written in that data set's own file layout.

The demo, the CPU recipe and ``bench/growth_table.py`` train on a few thousand images;
writing them as a folder in the source's layout (idx files for Fashion-MNIST, pickled
batches for CIFAR) keeps the data set name and lets every stage read them through the
normal registry with ``data_dir``. Only ``ArrayFilesDataset``s can be subset: a synthetic
set is sized by its own options, and an image folder is made smaller by copying fewer files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mgtool.data import ArrayFilesDataset, Arrays, DataConfig, FolderDataset, get_dataset
from mgtool.errors import MgtoolError

_MARKER = "subset.json"


def subset_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """``size`` distinct indices out of ``n``, seeded, in increasing order (0 or >= n: all)."""
    if size <= 0 or size >= n:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


def check_apart(source: DataConfig, folder: Path | str) -> None:
    """Data sets are inputs: refuse a subset folder that is, or lies inside or around, the
    folder the source is read from (writing there would replace the source's files)."""
    dataset = get_dataset(source.name)
    located = dataset.locate(source)
    if located is None:
        return
    src, dst = Path(located).resolve(), Path(folder).resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise MgtoolError(f"{folder}: the subset would be written into {located}, where {source.name} is read "
                          "from, and replace its files; choose another output folder (-o), or keep the data "
                          "elsewhere with --data-dir / data.dir")


def write_subset(source: DataConfig, folder: Path | str, *, train_size: int, test_size: int,
                 seed: int = 0) -> Path:
    """Write a random ``train_size`` / ``test_size`` subset of ``source`` into ``folder``.

    Idempotent: a folder whose ``subset.json`` records the same request (and source
    folder) is reused. 0 keeps the whole split.
    """
    folder = Path(folder)
    dataset = get_dataset(source.name)
    if not isinstance(dataset, ArrayFilesDataset):
        how = ("copy fewer images into a smaller train/ and val/ folder" if isinstance(dataset, FolderDataset)
               else "set its own size options (train_size, test_size) instead")
        raise MgtoolError(f"{source.name}: only data sets read from array files can be subset; {how}")
    check_apart(source, folder)
    request = {"source": source.name, "source_dir": str(dataset.locate(source)), "train_size": train_size,
               "test_size": test_size, "seed": seed}
    marker = folder / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == request:
                return folder
        except json.JSONDecodeError:
            pass
        marker.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for split, size in (("train", train_size), ("test", test_size)):
        arrays = dataset.arrays(source, split)
        idx = subset_indices(len(arrays), size, seed + (0 if split == "train" else 1))
        dataset.write_arrays(folder, split, Arrays(arrays.images[idx], arrays.labels[idx]))
    marker.write_text(json.dumps(request))
    return folder
