"""fuse's default rule (``--init-norm capped``) and the authors' code (``--init-norm authors-code``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from mgtool.cli import app
from mgtool.coef_init import CAP
from mgtool.errors import MgtoolError, SettingError
from mgtool.fuse import HIDDEN, coefficient_key, fuse, fuse_models, resolve_init

from .test_fuse_init import SPEC, _direct_ratios, _small, _write

runner = CliRunner()


@pytest.fixture(scope="module")
def nets():
    return [_small(1), _small(2)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuse-defaults")
    return _write(folder / "a.safetensors", 1), _write(folder / "b.safetensors", 2)


def _new_vectors(grown, layout) -> dict[tuple[str, int, int], torch.Tensor]:
    sd = grown.state_dict()
    return {(la.name, r, c): sd[coefficient_key(la.name)][r, c].double() for la, r, c in layout.new_tiles()}


# ------------------------------------------------------------------------ capped, the default


def test_the_default_is_orthogonal_capped_and_every_tile_ratio_is_within_the_cap(nets):
    assert resolve_init("orthogonal").rule == "capped" and resolve_init("orthogonal").cap == CAP == 0.1
    grown, layout = fuse_models(nets, SPEC, seed=3)
    direct = _direct_ratios(grown, layout)
    assert len(direct) == len(layout.new_tiles()) and max(direct) <= CAP + 1e-6


def test_capped_is_unit_where_the_unit_vector_is_under_the_cap_and_scaled_to_the_cap_elsewhere(nets):
    capped, layout = fuse_models(nets, SPEC, seed=3)
    unit, _ = fuse_models(nets, SPEC, init_norm="unit", seed=3)
    unit_ratios = dict(zip(_new_vectors(unit, layout), _direct_ratios(unit, layout)))
    capped_ratios = dict(zip(_new_vectors(capped, layout), _direct_ratios(capped, layout)))
    cv, uv = _new_vectors(capped, layout), _new_vectors(unit, layout)
    assert any(s > CAP for s in unit_ratios.values())  # the tiny nets exercise the cap ...
    for key, s in unit_ratios.items():
        if s <= CAP:  # ... untouched below it
            assert torch.equal(cv[key], uv[key])
        else:  # same direction, tile ratio exactly the cap
            assert_close(cv[key], uv[key] * (CAP / s), rtol=1e-5, atol=1e-7)
            assert abs(capped_ratios[key] / CAP - 1) < 1e-5


def test_capped_needs_the_cap_somewhere_and_leaves_low_ratio_layers_alone(nets):
    """Scaling the templates down 100x makes every unit vector's tile ratio tiny: nothing is capped."""
    result_tiles = {}
    small = [_small(1), _small(2)]
    with torch.no_grad():
        for net in small:
            for name, p in net.named_parameters():
                if name.startswith("net.") and name.endswith("coefficients"):
                    p.mul_(1000.0)  # diagonal tiles 1000x larger: unit vectors are far under the cap
    grown, layout = fuse_models(small, SPEC, seed=3)
    unit, _ = fuse_models(small, SPEC, init_norm="unit", seed=3)
    for key, v in _new_vectors(grown, layout).items():
        result_tiles[key] = torch.equal(v, _new_vectors(unit, layout)[key])
    assert all(result_tiles.values())


def test_fuse_json_says_which_rule_applied_and_what_the_cap_did_per_layer(pair, tmp_path):
    out = tmp_path / "g.safetensors"
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["init"] == "orthogonal" and d["init_rule"] == "capped" and d["init_cap"] == 0.1
    per_layer = d["init_cap_per_layer"]
    assert set(per_layer) == set(d["tile_ratio_per_layer"])
    for name, cap in per_layer.items():
        assert cap["cap"] == 0.1 and cap["tiles"] == 2 and 0 <= cap["capped"] <= 2
        assert d["tile_ratio_per_layer"][name]["max"] <= 0.1 + 1e-6
        assert (cap["capped"] > 0) == (cap["max_ratio_before"] > 0.1)
    assert d["tile_ratio"]["max"] <= 0.1 + 1e-6
    assert "warning" not in result.stderr  # the default starts inside the held-up range
    assert "capped at 0.1" in result.stderr


@pytest.mark.parametrize(("args", "rule"), [(["--init-norm", "unit"], "unit"), (["--init-scale", "0.3"], "scale"),
                                            (["--init-norm", "learned"], "learned")])
def test_explicit_choices_override_the_cap_and_report_their_rule(pair, tmp_path, args, rule):
    out = tmp_path / "o.safetensors"
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), *args, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["init_rule"] == rule and d["init_cap"] is None and "init_cap_per_layer" not in d


def test_a_start_outside_the_held_up_range_warns_after_success_with_what_to_pass(pair, tmp_path):
    out = tmp_path / "w.safetensors"
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "--init-scale", "0.5", "-o", str(out)])
    assert result.exit_code == 0 and out.exists()
    err = result.stderr.replace("\n", " ")
    assert "warning: new tiles start at tile ratio s up to 0.5" in err and "--init-norm capped" in err
    assert err.index("fused") < err.index("warning")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"init_norm": "capped", "scale": 0.2}, "init_scale"),
    ({"init_norm": "authors-code", "scale": 0.2}, "init_scale"),
    ({"name": "random", "init_norm": "authors-code"}, "init_norm"),
    ({"name": "random", "init_norm": "capped"}, "init_norm"),
])
def test_conflicting_rules_are_refused_once_with_their_field(kwargs, field):
    with pytest.raises(SettingError) as caught:
        resolve_init(kwargs.pop("name", "orthogonal"), **kwargs)
    assert caught.value.field == field


