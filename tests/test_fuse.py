"""fuse: the tiling, the zero-init invariant on every family, the initialisers, files and CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from mgtool.archs import ArchSpec, get_family, input_size, resolve_spec
from mgtool.checkpoint import CheckpointMeta, Flops, read_meta, save_checkpoint
from mgtool.cli import app
from mgtool.coef_init import get_init, init_names, orthogonal_complement_rows, register_init, rms_norm
from mgtool.errors import MgtoolError, SettingError
from mgtool.fuse import HIDDEN, SumOfLogits, coefficient_key, fuse, fuse_models
from mgtool.loading import load_checkpoint
from mgtool.model import TemplateMixingNet
from mgtool.provenance import new_provenance, sha256_file
from mgtool.templates import to_template_mixing

from .conftest import TINY_SPECS, randomised_plain

runner = CliRunner()




def _fusable(spec: ArchSpec) -> ArchSpec:
    # timm's plain stem stays 64 channels at every width; fuse needs it to grow.
    return replace(spec, options={**spec.options, "stem": "scaled"}) if spec.name.startswith("resnet") else spec


FUSE_SPECS = {key: resolve_spec(_fusable(spec)) for key, spec in TINY_SPECS.items()}


def _small(key: str, seed: int, templates: int = 2) -> TemplateMixingNet:
    """A small template-mixing net with non-trivial BN statistics, its own templates."""
    return to_template_mixing(randomised_plain(FUSE_SPECS[key], seed), templates=templates, seed=seed).eval()


def _batch(spec: ArchSpec, n: int = 4) -> torch.Tensor:
    size = [min(d, 32) for d in input_size(spec)]  # ResNets at 32x32: seconds less per test, same layers
    return torch.randn(n, spec.in_chans, *size, generator=torch.Generator().manual_seed(7))


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Within ``rel`` of the logit scale (max |expected|)."""
    scale = float(expected.abs().max())
    assert_close(actual, expected, rtol=rel, atol=rel * scale)


# ------------------------------------------------------------------------ the invariant


@pytest.mark.parametrize("key", sorted(FUSE_SPECS))
def test_zero_init_fusion_computes_the_sum_of_the_logits(key):
    spec = FUSE_SPECS[key]
    a, b = _small(key, 1), _small(key, 2)
    grown, layout = fuse_models([a, b], spec, init="zero")
    assert set(layout.roles.values()) == {"hidden", "first", "classifier"}
    assert layout.spec.width == 2 * spec.width
    sd, sa, sb = grown.state_dict(), a.state_dict(), b.state_dict()
    for name, rule in layout.rules.items():  # every per-channel tensor, found from shapes alone
        how = layout.concat.get(name)
        if rule == "concat" and how.parts == 1:  # interleaved ones: the family's own test (test_vit)
            assert torch.equal(sd[name], torch.cat([sa[name], sb[name]], how.dim)), name
    x = _batch(spec)
    with torch.no_grad():
        expected = a(x) + b(x)
        if not get_family(spec.name).fusion_sums_logits:
            # The family says a norm mixes the joined streams (LayerNorm): check the declaration is
            # not stale, i.e. the grown net is measurably not the sum.
            gap = float((grown.eval()(x) - expected).abs().max() / expected.abs().max())
            assert gap > 1e-4, "the family says fusion is not the sum, but it is: set fusion_sums_logits"
            return
        _assert_rel_close(grown.eval()(x), expected)
        # BatchNorm normalises each channel alone, so train mode fuses too (running stats aside).
        # Looser: batch statistics over 4 images (a single value per channel in ResNet-50's last
        # stage here) amplify 1-ulp differences between the grown and small weights ~1000-fold.
        _assert_rel_close(grown.train()(x), a.train()(x) + b.train()(x), rel=1e-3)


