"""Data registry, readers, augmentation and loaders (no real data needed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from mgtool.cli.data_options import data_config_from_cli
from mgtool.data import (
    Augment,
    DataConfig,
    Dataset,
    DeviceLoader,
    HostLoader,
    augment_batch,
    data_config,
    dataset_info,
    dataset_names,
    eval_batches,
    register_dataset,
    split_size,
    train_loader,
)
from mgtool.data.augment import cutout, fill_values, random_crop, random_flip
from mgtool.data.loaders import _shard
from mgtool.data.sources.idx import read_idx
from mgtool.errors import MgtoolError

SYN = {"shape": "3x8x8", "classes": 4, "train_size": 96, "test_size": 40}


def _write_idx(path: Path, tensor: torch.Tensor, gz: bool) -> None:
    header = bytes([0, 0, 0x08, tensor.ndim]) + b"".join(struct.pack(">I", d) for d in tensor.shape)
    raw = header + tensor.to(torch.uint8).numpy().tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _fake_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", torch.randint(0, 256, (n, 28, 28), generator=g), gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", torch.arange(n) % 10, gz)


def test_names_and_duplicate_registration_refused():
    assert {"cifar10", "cifar100", "imagenet", "fashion-mnist", "mnist", "imagefolder", "synthetic"} <= set(
        dataset_names())

    class Again(Dataset):
        name = "synthetic"

    with pytest.raises(ValueError, match="registered twice"):
        register_dataset(Again)


def test_unknown_dataset_and_options_refused():
    with pytest.raises(MgtoolError, match="no known data set: 'cifar11'.*cifar10"):
        data_config("cifar11")
    with pytest.raises(MgtoolError, match="unknown data option"):
        data_config("synthetic", options={"colour": 1})
    with pytest.raises(MgtoolError, match="not a valid bool"):
        data_config("synthetic", options={"flip": "maybe"})
    cfg = data_config("synthetic", options={"flip": "false", "classes": "7"})
    assert cfg.options["flip"] is False and cfg.options["classes"] == 7
    with pytest.raises(MgtoolError, match="CxHxW"):
        dataset_info(data_config("synthetic", options={"shape": "3x8"}))


def test_config_round_trip_is_strict():
    cfg = data_config("synthetic", "/somewhere", SYN)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(MgtoolError, match="unknown keys"):
        DataConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_synthetic_is_deterministic_and_split_dependent():
    cfg = data_config("synthetic", options=SYN)
    info = dataset_info(cfg)
    assert info.shape == (3, 8, 8) and info.num_classes == 4 and info.train_size == 96
    (x1, y1), = list(eval_batches(cfg, "train", batch_size=1000))
    (x2, y2), = list(eval_batches(cfg, "train", batch_size=1000))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (96, 3, 8, 8) and x1.dtype == torch.float32 and int(y1.max()) < 4
    (xt, _), = list(eval_batches(cfg, "test", batch_size=1000))
    assert xt.shape[0] == 40 and not torch.equal(xt[:40], x1[:40])


def test_idx_reader_plain_gz_and_corrupt(tmp_path):
    t = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    _write_idx(tmp_path / "a", t, gz=False)
    _write_idx(tmp_path / "a.gz", t, gz=True)
    assert torch.equal(read_idx(tmp_path / "a"), t) and torch.equal(read_idx(tmp_path / "a.gz"), t)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(MgtoolError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(MgtoolError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_found_in_torchvision_layout(tmp_path):
    _fake_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    cfg = data_config("fashion-mnist", tmp_path)
    assert split_size(cfg, "train") == 20 and split_size(cfg, "test") == 10
    batches = list(eval_batches(cfg, "test", batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 1, 28, 28)] * 2 + [(2, 1, 28, 28)]
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(10))


def test_missing_data_names_where_it_looked(tmp_path):
    empty = tmp_path / "nothing"
    with pytest.raises(MgtoolError) as e:
        list(eval_batches(data_config("mnist", empty)))
    assert str(empty) in str(e.value) and str(empty / "MNIST" / "raw") in str(e.value)
    assert "--download" in str(e.value)
    with pytest.raises(MgtoolError, match=r"cifar-10-batches-py.*--download"):
        list(eval_batches(data_config("cifar10", empty)))
    with pytest.raises(MgtoolError, match=r"train/ and val/.*ILSVRC2012"):
        dataset_info(data_config("imagenet", empty))


def test_crop_flip_cutout_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 255, (16, 2, 6, 7), dtype=torch.uint8, generator=g)
    cropped = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(16):  # every output is some window of the zero-padded input
        assert any(torch.equal(cropped[b], padded[b, :, i:i + 6, j:j + 7]) for i in range(5) for j in range(5))
    flipped = random_flip(x, g)
    same = [torch.equal(flipped[b], x[b]) for b in range(16)]
    assert all(s or torch.equal(flipped[b], x[b].flip(2)) for b, s in enumerate(same))
    assert 0 < sum(same) < 16
    cut = cutout(x, 3, (0, 0), g)
    for b in range(16):
        changed = (cut[b] != x[b]).any(0).nonzero()
        if len(changed):
            assert int(changed[:, 0].max() - changed[:, 0].min()) < 3
            assert int(changed[:, 1].max() - changed[:, 1].min()) < 3
            assert int(cut[b][:, changed[:, 0], changed[:, 1]].max()) == 0
    assert torch.equal(augment_batch(x, Augment(), g), x)


def test_cutout_fills_each_channel_with_its_colour_made_once_per_device():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 200, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    fill_values.cache_clear()
    for _ in range(3):
        cut = cutout(x, 4, (201, 202, 203), g)
        changed = cut != x
        for ch in range(3):
            assert changed[:, ch].any() and bool((cut[:, ch][changed[:, ch]] == 201 + ch).all())
    assert fill_values.cache_info().misses == 1  # not a host-to-device copy per batch


def test_shards_partition_each_step():
    parts = [_shard(50, 4, 3, r, seed=1, epoch=2) for r in range(3)]
    assert all(p.numel() == 4 * 4 for p in parts)  # 50 // 12 = 4 steps of 4 per rank
    everything = torch.cat(parts)
    assert everything.unique().numel() == everything.numel()
    whole = _shard(50, 12, 1, 0, seed=1, epoch=2)
    assert torch.equal(whole.view(4, 12)[:, 4:8].reshape(-1), parts[1])  # rank 1 = middle of each step
    assert not torch.equal(_shard(50, 4, 3, 0, seed=1, epoch=3), parts[0])


def test_device_and_host_loaders_agree_without_augmentation():
    cfg = data_config("synthetic", options={**SYN, "crop_padding": 0, "flip": False})
    dev = train_loader(cfg, batch_size=8, device="cpu", seed=3)
    host = train_loader(cfg, batch_size=8, device="cpu", seed=3, loader="dataloader", workers=0)
    assert isinstance(dev, DeviceLoader) and isinstance(host, HostLoader) and len(dev) == len(host) == 12
    for (xa, ya), (xb, yb) in zip(dev.epoch(1), host.epoch(1), strict=True):
        assert xa.dtype == torch.uint8 and torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("kind", ["device", "dataloader"])
def test_augmented_epochs_are_reproducible(kind):
    cfg = data_config("synthetic", options=SYN)
    loader = train_loader(cfg, batch_size=8, device="cpu", seed=3, loader=kind, workers=0)
    a = torch.cat([x for x, _ in loader.epoch(4)])
    b = torch.cat([x for x, _ in loader.epoch(4)])
    c = torch.cat([x for x, _ in loader.epoch(5)])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loader_errors():
    cfg = data_config("synthetic", options=SYN)
    with pytest.raises(MgtoolError, match="fewer than one batch"):
        train_loader(cfg, batch_size=200, device="cpu", seed=0)
    with pytest.raises(MgtoolError, match="--loader"):
        train_loader(cfg, batch_size=8, device="cpu", seed=0, loader="gpu")
    with pytest.raises(MgtoolError, match="--limit"):
        list(eval_batches(cfg, limit=0))
    with pytest.raises(MgtoolError, match="split"):
        list(eval_batches(cfg, split="dev"))


def test_eval_batches_limit_normalisation_and_ranks():
    cfg = data_config("synthetic", options=SYN)
    full = torch.cat([x for x, _ in eval_batches(cfg, batch_size=7)])
    assert full.shape[0] == 40
    limited = torch.cat([x for x, _ in eval_batches(cfg, limit=13, batch_size=5)])
    assert torch.equal(limited, full[:13])
    shares = [torch.cat([x for x, _ in eval_batches(cfg, limit=13, rank=r, world=2)]) for r in range(2)]
    assert torch.equal(torch.cat(shares), full[:13])
    from mgtool.data.sources.synthetic import synthetic_arrays

    raw = synthetic_arrays((3, 8, 8), 4, 40, 0, "test").images
    torch.testing.assert_close(full, (raw.float() / 255 - 0.5) / 0.25, rtol=0, atol=1e-6)


def test_imagefolder(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                arr = torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
    cfg = data_config("imagefolder", tmp_path, {"image_size": 16})
    info = dataset_info(cfg)
    assert info.shape == (3, 16, 16) and info.num_classes == 2 and not info.in_memory
    xs, ys = zip(*eval_batches(cfg, "val", batch_size=4, workers=0))
    assert [x.shape for x in xs] == [(4, 3, 16, 16), (2, 3, 16, 16)] and torch.cat(ys).tolist() == [0, 0, 0, 1, 1, 1]
    loader = train_loader(cfg, batch_size=2, device="cpu", seed=0, workers=0)
    x, y = next(iter(loader.epoch(0)))
    assert isinstance(loader, HostLoader) and x.dtype == torch.uint8 and x.shape == (2, 3, 16, 16)
    with pytest.raises(MgtoolError, match="in-memory"):
        train_loader(cfg, batch_size=2, device="cpu", seed=0, loader="device")
    (tmp_path / "val" / "cow").mkdir()
    (tmp_path / "val" / "cow" / "0.png").write_bytes((tmp_path / "val" / "cat" / "0.png").read_bytes())
    with pytest.raises(MgtoolError, match="must be the same"):
        list(eval_batches(cfg, "val", workers=0))


def test_cli_data_config_falls_back_to_stored_settings():
    stored = data_config("synthetic", "/d", SYN).to_dict()
    cfg = data_config_from_cli(None, None, ["classes=6"], fallback=stored)
    assert cfg.name == "synthetic" and cfg.data_dir == "/d" and cfg.options["classes"] == 6
    assert cfg.options["train_size"] == 96
    with pytest.raises(MgtoolError, match="--data"):
        data_config_from_cli(None, None, None, fallback=None)
