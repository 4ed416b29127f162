"""A seeded random subset of an idx data set (Fashion-MNIST, MNIST) written as idx files.

The demo, the CPU recipe and ``bench/growth_table.py`` train on a few thousand images;
writing them as a folder of idx files keeps the data set name (``fashion-mnist``) and
lets every stage read them through the normal registry with ``data_dir``.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import torch

from mgtool.data import DataConfig, get_dataset
from mgtool.data.sources import IDX_FILES
from mgtool.errors import MgtoolError

_FILES = {split: tuple(f"{stem}.gz" for stem in stems) for split, stems in IDX_FILES.items()}
_MARKER = "subset.json"


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """The idx encoding of a uint8 tensor (magic 0x0000080N, big-endian dims, raw bytes)."""
    if tensor.dtype != torch.uint8:
        tensor = tensor.to(torch.uint8)
    header = bytes([0, 0, 0x08, tensor.ndim]) + b"".join(struct.pack(">I", d) for d in tensor.shape)
    return header + tensor.contiguous().numpy().tobytes()


def subset_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """``size`` distinct indices out of ``n``, seeded, in increasing order (0 or >= n: all)."""
    if size <= 0 or size >= n:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


def write_idx_subset(source: DataConfig, folder: Path | str, *, train_size: int, test_size: int,
                     seed: int = 0) -> Path:
    """Write a random ``train_size`` / ``test_size`` subset of ``source`` into ``folder``.

    Idempotent: a folder whose ``subset.json`` records the same request is reused.
    0 keeps the whole split.
    """
    folder = Path(folder)
    dataset = get_dataset(source.name)
    request = {"source": source.name, "train_size": train_size, "test_size": test_size, "seed": seed}
    marker = folder / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == request:
                return folder
        except json.JSONDecodeError:
            pass
    if not hasattr(dataset, "locate"):
        raise MgtoolError(f"{source.name}: subsets are made of idx data sets (fashion-mnist, mnist)")
    folder.mkdir(parents=True, exist_ok=True)
    for split, size in (("train", train_size), ("test", test_size)):
        arrays = dataset.arrays(source, split)
        idx = subset_indices(len(arrays), size, seed + (0 if split == "train" else 1))
        images_name, labels_name = _FILES[split]
        for name, tensor in ((images_name, arrays.images[idx, 0]), (labels_name, arrays.labels[idx])):
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(gzip.compress(idx_bytes(tensor), compresslevel=1, mtime=0))
            tmp.replace(folder / name)
    marker.write_text(json.dumps(request))
    return folder
