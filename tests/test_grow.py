"""grow baselines: Random and Net2Net (function preservation, its two known pitfalls), files, CLI."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from typer.testing import CliRunner

from mgtool.archs import ArchSpec, build_plain, get_family, grow_spec, input_size, resolve_spec
from mgtool.channel_spaces import channel_spaces
from mgtool.checkpoint import CheckpointMeta, Flops, read_meta, save_checkpoint
from mgtool.cli import app
from mgtool.errors import MgtoolError
from mgtool.grow_baselines import Net2NetMaps, grow, grow_net2net, grow_random
from mgtool.loading import load_checkpoint
from mgtool.provenance import new_provenance

from .conftest import TINY_SPECS, randomised_plain

runner = CliRunner()

SPECS = {key: resolve_spec(spec) for key, spec in TINY_SPECS.items()}
SPECS["resnet50-scaled-stem"] = resolve_spec(replace(TINY_SPECS["resnet50"], options={"stem": "scaled"}))
SPECS["resnet18-scaled-stem"] = resolve_spec(replace(TINY_SPECS["resnet18"], options={"stem": "scaled"}))




def _batch(spec: ArchSpec, n: int = 4) -> torch.Tensor:
    size = [min(d, 32) for d in input_size(spec)]
    return torch.randn(n, spec.in_chans, *size, generator=torch.Generator().manual_seed(7))


def _logits(model: nn.Module, spec: ArchSpec) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_batch(spec))


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    scale = float(expected.abs().max())
    assert_close(actual, expected, rtol=rel, atol=rel * scale)


def _relative_change(wide: nn.Module, small: nn.Module, spec: ArchSpec) -> float:
    ref = _logits(small, spec)
    return float((_logits(wide, spec) - ref).abs().max() / ref.abs().max())


# ------------------------------------------------------------------------ net2net


# Channel-space tracing widens the families that declare no Family.widening of their own.
TRACED = sorted(k for k, spec in SPECS.items() if get_family(spec.name).widening is None)


@pytest.mark.parametrize("key", TRACED)
def test_net2net_preserves_the_function(key):
    spec = SPECS[key]
    small = randomised_plain(spec, 1)
    wide, maps = grow_net2net(small, spec, 2, seed=3)
    assert maps.maps and sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in small.parameters())
    _assert_rel_close(_logits(wide, spec), _logits(small, spec))
    assert _unit_errors(small, wide, maps) == []


@pytest.mark.parametrize("key", ["wrn", "resnet50"])
def test_net2net_three_fold_and_in_train_mode(key):
    spec = SPECS[key]
    small = randomised_plain(spec, 1)
    wide, maps = grow_net2net(small, spec, 3, seed=0)
    _assert_rel_close(_logits(wide, spec), _logits(small, spec))
    assert _unit_errors(small, wide, maps) == []
    # Train mode: replicated channels have identical batch statistics; float32 summation
    # order differs over 3x as many input channels, so a looser (stated) tolerance.
    x = _batch(spec, 8)
    with torch.no_grad():
        _assert_rel_close(wide.train()(x), small.train()(x), rel=1e-4)


def test_net2net_maps_keep_the_old_units_first_and_replicate_uniformly():
    spec = SPECS["wrn"]
    small = randomised_plain(spec, 1)
    _, maps = grow_net2net(small, spec, 2, seed=5)
    for index in maps.maps.values():
        n = index.numel() // 2
        assert torch.equal(index[:n], torch.arange(n))
        assert int(index.min()) >= 0 and int(index.max()) < n


def _unit_errors(small: nn.Module, wide: nn.Module, maps: Net2NetMaps) -> list[str]:
    """Per-unit Net2Net properties: every copy of a unit carries its incoming weights, bias and
    BatchNorm affine and statistics unchanged; outgoing weights divided by the copy count."""
    errors = []
    s, w = small.state_dict(), wide.state_dict()
    for name, layer in maps.spaces.layers.items():
        out_map, in_map = maps.of_layer(name)
        out_map = out_map if out_map is not None else torch.arange(w[f"{name}.weight"].shape[0])
        if layer.kind == "norm":
            for t in ("weight", "bias", "running_mean", "running_var"):
                bad = (w[f"{name}.{t}"] != s[f"{name}.{t}"][out_map]).nonzero().flatten().tolist()
                if bad:
                    errors.append(f"{name}.{t} units {bad[:5]}")
            continue
        old, new = s[f"{name}.weight"], w[f"{name}.weight"]
        expected = old[out_map]
        if in_map is not None:
            counts = torch.bincount(in_map, minlength=old.shape[1]).to(old.dtype)
            shape = [1, -1] + [1] * (old.ndim - 2)
            expected = expected[:, in_map] / counts[in_map].view(shape)
        if not torch.equal(new, expected):
            errors.append(f"{name}.weight")
        if f"{name}.bias" in s and not torch.equal(w[f"{name}.bias"], s[f"{name}.bias"][out_map]):
            errors.append(f"{name}.bias")
    return errors


def _bn_stats_copied_for_one_new_unit_only(wide: nn.Module, maps: Net2NetMaps) -> nn.Module:
    """Pitfall 1 of the public port: only the first new unit gets the copied statistics."""
    sd = {k: v.clone() for k, v in wide.state_dict().items()}
    for name, layer in maps.spaces.layers.items():
        index = maps.maps.get(layer.out_space)
        if layer.kind == "norm" and index is not None:
            n = index.numel() // 2
            sd[f"{name}.running_mean"][n + 1 :] = 0.0
            sd[f"{name}.running_var"][n + 1 :] = 1.0
    faulty = copy.deepcopy(wide)
    faulty.load_state_dict(sd)
    return faulty


def _renormalised_after_the_copy(wide: nn.Module, small: nn.Module, maps: Net2NetMaps) -> nn.Module:
    """Pitfall 2: weights rescaled back to the small layer's norm after dividing by the count."""
    sd = {k: v.clone() for k, v in wide.state_dict().items()}
    old = small.state_dict()
    for name, layer in maps.spaces.layers.items():
        if layer.kind != "norm" and maps.maps.get(layer.in_space) is not None:
            key = f"{name}.weight"
            sd[key] *= old[key].norm() / sd[key].norm()
    faulty = copy.deepcopy(wide)
    faulty.load_state_dict(sd)
    return faulty