def test_conflicting_rules_are_a_usage_error_on_the_cli(pair, tmp_path):
    out = tmp_path / "x.safetensors"
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "--init-scale", "0.2", "--init-norm", "capped",
                                 "-o", str(out)])
    assert result.exit_code == 2 and not out.exists() and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------ the authors' code


def _authors_growth_update(c0, c1, c2, mode, rand_coef):
    """The authors' SModule.growth_update for member_template_sets [0, 1, 0, 1], g = 2, written from their
    code's description (chaudatascience/mixturegrowth models/layers.py): members 0, 1 trained, 2 = tile (0, 1)
    keeps its construction value, 3 = tile (1, 0); ``rand_coef`` is their ``torch.rand_like`` draw."""
    if mode == "copy":
        noise = 1.0 * rand_coef / rand_coef.norm()  # coefs_noise_growing = 1
        return c0 + noise, c1 + noise
    prev = torch.stack([c0, c1, c2])
    return c2, torch.linalg.svd(prev).Vh[-1] * 1.0


def test_authors_code_orthogonal_matches_their_growth_update_on_the_same_inputs(nets):
    grown, layout = fuse_models(nets, SPEC, init_norm="authors-code", seed=5)
    zero, _ = fuse_models(nets, SPEC, init="zero", seed=5)
    sd, zd = grown.state_dict(), zero.state_dict()
    checked = 0
    for layer in layout.plan.layers:
        coefs = sd[coefficient_key(layer.name)].double()
        if layout.roles[layer.name] != HIDDEN:
            assert torch.equal(sd[coefficient_key(layer.name)], zd[coefficient_key(layer.name)])
            continue
        c0, c1, c2, c3 = coefs[0, 0], coefs[1, 1], coefs[0, 1], coefs[1, 0]
        assert torch.equal(c0, zd[coefficient_key(layer.name)][0, 0].double())  # diagonals untouched
        want2, want3 = _authors_growth_update(c0, c1, c2, "orthogonal", None)
        assert torch.equal(c2, want2)
        assert_close(c3.abs(), want3.abs(), rtol=0, atol=1e-6)  # an SVD vector: its sign is the library's
        assert abs(float(c3.norm()) - 1) < 1e-6 and 0 < float(c2.norm()) <= 1 + 1e-6
        checked += 1
    assert checked >= 2
    for key in sd:  # everything but the new tiles is the zero-init fuse's
        if not key.endswith("coefficients"):
            assert torch.equal(sd[key], zd[key]), key


def test_authors_code_tile_01_is_a_construction_draw_independent_of_the_nets(nets):
    a, layout = fuse_models(nets, SPEC, init_norm="authors-code", seed=5)
    b, _ = fuse_models([_small(3), _small(4)], SPEC, init_norm="authors-code", seed=5)
    for layer in layout.plan.layers:
        if layout.roles[layer.name] == HIDDEN:
            key = coefficient_key(layer.name)
            assert torch.equal(a.state_dict()[key][0, 1], b.state_dict()[key][0, 1])
            assert not torch.equal(a.state_dict()[key][1, 0], b.state_dict()[key][1, 0])


def test_authors_code_copy_adds_one_shared_unit_uniform_vector_per_layer(nets):
    grown, layout = fuse_models(nets, SPEC, init="copy", init_norm="authors-code", seed=5)
    sd = grown.state_dict()
    for layer in layout.plan.layers:
        if layout.roles[layer.name] != HIDDEN:
            continue
        coefs = sd[coefficient_key(layer.name)].double()
        noise = coefs[0, 1] - coefs[0, 0]
        assert_close(coefs[1, 0] - coefs[1, 1], noise, rtol=0, atol=1e-6)  # shared by both new tiles
        assert abs(float(noise.norm()) - 1) < 1e-5 and float(noise.min()) >= -1e-6  # unit norm, uniform >= 0
        want = _authors_growth_update(coefs[0, 0], coefs[1, 1], None, "copy", noise)
        assert_close(coefs[0, 1], want[0], rtol=0, atol=1e-6)
        assert_close(coefs[1, 0], want[1], rtol=0, atol=1e-6)


def test_authors_code_is_for_two_nets(nets, pair, tmp_path):
    with pytest.raises(MgtoolError, match="two nets"):
        fuse_models(nets[:1], SPEC, factor=3, init_norm="authors-code")
    result = runner.invoke(app, ["fuse", str(pair[0]), "--factor", "3", "--init-norm", "authors-code",
                                 "-o", str(tmp_path / "a3.safetensors")])
    assert result.exit_code == 1 and not (tmp_path / "a3.safetensors").exists()


def test_authors_code_through_the_cli_writes_and_reports_its_rule(pair, tmp_path):
    out = tmp_path / "ac.safetensors"
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "--init-norm", "authors-code", "-o", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["init_rule"] == "authors-code" and d["new_tiles"] > 0 and d["tile_ratio"]["max"] > 0
    assert fuse(list(pair), None, init_norm="authors-code").to_dict()["tile_ratio"] == d["tile_ratio"]