def test_per_channel_rule_covers_timm_downsample_and_wrn_shortcuts():
    from mgtool.fuse import plan_fusion

    for key, names in (
        ("resnet50", ["net.layer2.0.downsample.1.running_var", "net.layer1.0.downsample.1.weight"]),
        ("wrn", ["net.norm.bias", "net.stages.1.0.bn1.running_mean"]),
    ):
        small = _small(key, 1)
        layout = plan_fusion(FUSE_SPECS[key], small.plan, 2, fused=True)
        assert all(layout.rules[name] == "concat" for name in names)
        if key == "wrn":
            shortcut = [la for la in layout.plan.layers if "shortcut" in la.name]
            assert shortcut and all(layout.roles[la.name] == HIDDEN for la in shortcut)


@pytest.mark.parametrize("key", ["tiny-cnn", "wrn-block-input"])
def test_three_nets_fuse_into_one_three_times_as_wide(key):
    spec = FUSE_SPECS[key]
    nets = [_small(key, s) for s in (1, 2, 3)]
    grown, layout = fuse_models(nets, spec, factor=3, init="zero")
    x = _batch(spec)
    with torch.no_grad():
        _assert_rel_close(grown.eval()(x), sum(n(x) for n in nets))
    assert layout.spec.width == 3 * spec.width
    assert all(b.sets == 3 for b in layout.plan.banks)


@pytest.mark.parametrize(("key", "factor"), [("tiny-cnn", 2), ("wrn", 2), ("resnet18", 2), ("tiny-mlp", 3),
                                             ("vit", 2), ("vit", 3)])
def test_without_fusion_zero_init_computes_g_times_the_logits(key, factor):
    spec = FUSE_SPECS[key]
    a = _small(key, 1)
    grown, layout = fuse_models([a], spec, factor=factor, init="zero")
    x = _batch(spec)
    with torch.no_grad():
        _assert_rel_close(grown.eval()(x), factor * a(x))
    assert all(b.sets == 1 for b in layout.plan.banks)
    for layer in layout.plan.layers:
        assert all(rows == (0,) for rows in layer.row_sets)


def test_without_fusion_every_tile_mixes_from_the_one_template_set():
    a = _small("tiny-cnn", 1)
    grown, layout = fuse_models([a], FUSE_SPECS["tiny-cnn"], init="orthogonal")
    sd, small = grown.state_dict(), a.state_dict()
    for bank in layout.plan.banks:
        assert torch.equal(sd[f"banks.{bank.name}"], small[f"banks.{bank.name}"])
    for layer in layout.plan.layers:
        coefs, alpha = sd[coefficient_key(layer.name)], small[coefficient_key(layer.name)][0, 0]
        diagonal = [(r, r) for r in range(2)] if layout.roles[layer.name] == HIDDEN else None
        if diagonal:
            for r, c in diagonal:
                assert torch.equal(coefs[r, c], alpha)
        else:
            assert all(torch.equal(v, alpha) for v in coefs.reshape(-1, alpha.numel()))
    # The new half's per-channel tensors are copies of A's.
    assert torch.equal(sd["net.bn2.running_var"], small["net.bn2.running_var"].repeat(2))
    assert torch.equal(sd["net.head.bias"], 2 * small["net.head.bias"])


# ------------------------------------------------------------------------ the tiling