@pytest.mark.parametrize("key", ["wrn", "resnet18", "tiny-cnn"])
def test_the_checks_catch_the_two_pitfalls_of_the_public_port(key):
    spec = SPECS[key]
    small = randomised_plain(spec, 1)
    wide, maps = grow_net2net(small, spec, 2, seed=3)
    assert _relative_change(wide, small, spec) < 1e-5
    for faulty in (_bn_stats_copied_for_one_new_unit_only(wide, maps), _renormalised_after_the_copy(wide, small, maps)):
        assert _relative_change(faulty, small, spec) > 1e-3
        assert _unit_errors(small, faulty, maps)


def test_grow_refuses_to_write_a_net2net_that_changed_the_function(plain_file, tmp_path, monkeypatch):
    import mgtool.grow_baselines as gb

    real = gb.grow_net2net

    def broken(net, spec, factor, seed=0, **options):
        wide, maps = real(net, spec, factor, seed, **options)
        return _renormalised_after_the_copy(wide, net, maps), maps

    monkeypatch.setattr(gb, "grow_net2net", broken)
    out = tmp_path / "w.safetensors"
    with pytest.raises(MgtoolError, match="net2net changed the function.*nothing written"):
        grow(plain_file, out, method="net2net")
    assert not out.exists()


# ------------------------------------------------------------------------ channel spaces


def test_residual_connections_tie_channel_spaces():
    spec = replace(SPECS["wrn"], options={**SPECS["wrn"].options, "depth": 16})  # two blocks per stage
    layers = channel_spaces(build_plain(spec)).layers
    # Stage 2's first block has a projection shortcut, its second an identity one: both
    # blocks' conv2 outputs, the shortcut and the next BatchNorm on the stream are one space.
    stream = layers["stages.1.0.conv2"].out_space
    assert layers["stages.1.0.shortcut"].out_space == stream
    assert layers["stages.1.1.bn1"].out_space == stream and layers["stages.1.1.conv1"].in_space == stream
    assert layers["stages.1.1.conv2"].out_space == stream
    assert layers["stages.2.0.shortcut"].in_space == stream
    assert layers["stages.1.0.conv1"].out_space != stream
    assert layers["stages.1.0.shortcut"].in_space != stream  # the previous stage's stream
    r50 = channel_spaces(build_plain(SPECS["resnet50"])).layers
    assert r50["layer2.0.downsample.0"].out_space == r50["layer2.0.conv3"].out_space == r50["layer2.1.conv3"].out_space
    assert r50["layer2.0.downsample.1"].out_space == r50["layer3.0.conv1"].in_space


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))


class _Flattened(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 1), nn.Linear(4 * 2 * 2, 2)

    def forward(self, x):
        return self.head(torch.flatten(self.conv(x), 1))


