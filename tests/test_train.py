"""train-small, finetune, eval and the engine: tiny models, synthetic data, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mgtool.archs import ArchSpec
from mgtool.checkpoint import read_meta
from mgtool.cli import app
from mgtool.data import data_config
from mgtool.errors import MgtoolError
from mgtool.flops import flops_per_training_sample, training_flops_per_sample
from mgtool.templates import fresh_template_mixing
from mgtool.train import Lineage, Runtime, TrainConfig, fit, run_paths, train_config
from mgtool.train.schedule import schedule_lrs

runner = CliRunner()
DATA = ["--data", "synthetic", "--data-opt", "shape=3x16x16", "--data-opt", "train_size=128",
        "--data-opt", "test_size=64"]
TINY = ["--arch", "tiny-cnn", "--width", "1", *DATA, "--batch-size", "16", "--warmup", "0", "--quiet"]



def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def net1(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("net1") / "net1.safetensors"
    r = invoke("train-small", *TINY, "--data-opt", "train_size=256", "--epochs", "3", "--seed", "5", "-o", out)
    assert r.exit_code == 0, r.output
    return out


def test_help_has_examples():
    for cmd in ("train-small", "finetune", "eval"):
        r = invoke(cmd, "--help")
        assert r.exit_code == 0 and "Example: " in r.output


def test_recipes_follow_the_paper():
    c = train_config("cifar100", epochs=200)
    assert (c.batch_size, c.lr, c.momentum, c.nesterov, c.weight_decay, c.schedule, c.warmup_epochs) == (
        128, 0.1, 0.9, True, 5e-4, "cosine", 1.0)
    i = train_config("imagenet", epochs=90)
    assert (i.batch_size, i.schedule, i.milestones, i.warmup_epochs) == (256, "step", (30.0, 60.0, 80.0), 0.0)
    assert train_config("cifar10", epochs=10).warmup_epochs == 0.5
    assert train_config("cifar10", epochs=10, lr=0.05, batch_size=64).lr == 0.05


def test_training_flops_per_sample_matches_fvcore_at_the_batch():
    tm = fresh_template_mixing(ArchSpec("tiny-cnn", 1, 10, 3), seed=0)
    direct = training_flops_per_sample(tm, (3, 16, 16), 8)
    assert flops_per_training_sample(tm, (3, 16, 16), 8) == pytest.approx(direct, rel=1e-12)
    assert flops_per_training_sample(tm, (3, 16, 16), 1) > flops_per_training_sample(tm, (3, 16, 16), 8)


def test_train_small_writes_a_checkpoint_with_data_training_and_flops(net1):
    meta = read_meta(net1)
    assert meta.kind == "template-mixing" and meta.arch.name == "tiny-cnn" and meta.arch.num_classes == 10
    assert meta.data["name"] == "synthetic" and meta.data["options"]["shape"] == "3x16x16"
    t = meta.training
    assert t["complete"] and t["epochs_done"] == 3 and t["recipe"]["seed"] == 5
    assert t["samples_seen"] == 3 * 256
    tm = fresh_template_mixing(meta.arch, seed=0)
    per_sample = training_flops_per_sample(tm, (3, 16, 16), 16)
    assert meta.flops.training == pytest.approx(t["samples_seen"] * per_sample, rel=1e-9)
    lines = [json.loads(s) for s in run_paths(net1).metrics.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[-1]["test_top1"] == t["test_top1"] > 0.25  # above chance (0.1) on learnable data
    assert not run_paths(net1).state.exists()  # the sidecar goes when the run completes
    info = invoke("info", net1, "--json")
    assert json.loads(info.stdout)["flops"]["training"] == meta.flops.training


def test_train_small_stdout_and_refusals(net1, tmp_path):
    out = tmp_path / "a.safetensors"
    r = invoke("train-small", *TINY, "--epochs", "1", "-o", out)
    assert r.exit_code == 0 and r.stdout == f"{out}\n"
    before = out.read_bytes()
    r = invoke("train-small", *TINY, "--epochs", "1", "-o", out)
    assert r.exit_code == 1 and "already exists" in r.output and out.read_bytes() == before
    r = invoke("train-small", *TINY, "--epochs", "1", "--resume", "-o", out)
    assert r.exit_code == 1 and "nothing to resume" in r.output
    assert invoke("train-small", *DATA, "--epochs", "1", "-o", out).exit_code == 2
    assert invoke("train-small", "--arch", "tiny-cnn", *DATA, "--epochs", "1", "-o", out).exit_code == 2
    r = invoke("train-small", *TINY, "--epochs", "1", "--budget", "1.5", "-o", tmp_path / "b.safetensors")
    assert r.exit_code == 2 and "--budget" in r.output  # a bad option value is a usage error


def test_like_copies_architecture_plan_and_data_with_its_own_seed(net1, tmp_path):
    out = tmp_path / "net2.safetensors"
    r = invoke("train-small", "--like", net1, "--epochs", "1", "--batch-size", "16", "--quiet", "-o", out)
    assert r.exit_code == 0, r.output
    m1, m2 = read_meta(net1), read_meta(out)
    assert m2.arch == m1.arch and m2.plan == m1.plan and m2.data == m1.data
    assert m2.training["recipe"]["seed"] == 6 and m2.training["like"]["path"] == str(net1)
    t1, t2 = load_file(net1), load_file(out)
    assert set(t1) == set(t2) and not torch.equal(t1["banks.b000"], t2["banks.b000"])
    assert m2.provenance.parents == () and m2.flops.training < m1.flops.training
    r = invoke("train-small", "--like", net1, "--seed", "5", "--epochs", "1", "-o", tmp_path / "c.safetensors")
    assert r.exit_code == 1 and "same templates" in r.output
    r = invoke("train-small", "--like", net1, "--width", "2", "--epochs", "1", "-o", tmp_path / "c.safetensors")
    assert r.exit_code == 2


def test_like_and_init_from_refuse_plain_checkpoints(net1, tmp_path):
    plain = tmp_path / "plain.safetensors"
    assert invoke("export", net1, "-o", plain).exit_code == 0
    for option in ("--like", "--init-from"):
        r = invoke("train-small", option, plain, "--epochs", "1", "-o", tmp_path / "x.safetensors")
        assert r.exit_code == 1 and "small template-mixing" in r.output


def test_init_from_accumulates_flops_and_records_the_parent(net1, tmp_path):
    out = tmp_path / "more.safetensors"
    r = invoke("train-small", "--init-from", net1, "--epochs", "1", "--batch-size", "16", "--quiet", "-o", out)
    assert r.exit_code == 0, r.output
    m1, m = read_meta(net1), read_meta(out)
    (parent,) = m.provenance.parents
    assert parent.path == str(net1) and parent.training_flops == m1.flops.training
    assert m.flops.training == pytest.approx(m1.flops.training + m.training["flops_spent"], rel=1e-12)
    assert m.training["flops_spent"] == pytest.approx(m1.flops.training / 3, rel=1e-9)  # 1 of 3 epochs


def test_stop_at_cuts_the_full_schedule_and_budget_completes_a_short_one(tmp_path):
    out = tmp_path / "half.safetensors"
    r = invoke("train-small", *TINY, "--epochs", "4", "--stop-at", "0.5", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["complete"] and result["stopped_by_budget"] and result["epochs_done"] == 2
    meta = read_meta(out)
    assert meta.training["steps"] == 16 and meta.training["samples_seen"] == 256
    last = [json.loads(s) for s in run_paths(out).metrics.read_text().splitlines()][-1]
    full = schedule_lrs(train_config("synthetic", epochs=4, warmup_epochs=0), 8)
    assert last["lr"] == pytest.approx(full[15], rel=1e-12) and last["lr"] > 0.04  # cut, not annealed
    out = tmp_path / "budget.safetensors"
    r = invoke("train-small", *TINY, "--epochs", "4", "--budget", "0.5", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed to lr_min
    assert not json.loads(r.stdout)["stopped_by_budget"]  # a complete (short) schedule
    assert read_meta(out).training["steps"] == 16
    r = invoke("train-small", *TINY, "--epochs", "3", "--stop-at", "0.25", "-o", tmp_path / "b.safetensors")
    part = read_meta(tmp_path / "b.safetensors").training  # 6 of 24 steps: stops inside epoch 1
    assert r.exit_code == 0 and part["epochs_done"] == 0.75 and part["steps"] == 6 and part["complete"]


def test_finetune_template_mixing_trains_templates_and_coefficients(net1, tmp_path):
    out = tmp_path / "ft.safetensors"
    r = invoke("finetune", net1, "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--quiet", "-o", out)
    assert r.exit_code == 0, r.output
    m1, m = read_meta(net1), read_meta(out)
    assert m.kind == "template-mixing" and m.plan == m1.plan and m.data == m1.data
    assert m.provenance.parents[0].sha256 and m.provenance.parents[0].training_flops == m1.flops.training
    assert m.flops.training > m1.flops.training and m.training["command"] == "finetune"
    before, after = load_file(net1), load_file(out)
    assert not torch.equal(before["banks.b000"], after["banks.b000"])
    assert not torch.equal(before["net.conv1.coefficients"], after["net.conv1.coefficients"])


def test_finetune_plain_checkpoint(net1, tmp_path):
    plain = tmp_path / "plain.safetensors"
    assert invoke("export", net1, "-o", plain).exit_code == 0
    out = tmp_path / "plain.ft.safetensors"
    r = invoke("finetune", plain, *DATA, "--epochs", "1", "--batch-size", "16", "--quiet", "-o", out)
    assert r.exit_code == 0, r.output
    meta = read_meta(out)
    assert meta.kind == "plain" and meta.flops.training > read_meta(plain).flops.training
    assert not torch.equal(load_file(plain)["conv1.weight"], load_file(out)["conv1.weight"])
    r = invoke("finetune", plain, "--epochs", "1", "-o", plain, "--force")
    assert r.exit_code == 1 and "must differ" in r.output


def test_eval_json_matches_the_last_training_evaluation(net1):
    r = invoke("eval", net1, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    meta = read_meta(net1)
    assert result["top1"] == meta.training["test_top1"] and result["samples"] == 64
    torch.testing.assert_close(result["loss"], meta.training["test_loss"], rtol=0, atol=0)
    assert 0 <= result["top1"] <= result["top5"] <= 1
    r = invoke("eval", net1, "--split", "train", "--limit", "50", "--json")
    assert json.loads(r.stdout)["samples"] == 50 and json.loads(r.stdout)["split"] == "train"
    plain = invoke("eval", net1)
    assert plain.stdout == f"{net1}\n"


def test_eval_bad_inputs(net1, tmp_path):
    r = invoke("eval", tmp_path / "missing.safetensors", *DATA)
    assert r.exit_code == 1 and "no such file" in r.output
    r = invoke("eval", net1, "--data", "synthetic", "--data-opt", "shape=3x16x16", "--data-opt", "classes=7")
    assert r.exit_code == 1 and "10 outputs" in r.output and "7 classes" in r.output
    r = invoke("eval", net1, "--data", "synthetic", "--data-opt", "shape=5x16x16")
    assert r.exit_code == 1 and "does not accept" in r.output


def test_missing_dataset_error_names_where_it_looked(tmp_path):
    empty = tmp_path / "no-data"
    r = invoke("train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "cifar10", "--data-dir", empty,
               "--epochs", "1", "-o", tmp_path / "x.safetensors")
    assert r.exit_code == 1
    line = r.output.strip()
    assert "\n" not in line and str(empty) in line and "--download" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_nan_loss_on_the_first_epoch_writes_nothing(tmp_path):
    out = tmp_path / "nan.safetensors"
    r = invoke("train-small", "--arch", "tiny-mlp", "--width", "1", "--data", "synthetic", "--data-opt",
               "shape=3x8x8", "--data-opt", "train_size=128", "--batch-size", "16", "--lr", "1e6",
               "--epochs", "2", "--quiet", "-o", out)
    assert r.exit_code == 1 and "non-finite training loss at epoch 1" in r.output
    assert "nothing was written" in r.output and list(tmp_path.iterdir()) == []


def _poisoned_run(out: Path, epochs: int, nan_from_batch: int) -> None:
    """An in-process run whose logits turn NaN from the given training batch on."""
    spec = ArchSpec("tiny-cnn", 1, 10, 3)
    model = fresh_template_mixing(spec, seed=0)
    calls = {"n": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] >= nan_from_batch:
                return output * float("nan")
        return output

    model.register_forward_hook(poison)
    data = data_config("synthetic", options={"shape": "3x16x16", "train_size": 128, "test_size": 32})
    fit(model, Lineage("train-small", "template-mixing", spec, model.plan), data,
        TrainConfig(epochs=epochs, batch_size=16), Runtime(device="cpu", quiet=True), out)


def test_nan_loss_later_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "poisoned.safetensors"
    with pytest.raises(MgtoolError, match=r"epoch 2, step 12.*last good checkpoint .* \(epoch 1\)"):
        _poisoned_run(out, epochs=3, nan_from_batch=12)  # 8 batches per epoch
    assert read_meta(out).training["epochs_done"] == 1 and run_paths(out).state.exists()
    assert len(run_paths(out).metrics.read_text().splitlines()) == 1


def test_resume_rules(tmp_path):
    out = tmp_path / "r.safetensors"
    with pytest.raises(MgtoolError):
        _poisoned_run(out, epochs=2, nan_from_batch=10)
    assert run_paths(out).state.exists()
    args = ["train-small", *TINY, "--epochs", "2", "-o", out]
    r = invoke(*args)
    assert r.exit_code == 1 and "--resume" in r.output and "--force" in r.output
    r = invoke(*args, "--resume", "--lr", "0.05")
    assert r.exit_code == 1 and "different" in r.output and "train" in r.output
    r = invoke(*args, "--force")
    assert r.exit_code == 0 and not run_paths(out).state.exists()
    assert read_meta(out).training["complete"]


def test_keep_every_writes_epoch_copies(tmp_path):
    out = tmp_path / "k.safetensors"
    r = invoke("train-small", *TINY, "--epochs", "3", "--keep-every", "2", "-o", out)
    assert r.exit_code == 0, r.output
    files = run_paths(out).epoch_files()
    assert [e for e, _ in files] == [2, 3] and files[0][1].name == "k.epoch002.safetensors"
    assert read_meta(files[0][1]).training["epochs_done"] == 2
    assert load_file(files[1][1]).keys() == load_file(out).keys()
    r = invoke("train-small", *TINY, "--epochs", "1", "--force", "-o", out)
    assert r.exit_code == 0 and run_paths(out).epoch_files() == []  # --force clears stale copies


def test_train_small_on_an_image_folder_uses_the_dataloader_path(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(8):
                arr = torch.randint(0, 256, (18, 18, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(arr).save(tmp_path / "imgs" / split / cls / f"{i}.png")
    out = tmp_path / "f.safetensors"
    r = invoke("train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "imagefolder", "--data-dir",
               tmp_path / "imgs", "--data-opt", "image_size=16", "--workers", "0", "--batch-size", "4",
               "--epochs", "1", "--quiet", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    meta = read_meta(out)
    assert meta.arch.num_classes == 2 and meta.data["options"]["image_size"] == 16
    assert meta.training["samples_seen"] == 16 and json.loads(r.stdout)["test_top1"] is not None


def test_info_counts_flops_at_the_training_resolution(tmp_path):
    out = tmp_path / "mlp.safetensors"
    r = invoke("train-small", "--arch", "tiny-cnn", "--width", "1", "--in-chans", "1", "--data", "synthetic",
               "--data-opt", "shape=1x12x12", "--data-opt", "train_size=32", "--data-opt", "test_size=16",
               "--epochs", "0", "--quiet", "-o", out)
    assert r.exit_code == 0, r.output
    info = json.loads(invoke("info", out, "--json").stdout)
    assert info["flops"]["input_size"] == [1, 12, 12]


def test_train_small_with_zero_epochs_writes_the_untrained_net(net1, tmp_path):
    out = tmp_path / "net2.safetensors"
    r = invoke("train-small", "--like", net1, "--epochs", "0", "--quiet", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["training_flops"] == 0.0
    meta = read_meta(out)
    assert meta.flops.training == 0.0 and meta.training["epochs_done"] == 0
    spec, plan = read_meta(net1).arch, read_meta(net1).plan
    fresh = fresh_template_mixing(spec, templates=plan.templates_per_layer, share=plan.share,
                                  seed=meta.training["recipe"]["seed"])
    saved = load_file(str(out))
    for key, value in fresh.state_dict().items():
        assert torch.equal(saved[key], value), key