def test_tiling_banks_rows_and_per_channel_tensors():
    a, b = _small("tiny-cnn", 1), _small("tiny-cnn", 2)
    with torch.no_grad():
        a.net.bn1.num_batches_tracked.fill_(7)
        b.net.bn1.num_batches_tracked.fill_(9)
    grown, layout = fuse_models([a, b], FUSE_SPECS["tiny-cnn"], init="orthogonal")
    sd, sa, sb = grown.state_dict(), a.state_dict(), b.state_dict()
    plan = {la.name: la for la in layout.plan.layers}
    # Every bank: set 0 = A's templates, set 1 = B's.
    for bank in layout.plan.banks:
        key = f"banks.{bank.name}"
        assert bank.sets == 2
        assert torch.equal(sd[key][0], sa[key][0]) and torch.equal(sd[key][1], sb[key][0])
    # Hidden: 2x2, row r from set r, diagonal = the inputs' coefficients.
    assert (plan["conv2"].rows, plan["conv2"].cols, plan["conv2"].row_sets) == (2, 2, ((0,), (1,)))
    c2 = sd[coefficient_key("conv2")]
    assert torch.equal(c2[0, 0], sa[coefficient_key("conv2")][0, 0])
    assert torch.equal(c2[1, 1], sb[coefficient_key("conv2")][0, 0])
    # First layer (the image in): 2x1; classifier (the classes out): 1x2 over both sets.
    assert (plan["conv1"].rows, plan["conv1"].cols, plan["conv1"].row_sets) == (2, 1, ((0,), (1,)))
    assert (plan["head"].rows, plan["head"].cols, plan["head"].row_sets) == (1, 2, ((0, 1),))
    head, k = sd[coefficient_key("head")], sa[coefficient_key("head")].shape[-1]
    assert torch.equal(head[0, 0, :k], sa[coefficient_key("head")][0, 0]) and not head[0, 0, k:].any()
    assert torch.equal(head[0, 1, k:], sb[coefficient_key("head")][0, 0]) and not head[0, 1, :k].any()
    # Per-channel tensors concatenated [A; B]; classifier bias summed; batch count the larger.
    for name in ("net.bn1.weight", "net.bn2.running_mean", "net.bn3.running_var", "net.conv3.bias"):
        assert torch.equal(sd[name], torch.cat([sa[name], sb[name]]))
    assert torch.equal(sd["net.head.bias"], sa["net.head.bias"] + sb["net.head.bias"])
    assert int(sd["net.bn1.num_batches_tracked"]) == 9


# ------------------------------------------------------------------------ initialisers


