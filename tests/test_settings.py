"""The one source of training settings: resolution, timm schedules, the optimizer factory, the CLI."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from timm.scheduler import CosineLRScheduler
from typer.testing import CliRunner

from mgtool.archs import ArchSpec
from mgtool.cli import app
from mgtool.errors import SettingError
from mgtool.templates import fresh_template_mixing
from mgtool.train import TrainSettings, train_config
from mgtool.train.optim import make_optimizer, parameter_groups
from mgtool.train.schedule import schedule_lrs
from mgtool.train.settings import DEFAULTS, PRESETS, resolve


def test_defaults_come_from_the_preset_then_mgtool():
    c = train_config("cifar100", epochs=200)
    assert (c.batch_size, c.lr, c.momentum, c.nesterov, c.weight_decay, c.schedule, c.warmup_epochs) == (
        128, 0.1, 0.9, True, 5e-4, "cosine", 1.0)
    assert c.coef_weight_decay == 0.0  # the authors' code
    i = train_config("imagenet", epochs=90)
    assert (i.batch_size, i.schedule, i.milestones, i.warmup_epochs) == (256, "step", (30.0, 60.0, 80.0), 0.0)
    assert train_config("cifar10", epochs=10).warmup_epochs == 0.5  # at most 5% of a short run
    assert train_config("cifar10", epochs=10, lr=0.05, batch_size=64).lr == 0.05


def test_protocol_values_sit_between_the_preset_and_what_is_given():
    a = train_config("cifar10", epochs=8, protocol="authors")
    assert (a.lr, a.schedule, a.cycles, a.cycle_decay, a.lr_min, a.warmup_epochs, a.warmup_lr) == (
        1e-4, "cosine-restarts", 4, 0.5, 3e-5, 1.0, 1e-5)
    assert train_config("cifar10", epochs=8, protocol="authors", lr=2e-4).lr == 2e-4


@pytest.mark.parametrize("values, field", [
    ({"epochs": 2, "lr": -1.0}, "lr"), ({"epochs": 2, "lr": float("nan")}, "lr"),
    ({"epochs": 2, "schedule": "cosin"}, "schedule"), ({"epochs": 2, "budget": 1.5}, "budget"),
    ({"epochs": 2, "budget": 0.5, "stop_at": 0.5}, "stop_at"), ({"epochs": 2, "protocol": "paper"}, "protocol"),
    ({"epochs": 2, "schedule": "step"}, "milestones"), ({"epochs": 2, "momentum": 1.0}, "momentum"),
    ({"lr": 0.1}, "epochs"), ({"epochs": 2, "optimizer": "adam"}, "optimizer"),
])
def test_bad_settings_name_their_field(values, field):
    with pytest.raises(SettingError) as e:
        train_config("cifar10", **values)
    assert e.value.field == field


def test_authors_protocol_is_timms_cosine_with_restarts_per_epoch():
    cfg = train_config("cifar10", epochs=12, protocol="authors")
    steps = 3
    ours = schedule_lrs(cfg, steps)[::steps]  # one value per epoch
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    timm = CosineLRScheduler(opt, t_initial=12 // 4, lr_min=3e-5, cycle_decay=0.5, cycle_limit=4, warmup_t=1,
                             warmup_lr_init=1e-5, warmup_prefix=False, t_in_epochs=True)
    expected = []
    for epoch in range(12):
        timm.step(epoch)
        expected.append(opt.param_groups[0]["lr"])
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(expected), rtol=1e-12, atol=0)
    assert len(set(schedule_lrs(cfg, steps)[3:6])) == 1  # set once per epoch


def test_budget_is_a_complete_schedule_and_stop_at_a_cut():
    full = schedule_lrs(train_config("cifar10", epochs=4, warmup_epochs=0), 5)
    budget = schedule_lrs(train_config("cifar10", epochs=4, warmup_epochs=0, budget=0.5), 5)
    cut = schedule_lrs(train_config("cifar10", epochs=4, warmup_epochs=0, stop_at=0.5), 5)
    assert len(full) == 20 and len(budget) == len(cut) == 10
    assert budget[-1] == pytest.approx(0.0, abs=1e-12) and full[-1] == pytest.approx(0.0, abs=1e-12)
    assert cut[-1] > 0.04 and cut == full[:10]


def test_warmup_reaches_the_peak_on_its_last_step_and_step_schedule_decays_at_milestones():
    lrs = schedule_lrs(train_config("cifar10", epochs=10, warmup_epochs=1), 4)
    torch.testing.assert_close(torch.tensor(lrs[:4]), torch.tensor([0.025, 0.05, 0.075, 0.1]), rtol=1e-9, atol=0)
    step = schedule_lrs(train_config("cifar10", epochs=90, schedule="step", milestones=(30, 60, 80),
                                     warmup_epochs=0), 2)
    assert [round(step[i], 8) for i in (59, 60, 119, 120, 159, 160)] == [0.1, 0.01, 0.01, 0.001, 0.001, 0.0001]


def test_optimizer_groups_give_coefficients_their_own_weight_decay():
    model = fresh_template_mixing(ArchSpec("tiny-cnn", 1, 10, 3), seed=0)
    groups = {g["name"]: g for g in parameter_groups(model, train_config("cifar10", epochs=1, coef_weight_decay=0.01))}
    assert set(groups) == {"weights", "templates", "coefficients", "norm"}
    assert groups["coefficients"]["weight_decay"] == 0.01 and groups["templates"]["weight_decay"] == 5e-4
    assert groups["norm"]["weight_decay"] == 5e-4
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())  # every parameter exactly once
    assert all("coefficients" in name for name, p in model.named_parameters()
               if any(p is q for q in groups["coefficients"]["params"]))
    opt = make_optimizer(model, train_config("cifar10", epochs=1, optimizer="adamw", weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["norm"] == 0.0


def test_every_setting_is_a_cli_option_with_its_real_defaults_in_the_help():
    runner = CliRunner()
    for cmd in ("train-small", "finetune"):
        text = re.sub(r"[\s│]+", " ", runner.invoke(app, [cmd, "--help"], terminal_width=200).output)
        for f in dataclasses.fields(TrainSettings):
            assert f.metadata["flag"].split("/")[0] in text, (cmd, f.name)
        assert f"default: {DEFAULTS['weight_decay']:g}" in text
        assert f"imagenet data: {PRESETS['imagenet']['batch_size']}" in text


def test_resolve_is_torch_free_and_merges():
    base = TrainSettings(epochs=3, lr=0.2)
    assert base.merged(TrainSettings(lr=0.3)).lr == 0.3 and base.merged(TrainSettings()).lr == 0.2
    assert resolve(base).lr == 0.2
