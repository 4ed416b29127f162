"""Every registered data set, tested from the registry (as timm's tests loop over its models).

Each data set gets a tiny stand-in of its own shape in ``tmp_path``: an ``ArrayFilesDataset``
writes synthetic arrays in its own layout, a ``FolderDataset`` gets a folder of PNGs, and a
generated set (synthetic) needs no files. A new data set is tested here the day it is registered.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mgtool.data import (
    ArrayFilesDataset,
    Arrays,
    DataConfig,
    Dataset,
    FolderDataset,
    InMemoryDataset,
    data_config,
    data_source,
    dataset_info,
    dataset_names,
    eval_batches,
    get_dataset,
    register_dataset,
    split_size,
    train_loader,
)
from mgtool.data.sources.synthetic import synthetic_arrays
from mgtool.errors import MgtoolError
from mgtool.subset import write_subset

SIZES = {"train": 24, "test": 12}
FOLDER_SIZE = 16


def _write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")


def _stand_in_arrays(cfg: DataConfig, split: str) -> Arrays:
    info = get_dataset(cfg.name).info(cfg)
    return synthetic_arrays(info.shape, info.num_classes, SIZES[split], 7, split)


def stand_in(name: str, folder: Path) -> DataConfig:
    """A tiny data set of ``name``'s kind and shape, its files (if any) in ``folder``."""
    dataset = get_dataset(name)
    if isinstance(dataset, ArrayFilesDataset):
        for split in SIZES:
            dataset.write_arrays(folder, split, _stand_in_arrays(data_config(name), split))
        return data_config(name, folder)
    if isinstance(dataset, FolderDataset):
        _write_image_folder(folder)
        return data_config(name, folder, {"image_size": FOLDER_SIZE})
    return data_config(name)  # generated in memory: its defaults are small


@pytest.fixture(params=dataset_names())
def standin(request, tmp_path) -> DataConfig:
    return stand_in(request.param, tmp_path / "data")


def test_every_data_set_is_exactly_one_kind():
    for name in dataset_names():
        dataset = get_dataset(name)
        assert isinstance(dataset, InMemoryDataset) != isinstance(dataset, FolderDataset), name
        assert dataset.summary, name


def test_registration_refuses_duplicates_and_kindless_classes():
    class Again(InMemoryDataset):
        name = "synthetic"

    with pytest.raises(ValueError, match="registered twice"):
        register_dataset(Again)

    class Kindless(Dataset):
        name = "kindless-test-set"

    with pytest.raises(TypeError, match="InMemoryDataset or a FolderDataset"):
        register_dataset(Kindless)
    assert "kindless-test-set" not in dataset_names()


def test_stand_in_batches_have_the_declared_shape(standin):
    dataset = get_dataset(standin.name)
    info = dataset_info(standin)
    assert info.in_memory == isinstance(dataset, InMemoryDataset)
    n = split_size(standin, "test")
    xs, ys = zip(*eval_batches(standin, "test", batch_size=5, workers=0), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (n, *info.shape) and x.dtype == torch.float32 and bool(x.isfinite().all())
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < info.num_classes
    loader = train_loader(standin, batch_size=4, device="cpu", seed=0, workers=0)
    xb, yb = next(iter(loader.epoch(0)))
    assert xb.dtype == torch.uint8 and xb.shape == (4, *info.shape) and yb.shape == (4,)


def test_stand_in_source_names_its_folder_and_count(standin):
    source = data_source(standin, "test", limit=5)
    expected = None if get_dataset(standin.name).locate(standin) is None else standin.data_dir
    assert source.path == expected and source.images == 5
    assert data_source(standin, "test").images == split_size(standin, "test")


def test_array_files_round_trip_exactly(standin):
    dataset = get_dataset(standin.name)
    if not isinstance(dataset, ArrayFilesDataset):
        pytest.skip("not read from array files")
    for split in SIZES:
        got, want = dataset.arrays(standin, split), _stand_in_arrays(standin, split)
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)


def test_subset_keeps_every_channel_or_is_refused(standin, tmp_path):
    dataset = get_dataset(standin.name)
    out = tmp_path / "subset"
    if not isinstance(dataset, ArrayFilesDataset):
        with pytest.raises(MgtoolError, match="cannot be subset|only data sets read from array files"):
            write_subset(standin, out, train_size=10, test_size=5)
        assert not out.exists()
        return
    assert write_subset(standin, out, train_size=10, test_size=5, seed=3) == out
    sub = data_config(standin.name, out)
    for split, size in (("train", 10), ("test", 5)):
        full, part = dataset.arrays(standin, split), dataset.arrays(sub, split)
        assert part.images.shape == (size, *full.images.shape[1:])
        # every subset image (all channels) is the source image with the same label
        matches = (part.images[:, None] == full.images[None]).flatten(2).all(-1)
        rows = matches.float().argmax(1)
        assert bool(matches.any(1).all()) and torch.equal(full.labels[rows], part.labels)
    assert data_source(sub, "train").images == 10 and data_source(sub, "train").path == str(out)


def test_named_folder_that_does_not_exist_is_an_error(standin, tmp_path):
    if get_dataset(standin.name).locate(standin) is None:
        pytest.skip("generated data reads no folder")
    missing = tmp_path / "nowhere"
    with pytest.raises(MgtoolError) as e:
        data_source(data_config(standin.name, missing, standin.options), "test")
    assert str(missing) in str(e.value) and "does not exist" in str(e.value)


# ------------------------------------------------------------------ CIFAR specifics


def _official_cifar10(root: Path, n_train: int = 10, n_test: int = 6) -> Arrays:
    """CIFAR-10 in the official python layout (as torchvision extracts it), written by hand."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n_train + n_test,), generator=g)
    chunks = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(chunks, start=1):
        batch = {"batch_label": f"training batch {i} of 5", "labels": labels[idx].tolist(),
                 "data": images[idx].reshape(len(idx), -1).numpy(), "filenames": [f"{j}.png" for j in idx]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {"batch_label": "testing batch 1 of 1", "labels": labels[n_train:].tolist(),
            "data": images[n_train:].reshape(n_test, -1).numpy(), "filenames": []}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    return Arrays(images, labels)


def test_cifar_subset_is_written_with_all_three_channels(tmp_path):
    truth = _official_cifar10(tmp_path / "cifar")
    source = data_config("cifar10", tmp_path / "cifar")
    train = get_dataset("cifar10").arrays(source, "train")  # type: ignore[attr-defined]
    assert torch.equal(train.images, truth.images[:10]) and torch.equal(train.labels, truth.labels[:10])
    folder = write_subset(source, tmp_path / "subset", train_size=4, test_size=3, seed=0)
    sub = data_config("cifar10", folder)
    x = torch.cat([b for b, _ in eval_batches(sub, "train", batch_size=100)])
    assert x.shape == (4, 3, 32, 32)
    part = get_dataset("cifar10").arrays(sub, "train")  # type: ignore[attr-defined]
    full_rows = {tuple(img.flatten().tolist()) for img in truth.images[:10]}
    assert all(tuple(img.flatten().tolist()) in full_rows for img in part.images)
    assert not torch.equal(part.images[:, 1], part.images[:, 0])  # channels 1, 2 are not copies of 0


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    _official_cifar10(tmp_path)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(MgtoolError, match="not a CIFAR batch"):
        data_source(data_config("cifar10", tmp_path), "test")
    assert not marker.exists()


def test_cifar_missing_batch_is_named(tmp_path):
    _official_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(MgtoolError, match="data_batch_3"):
        data_source(data_config("cifar10", tmp_path), "train")