def _vectors_over(grown: TemplateMixingNet, layout, bank: str, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(learned, new) coefficient vectors of the grown net that mix from set s of a bank."""
    sd = grown.state_dict()
    learned, new = [], []
    for layer in layout.plan.layers:
        if layer.bank != bank:
            continue
        coefs = sd[coefficient_key(layer.name)].double()
        role = layout.roles[layer.name]
        if role == HIDDEN:
            learned.append(coefs[s, s])
            new.extend(coefs[s, c] for c in range(layer.cols) if c != s)
        elif role == "first":
            learned.append(coefs[s, 0])
        else:
            k = coefs.shape[-1] // len(layer.row_sets[0])
            learned.append(coefs[0, s, s * k : (s + 1) * k])
    return torch.stack(learned), torch.stack(new) if new else torch.zeros(0)


@pytest.mark.parametrize("key", ["tiny-cnn", "wrn"])
def test_orthogonal_init_on_a_fused_net(key):
    a, b = _small(key, 1), _small(key, 2)
    with torch.no_grad():  # learned vectors of unequal norms, as after training
        for m in (a, b):
            for p in m.parameters():
                if p.ndim == 3:
                    p.mul_(torch.rand(()) + 0.5)
    grown, layout = fuse_models([a, b], FUSE_SPECS[key], init="orthogonal", init_norm="learned", seed=3)
    checked = 0
    for bank in layout.plan.banks:
        for s in range(bank.sets):
            learned, new = _vectors_over(grown, layout, bank.name, s)
            if new.numel() == 0:
                continue
            assert learned.shape[0] + new.shape[0] <= bank.templates_per_set  # g=2, t=2: it fits
            scale = new.norm(dim=1).max() * learned.norm(dim=1).max()
            assert float((new @ learned.T).abs().max()) < 1e-6 * scale
            gram = new @ new.T
            assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-6 * float(gram.max()), rtol=0)
            assert_close(
                new.norm(dim=1), torch.full((new.shape[0],), rms_norm(learned), dtype=new.dtype), rtol=1e-5, atol=0
            )
            checked += 1
    assert checked >= 2


def test_copy_init_repeats_the_diagonal_of_the_same_row():
    a, b = _small("wrn", 1), _small("wrn", 2)
    grown, layout = fuse_models([a, b], FUSE_SPECS["wrn"], init="copy")
    sd = grown.state_dict()
    for layer in layout.plan.layers:
        if layout.roles[layer.name] == HIDDEN:
            c = sd[coefficient_key(layer.name)]
            assert torch.equal(c[0, 1], c[0, 0]) and torch.equal(c[1, 0], c[1, 1])


def test_random_init_matches_the_learned_scale_and_normal_does_not():
    a, b = _small("wrn", 1), _small("wrn", 2)
    with torch.no_grad():
        for m in (a, b):
            for name, p in m.named_parameters():
                if name.endswith("coefficients"):
                    p.mul_(10.0)
    ratios = {}
    for init in ("random", "normal"):
        grown, layout = fuse_models([a, b], FUSE_SPECS["wrn"], init=init, seed=0)
        learned_sq, new_sq = [], []
        for bank in layout.plan.banks:
            for s in range(bank.sets):
                learned, new = _vectors_over(grown, layout, bank.name, s)
                if new.numel():
                    learned_sq.append(learned.pow(2).sum(1).mean())
                    new_sq.append(new.pow(2).sum(1).mean())
        ratios[init] = float(torch.stack(new_sq).mean() / torch.stack(learned_sq).mean())
    assert 0.5 < ratios["random"] < 2.0  # the learned vectors' scale (norms ~10 here)
    assert ratios["normal"] < 0.1  # N(0, 1) ignores it


def _learned(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def test_orthogonal_init_where_the_dimension_allows():
    learned = _learned(3, 8)
    gen = torch.Generator().manual_seed(0)
    new = get_init("orthogonal").fn(learned, torch.zeros(5, 8), gen, init_norm="learned")
    assert new.shape == (5, 8)
    assert float((new @ learned.T).abs().max()) < 1e-10
    assert_close(new @ new.T, torch.eye(5, dtype=torch.float64) * rms_norm(learned) ** 2, atol=1e-9, rtol=0)


def test_orthogonal_init_beyond_the_dimension_is_as_orthogonal_as_possible():
    learned = _learned(2, 4)  # without fusion, g=2, t=2: 4 new vectors, room for 2
    rows = orthogonal_complement_rows(learned, 6, torch.Generator().manual_seed(1))
    assert rows.shape == (6, 4)
    assert_close(rows.norm(dim=1), torch.ones(6, dtype=torch.float64))
    fit, rest = rows[:2], rows[2:]
    assert float((fit @ learned.T).abs().max()) < 1e-10  # the first K - rank fit the complement
    assert_close(fit @ fit.T, torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(rest @ rest.T, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)  # one frame of K


def test_orthogonal_init_with_dependent_learned_vectors_uses_the_true_complement():
    base = _learned(1, 3)
    learned = torch.cat([base, 2 * base])  # rank 1: two directions left
    rows = orthogonal_complement_rows(learned, 2, torch.Generator().manual_seed(2))
    assert float((rows @ base.T).abs().max()) < 1e-10
    assert_close(rows @ rows.T, torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)


def test_zero_copy_and_noise_initialisers():
    learned, copies = _learned(2, 4), _learned(6, 4, seed=1)
    gen = torch.Generator().manual_seed(0)
    assert not get_init("zero").fn(learned, copies, gen).any()
    assert torch.equal(get_init("copy").fn(learned, copies, gen, noise=0.0), copies)
    big = _learned(2000, 8, seed=3)
    noisy = get_init("copy").fn(learned, big, gen, noise=0.05)
    assert 0.045 < float((noisy - big).std()) < 0.055


def test_random_initialiser_scale_follows_the_learned_vectors():
    learned = _learned(3, 6)
    random = get_init("random").fn
    out = random(learned, torch.zeros(4000, 6), torch.Generator().manual_seed(0), init_norm="learned")
    assert abs(float(out.pow(2).sum(1).mean()) / rms_norm(learned) ** 2 - 1) < 0.05
    same = random(2 * learned, torch.zeros(4000, 6), torch.Generator().manual_seed(0), init_norm="learned")
    assert_close(same, 2 * out)


def test_initialiser_registry_refuses_duplicates_and_unknown_names():
    assert {"orthogonal", "random", "normal", "copy", "zero"} <= set(init_names())
    with pytest.raises(ValueError, match="registered twice"):
        register_init("zero", "again")(lambda *a: None)
    with pytest.raises(SettingError, match="--init must be one of.*orthogonal.*got 'ortho'") as caught:
        get_init("ortho")
    assert caught.value.field == "init"


# ------------------------------------------------------------------------ files


def _write(path: Path, model: TemplateMixingNet, spec: ArchSpec, flops: Flops = Flops(), data=None) -> Path:
    meta = CheckpointMeta("template-mixing", resolve_spec(spec), model.plan, new_provenance((), ["test"]), flops, data)
    return save_checkpoint(path, model.state_dict(), meta, force=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fuse")
    spec = FUSE_SPECS["tiny-cnn"]
    a = _write(folder / "a.safetensors", _small("tiny-cnn", 1), spec, Flops(100.0, 0.0), {"name": "synthetic"})
    b = _write(folder / "b.safetensors", _small("tiny-cnn", 2), spec, Flops(30.0, 5.0), {"name": "synthetic"})
    return a, b


def test_fuse_files_records_provenance_and_flops(pair, tmp_path):
    a, b = pair
    out = tmp_path / "grown.safetensors"
    result = fuse([a, b], out, init="zero", verify=True)
    meta = read_meta(out)
    assert meta.kind == "template-mixing" and meta.arch.width == 2.0
    roles = [(p.path, p.role, p.sha256, p.training_flops) for p in meta.provenance.parents]
    assert roles == [(str(a), "given", sha256_file(a), 100.0), (str(b), "input", sha256_file(b), 30.0)]
    assert meta.flops == Flops(training=130.0, given=105.0)  # net 1 given; net 2's own given part too
    assert meta.data == {"name": "synthetic"}
    assert result.max_abs_logit_diff is not None and result.max_abs_logit_diff <= 1e-5 * result.logit_scale
    grown, _ = load_checkpoint(out)
    x = _batch(FUSE_SPECS["tiny-cnn"])
    small_a, small_b = load_checkpoint(a)[0].eval(), load_checkpoint(b)[0].eval()
    with torch.no_grad():
        _assert_rel_close(grown.eval()(x), SumOfLogits([small_a, small_b])(x))


def test_fuse_one_file_and_refuse_overwrite(pair, tmp_path):
    out = tmp_path / "g.safetensors"
    fuse([pair[0]], out, factor=3, init="random", seed=1)
    meta = read_meta(out)
    assert meta.arch.width == 3.0 and meta.flops == Flops(100.0, 100.0)
    with pytest.raises(MgtoolError, match="already exists"):
        fuse([pair[0]], out)
    before = out.read_bytes()
    with pytest.raises(MgtoolError):
        fuse([pair[0], pair[1]], out, factor=3, force=True)
    assert out.read_bytes() == before  # nothing partial, nothing overwritten


def test_fuse_is_deterministic_in_its_seed(pair, tmp_path):
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path, seed in zip(paths, (4, 4, 5)):
        fuse(list(pair), path, init="orthogonal", seed=seed)
    one, two, three = (load_checkpoint(p)[0].state_dict() for p in paths)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], three[k]) for k in one)


def _variant(tmp_path: Path, name: str, spec: ArchSpec, templates: int = 2, share: str = "pairs") -> Path:
    net = to_template_mixing(randomised_plain(resolve_spec(spec), 5), templates=templates, share=share)
    return _write(tmp_path / f"{name}.safetensors", net, spec)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 0.5}, "architecture width: 1.0 vs 0.5"),
        ({"num_classes": 3}, "architecture num_classes: 5 vs 3"),
        ({"name": "tiny-mlp", "in_chans": 3}, "architecture name: tiny-cnn vs tiny-mlp"),
        ({"templates": 3}, "templates per layer: 2 vs 3"),
        ({"share": "none"}, "template sharing: pairs vs none"),
    ],
)
def test_mismatched_inputs_are_named(pair, tmp_path, change, message):
    spec = FUSE_SPECS["tiny-cnn"]
    templates, share = change.pop("templates", 2), change.pop("share", "pairs")
    other_spec = resolve_spec(replace(spec, **change, options={} if "name" in change else spec.options))
    other = _variant(tmp_path, "other", other_spec, templates, share)
    with pytest.raises(MgtoolError, match=message.replace("(", r"\(")):
        fuse([pair[0], other], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_mismatched_family_options_are_named(tmp_path):
    spec = FUSE_SPECS["wrn"]
    a = _variant(tmp_path, "a", spec)
    b = _variant(tmp_path, "b", replace(spec, options={**spec.options, "norm": "block-input"}))
    with pytest.raises(MgtoolError, match="architecture option norm: standard vs block-input"):
        fuse([a, b], tmp_path / "out.safetensors")


def test_bad_inputs(pair, tmp_path):
    out = tmp_path / "out.safetensors"
    plain = tmp_path / "plain.safetensors"
    from mgtool.export import export

    export(pair[0], plain)
    with pytest.raises(MgtoolError, match="a plain checkpoint; fuse needs template-mixing"):
        fuse([pair[0], plain], out)
    grown = tmp_path / "grown.safetensors"
    fuse(list(pair), grown)
    with pytest.raises(MgtoolError, match="already grown"):
        fuse([grown], out)
    with pytest.raises(MgtoolError, match="Use --factor 2"):
        fuse(list(pair), out, factor=3)
    with pytest.raises(MgtoolError, match="at least 2"):
        fuse([pair[0]], out, factor=1)
    with pytest.raises(SettingError, match="--init must be one of"):
        fuse(list(pair), out, init="nope")
    with pytest.raises(MgtoolError, match="--noise"):
        fuse(list(pair), out, init="copy", noise=-1.0)
    with pytest.raises(MgtoolError, match="no such file"):
        fuse([pair[0], tmp_path / "missing.safetensors"], out)
    assert not out.exists()


def test_resnet_with_timms_fixed_stem_is_refused_with_the_remedy(tmp_path):
    spec = resolve_spec(replace(TINY_SPECS["resnet18"], options={"stem": "timm"}))
    a = _variant(tmp_path, "a", spec)
    with pytest.raises(MgtoolError, match="does not grow with the width.*stem=scaled"):
        fuse([a], tmp_path / "out.safetensors")


# ------------------------------------------------------------------------ CLI


def test_fuse_cli(pair, tmp_path):
    out = tmp_path / "g.safetensors"
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "--init", "zero", "--verify", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    result = runner.invoke(app, ["fuse", str(pair[0]), "--factor", "3", "-o", str(out), "--force", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["factor"] == 3 and d["fused_inputs"] == 1 and d["init"] == "orthogonal" and d["new_tiles"] == 12


def test_fuse_cli_help_and_errors(pair, tmp_path):
    result = runner.invoke(app, ["fuse", "--help"])
    assert result.exit_code == 0 and "Example: mgtool fuse" in result.stdout
    result = runner.invoke(app, ["fuse", str(pair[0]), str(pair[1]), "--factor", "3", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--factor" in lines[0]
    result = runner.invoke(app, ["fuse", str(pair[0])])  # no -o
    assert result.exit_code == 2


# ------------------------------------------------------------------------ end to end