def test_unknown_channel_operations_are_refused():
    with pytest.raises(MgtoolError, match="operation cat is not one whose effect on channels is known"):
        channel_spaces(_Concat())
    from mgtool.channel_spaces import space_sizes

    model = _Flattened()
    with pytest.raises(MgtoolError, match="flattened feature map"):
        space_sizes(model, channel_spaces(model))


# ------------------------------------------------------------------------ random


@pytest.mark.parametrize("key", ["wrn", "resnet18", "tiny-mlp"])
def test_random_keeps_old_weights_in_their_block_and_the_family_init_elsewhere(key):
    spec = SPECS[key]
    small = randomised_plain(spec, 1)
    wide = grow_random(small, spec, 2, seed=4)
    torch.manual_seed(4)
    fresh = build_plain(grow_spec(spec, 2)).state_dict()
    w, s = wide.state_dict(), small.state_dict()
    grew = 0
    for name, old in s.items():
        block = tuple(slice(0, d) for d in old.shape)
        assert torch.equal(w[name][block], old), name
        mask = torch.ones_like(w[name], dtype=torch.bool)
        mask[block] = False
        assert torch.equal(w[name][mask], fresh[name][mask]), name
        grew += int(mask.any())
    assert grew > len(s) // 2


# ------------------------------------------------------------------------ files and CLI


def _write_plain(path: Path, model: nn.Module, spec: ArchSpec) -> Path:
    meta = CheckpointMeta("plain", spec, None, new_provenance((), ["test"]), Flops(50.0, 10.0), {"name": "synthetic"})
    return save_checkpoint(path, model.state_dict(), meta, force=True)


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory) -> Path:
    spec = SPECS["tiny-cnn"]
    return _write_plain(tmp_path_factory.mktemp("grow") / "small.safetensors", randomised_plain(spec, 2), spec)


@pytest.mark.parametrize("method", ["random", "net2net"])
def test_grow_file(plain_file, tmp_path, method):
    out = tmp_path / "wide.safetensors"
    result = grow(plain_file, out, method=method, seed=1)
    meta = read_meta(out)
    assert meta.kind == "plain" and meta.arch == grow_spec(SPECS["tiny-cnn"], 2)
    assert meta.flops == Flops(50.0, 10.0) and meta.data == {"name": "synthetic"}
    assert meta.provenance.parents[0].path == str(plain_file) and meta.provenance.parents[0].training_flops == 50.0
    wide, _ = load_checkpoint(out)
    if method == "net2net":
        small, _ = load_checkpoint(plain_file)
        _assert_rel_close(_logits(wide, SPECS["tiny-cnn"]), _logits(small, SPECS["tiny-cnn"]))
        assert result.max_abs_logit_diff <= 1e-5 * result.logit_scale


def test_grow_bad_inputs(plain_file, tmp_path):
    from mgtool.convert import convert

    out = tmp_path / "o.safetensors"
    tm = convert(plain_file, out=tmp_path / "tm.safetensors").path
    with pytest.raises(MgtoolError, match="template-mixing checkpoint; grow takes plain"):
        grow(tm, out, method="random")
    with pytest.raises(MgtoolError, match="--method must be one of"):
        grow(plain_file, out, method="firefly")
    with pytest.raises(MgtoolError, match="at least 2"):
        grow(plain_file, out, method="net2net", factor=1)
    with pytest.raises(MgtoolError, match="no such file"):
        grow(tmp_path / "nope.safetensors", out, method="random")
    assert not out.exists()


def test_grow_cli(plain_file, tmp_path):
    out = tmp_path / "w.safetensors"
    result = runner.invoke(app, ["grow", str(plain_file), "--method", "net2net", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["method"] == "net2net" and d["verify"]["relative_logit_diff"] < 1e-5 and d["output"] == str(out)
    result = runner.invoke(app, ["grow", str(plain_file), "--method", "random", "-o", str(out)])
    assert result.exit_code == 1 and "already exists" in result.stderr and result.stdout == ""
    result = runner.invoke(app, ["grow", str(plain_file), "--method", "random", "-o", str(out), "--force"])
    assert result.exit_code == 0 and result.stdout == f"{out}\n"
    result = runner.invoke(app, ["grow", "--help"])
    assert result.exit_code == 0 and "Example: mgtool grow" in result.stdout
    result = runner.invoke(app, ["grow", str(plain_file), "-o", str(out)])  # --method missing
    assert result.exit_code == 2
