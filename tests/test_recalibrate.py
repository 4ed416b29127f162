"""recalibrate-bn: only BatchNorm statistics change, and they are the cumulative average."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mgtool.archs import ArchSpec, resolve_spec
from mgtool.checkpoint import CheckpointMeta, Flops, read_meta, save_checkpoint
from mgtool.cli import app
from mgtool.data import data_config, eval_batches
from mgtool.errors import MgtoolError, SettingError
from mgtool.loading import load
from mgtool.provenance import new_provenance
from mgtool.recalibrate import BN_BUFFERS, recalibrate_bn
from mgtool.templates import fresh_template_mixing

DATA = data_config("synthetic", options={"shape": "3x16x16", "train_size": 64, "test_size": 32})


def write(path, spec: ArchSpec):
    spec = resolve_spec(spec)
    model = fresh_template_mixing(spec, seed=0)
    meta = CheckpointMeta(kind="template-mixing", arch=spec, plan=model.plan, provenance=new_provenance(()),
                          flops=Flops(training=5.0), data=DATA.to_dict())
    save_checkpoint(path, model.state_dict(), meta, force=False)
    return path


@pytest.fixture()
def grown(tmp_path):
    return write(tmp_path / "grown.safetensors", ArchSpec("tiny-cnn", 1, 10, 3))


def test_only_batchnorm_buffers_change_and_they_are_the_mean_over_the_samples(grown, tmp_path):
    out = tmp_path / "bn.safetensors"
    result = recalibrate_bn(grown, out, DATA, samples=64, batch_size=16, device="cpu")
    before, after = load_file(grown), load_file(out)
    assert set(before) == set(after) and result.layers == 3 and result.samples == 64
    for key in before:
        if key.rsplit(".", 1)[-1] in BN_BUFFERS:
            assert not torch.equal(before[key], after[key]), key
        else:
            assert torch.equal(before[key], after[key]), key  # bit-identical
    # bn1's mean is the mean of its inputs over the 64 images (4 equal batches: cumulative = overall).
    model = load(grown)
    seen = []
    model.net.bn1.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        for x, _ in eval_batches(DATA, "train", 64, 16):
            model(x)
    acts = torch.cat(seen)
    torch.testing.assert_close(after["net.bn1.running_mean"], acts.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    per_batch = torch.stack([b.var((0, 2, 3), unbiased=True) for b in seen])
    torch.testing.assert_close(after["net.bn1.running_var"], per_batch.mean(0), rtol=1e-5, atol=1e-6)
    meta = read_meta(out)
    assert meta.flops.training > 5.0 and meta.training["recalibrated_bn"]["samples"] == 64


def test_bad_inputs(grown, tmp_path):
    with pytest.raises(SettingError) as e:
        recalibrate_bn(grown, tmp_path / "a.safetensors", DATA, samples=0)
    assert e.value.field == "samples"
    with pytest.raises(MgtoolError, match="must differ"):
        recalibrate_bn(grown, grown, DATA, force=True)
    mlp = write(tmp_path / "mlp.safetensors", ArchSpec("tiny-mlp", 1, 10, 3, {"image_size": 16}))
    with pytest.raises(MgtoolError, match="no BatchNorm"):
        recalibrate_bn(mlp, tmp_path / "b.safetensors", DATA)


def test_cli(grown, tmp_path):
    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(app, ["recalibrate-bn", str(grown), "-o", str(out), "--samples", "32", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["output"] == str(out) and d["samples"] == 32 and d["bn_layers"] == 3
    r = CliRunner().invoke(app, ["recalibrate-bn", str(grown), "-o", str(out), "--samples", "32"])
    assert r.exit_code == 1 and "already exists" in r.output
