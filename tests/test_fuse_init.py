"""fuse --init-scale, --init-norm and the initialiser registry: each registered initialiser is tested."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from mgtool.checkpoint import CheckpointMeta, save_checkpoint
from mgtool.cli import app
from mgtool.coef_init import _INITS, HELD_COEFFICIENT_RATIO, get_init, init_names, number, register_init
from mgtool.errors import SettingError
from mgtool.fuse import HIDDEN, coefficient_key, coefficient_ratios, fuse, fuse_models, resolve_init, tile_ratios
from mgtool.info import checkpoint_info
from mgtool.mixing import mix
from mgtool.provenance import new_provenance
from mgtool.templates import to_template_mixing

from .conftest import TINY_SPECS, randomised_plain

runner = CliRunner()
SPEC = TINY_SPECS["wrn"]


def _small(seed: int):
    net = to_template_mixing(randomised_plain(SPEC, seed), templates=2, seed=seed).eval()
    with torch.no_grad():  # learned vectors of unequal norms, as after training
        for name, p in net.named_parameters():
            if name.endswith("coefficients"):
                p.mul_(torch.rand((), generator=torch.Generator().manual_seed(seed)) + 0.5)
    return net


@pytest.fixture(scope="module")
def nets():
    return [_small(1), _small(2)]


def _direct_ratios(grown, layout) -> list[float]:
    """s measured on the generated weights themselves (mixing.mix), independently of ratios.py."""
    out = []
    sd = grown.state_dict()
    for layer in layout.plan.layers:
        if layout.roles[layer.name] != HIDDEN:
            continue
        weight = mix(sd[f"banks.{layer.bank}"].double(), sd[coefficient_key(layer.name)].double(), layer.row_sets)
        g = layer.rows
        o, i = weight.shape[0] // g, weight.shape[1] // g
        norms = [[float(weight[r * o:(r + 1) * o, c * i:(c + 1) * i].norm()) for c in range(g)] for r in range(g)]
        diagonal = sum(norms[r][r] for r in range(g)) / g
        out += [norms[r][c] / diagonal for r in range(g) for c in range(g) if r != c]
    return out


SCALABLE = sorted(n for n in init_names() if get_init(n).scalable)


@pytest.mark.parametrize("init", SCALABLE)
@pytest.mark.parametrize("scale", [0.25, 1.5])
def test_init_scale_sets_every_new_tile_within_one_percent(nets, init, scale):
    grown, layout = fuse_models(nets, SPEC, init=init, init_scale=scale, seed=3)
    direct = _direct_ratios(grown, layout)
    assert len(direct) == len(layout.new_tiles()) > 0
    assert all(abs(s / scale - 1) < 0.01 for s in direct), (min(direct), max(direct))
    ratios = tile_ratios(layout.plan, grown.state_dict())
    assert ratios is not None
    assert_close(torch.tensor(ratios.values()), torch.tensor(direct), rtol=1e-6, atol=0)
    summary = ratios.to_dict()
    assert set(summary) == {"median", "min", "max"} and abs(summary["median"] / scale - 1) < 0.01


def test_init_scale_without_fusion_and_at_zero(nets):
    grown, layout = fuse_models(nets[:1], SPEC, factor=3, init="orthogonal", init_scale=0.5)
    assert all(abs(s / 0.5 - 1) < 0.01 for s in _direct_ratios(grown, layout))
    grown, layout = fuse_models(nets, SPEC, init="random", init_scale=0.0)
    sd = grown.state_dict()
    assert all(not sd[coefficient_key(la.name)][r, c].any() for la, r, c in layout.new_tiles())


def test_orthogonal_unit_norm_gives_unit_vectors_and_random_unit_is_uniform(nets):
    grown, layout = fuse_models(nets, SPEC, init="orthogonal", init_norm="unit", seed=1)
    sd = grown.state_dict()
    norms = torch.stack([sd[coefficient_key(la.name)][r, c].double().norm() for la, r, c in layout.new_tiles()])
    assert_close(norms, torch.ones(len(norms), dtype=torch.float64), rtol=1e-6, atol=0)
    grown, layout = fuse_models(nets, SPEC, init="random", init_norm="unit", seed=1)
    sd = grown.state_dict()
    new = torch.cat([sd[coefficient_key(la.name)][r, c] for la, r, c in layout.new_tiles()])
    assert float(new.min()) >= 0.0 and float(new.max()) < 1.0 and float(new.std()) > 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"init_scale": -0.1}, "init_scale"),
        ({"init_scale": math.nan}, "init_scale"),
        ({"init_scale": math.inf}, "init_scale"),
        ({"init_scale": 0.3, "init_norm": "unit"}, "init_scale"),
        ({"init": "zero", "init_scale": 0.3}, "init_scale"),
        ({"init_norm": "huge"}, "init_norm"),
        ({"init": "copy", "init_norm": "unit"}, "init_norm"),
        ({"init": "copy", "noise": math.nan}, "noise"),
        ({"init": "copy", "noise": math.inf}, "noise"),
        ({"init": "copy", "noise": -1.0}, "noise"),
        ({"init_options": {"temperature": 2}}, "temperature"),
    ],
)
def test_bad_init_settings_are_refused_with_their_field(kwargs, field):
    kwargs = {"init": "orthogonal", **kwargs}
    with pytest.raises(SettingError) as caught:
        resolve_init(kwargs.pop("init"), scale=kwargs.pop("init_scale", None), noise=kwargs.pop("noise", 0.0),
                     init_norm=kwargs.pop("init_norm", None), options=kwargs.pop("init_options", None))
    assert caught.value.field == field


@pytest.mark.parametrize("name", init_names())
def test_every_registered_initialiser_takes_its_declared_settings(name):
    """Generated from the registry: defaults pass each setting's own check, and the function
    accepts exactly the declared settings and returns one vector per new tile."""
    init = get_init(name)
    for param in init.params:
        assert param.check(param.name, param.default) == param.default
    settings = init.settings({})
    learned = torch.randn(3, 8, dtype=torch.float64)
    copies = torch.randn(4, 8, dtype=torch.float64)
    out = init.fn(learned, copies, torch.Generator().manual_seed(0), **settings)
    assert out.shape == (4, 8) and out.dtype == torch.float64 and torch.isfinite(out).all()


def test_an_initialiser_with_its_own_setting_is_one_registration():
    @register_init("test-constant", "every new coefficient is `value`",
                   (number("value", 1.0, "the constant", low=0.0),))
    def constant(learned, copies, generator, *, value):
        return torch.full(copies.shape, value, dtype=torch.float64)

    try:
        nets = [_small(1), _small(2)]
        grown, layout = fuse_models(nets, SPEC, init="test-constant", init_options={"value": "0.5"})
        sd = grown.state_dict()
        assert all(torch.all(sd[coefficient_key(la.name)][r, c] == 0.5) for la, r, c in layout.new_tiles())
        with pytest.raises(SettingError) as caught:
            fuse_models(nets, SPEC, init="test-constant", init_options={"value": -1})
        assert caught.value.field == "value"
    finally:
        del _INITS["test-constant"]


# ------------------------------------------------------------------------ files, JSON, info


def _write(path: Path, seed: int = 0, net=None) -> Path:
    net = _small(seed) if net is None else net
    from mgtool.archs import resolve_spec

    meta = CheckpointMeta("template-mixing", resolve_spec(SPEC), net.plan, new_provenance((), ["test"]))
    return save_checkpoint(path, net.state_dict(), meta, force=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fuse-init")
    return _write(folder / "a.safetensors", 1), _write(folder / "b.safetensors", 2)


def test_cli_json_reports_the_tile_ratio_and_info_shows_the_same(pair, tmp_path):
    out = tmp_path / "c.safetensors"
    args = ["fuse", str(pair[0]), str(pair[1]), "--init", "orthogonal", "--init-scale", "0.25", "-o", str(out),
            "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert set(d["tile_ratio"]) == {"median", "min", "max"}
    assert all(abs(v / 0.25 - 1) < 0.01 for v in d["tile_ratio"].values())
    assert d["init_scale"] == 0.25 and d["init_options"] == {"init_norm": "learned"}
    assert set(d["tile_ratio_per_layer"]) == {la.name for la, _, _ in fuse_models(
        [_small(1), _small(2)], SPEC, init="zero")[1].new_tiles()}
    info = checkpoint_info(out, count_flops=False)
    assert_close(torch.tensor(list(info["tile_ratio"].values())), torch.tensor(list(d["tile_ratio"].values())),
                 rtol=1e-9, atol=0)
    result = runner.invoke(app, ["info", str(out), "--json", "--no-flops"])
    assert json.loads(result.stdout)["tile_ratio"] == info["tile_ratio"]
    assert checkpoint_info(pair[0], count_flops=False)["tile_ratio"] is None  # a small net has no new tiles


def test_default_fuse_reports_the_realised_ratio_of_each_initialisers_own_norm(pair, tmp_path):
    result = fuse(list(pair), tmp_path / "d.safetensors", init="orthogonal")
    assert result.init.scale is None and result.tile_ratio is not None
    assert result.to_dict()["tile_ratio"]["median"] > 0.0


def test_cli_refuses_scale_with_unit_norm_as_a_usage_error(pair, tmp_path):
    out = tmp_path / "e.safetensors"
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "--init-scale", "0.2", "--init-norm", "unit",
                                 "-o", str(out)])
    assert result.exit_code == 2 and not out.exists()
    for bad in ("-1", "nan", "inf"):
        result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "--init-scale", bad, "-o", str(out)])
        assert result.exit_code == 2 and "--init-scale" in result.stderr and not out.exists()
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "--init-opt", "init_norm=big", "-o", str(out)])
    assert result.exit_code == 2 and "--init-opt init_norm" in result.stderr


# ------------------------------------------------------------------------ validated once


def test_fuse_builds_each_model_once_and_reads_each_header_once(pair, tmp_path, monkeypatch):
    import mgtool.fuse.inputs as inputs
    import mgtool.fuse.layout as layout

    built, metas, headers = [], [], []
    real_build, real_meta, real_header = layout.build_plain, inputs.read_meta, inputs.header_tensors
    monkeypatch.setattr(layout, "build_plain", lambda spec: built.append(spec.width) or real_build(spec))
    monkeypatch.setattr(inputs, "read_meta", lambda p: metas.append(p) or real_meta(p))
    monkeypatch.setattr(inputs, "header_tensors", lambda p: headers.append(p) or real_header(p))
    fuse(list(pair), tmp_path / "f.safetensors")
    assert sorted(built) == [SPEC.width, 2 * SPEC.width]  # one small, one grown meta model
    assert metas == list(pair) and headers == list(pair)


def _decayed(net):
    """``net`` with its templates shrunk 1000x along the coefficient directions no layer uses, as weight
    decay leaves them after long training; every generated weight is unchanged."""
    state = net.state_dict()
    with torch.no_grad():
        for bank in net.plan.banks:
            used = torch.cat([state[coefficient_key(la.name)].reshape(-1, bank.templates_per_set)
                              for la in net.plan.layers_of(bank.name)]).double()
            _, sv, vh = torch.linalg.svd(used)
            unused = vh[int((sv > 1e-9).sum()):]  # (K - rank, K): directions no coefficient vector has
            templates = net.get_parameter(f"banks.{bank.name}")
            flat = templates.detach().reshape(*templates.shape[:2], -1).double()
            shrink = torch.eye(bank.templates_per_set, dtype=torch.float64) - 0.999 * unused.T @ unused
            templates.copy_(torch.einsum("ij,sjp->sip", shrink, flat).reshape(templates.shape))
    return net


def test_an_ill_conditioned_init_scale_is_reported_and_warned_about(tmp_path):
    nets = [_decayed(_small(1)), _decayed(_small(2))]
    grown, layout = fuse_models(nets, SPEC, init="orthogonal", init_scale=0.25, seed=3)
    assert all(abs(s / 0.25 - 1) < 0.01 for s in _direct_ratios(grown, layout))  # s is still met ...
    scaled = coefficient_ratios(layout.plan, grown.state_dict())
    assert scaled is not None and min(scaled.values()) > 100  # ... by coefficients >100x the diagonal ones
    unit, _ = fuse_models(nets, SPEC, init="orthogonal", init_norm="unit", seed=3)
    assert max(coefficient_ratios(layout.plan, unit.state_dict()).values()) < HELD_COEFFICIENT_RATIO
    paths = [_write(tmp_path / f"{i}.safetensors", net=net) for i, net in enumerate(nets)]
    out = tmp_path / "grown.safetensors"
    result = runner.invoke(app, ["fuse", *map(str, paths), "--init-scale", "0.25", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert "warning: new tiles start at coefficient ratio up to" in result.stderr.replace("\n", " ")
    assert "--init-norm capped" in result.stderr
    assert json.loads(result.stdout)["coefficient_ratio"]["min"] > 100
    assert checkpoint_info(out, count_flops=False)["coefficient_ratio"]["min"] > 100
    quiet = runner.invoke(app, ["fuse", *map(str, paths), "-o", str(tmp_path / "u.st")])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
