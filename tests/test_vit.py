"""The ``vit`` family: timm's VisionTransformer converted, exported to bare timm, widened
head by head (clone / net2net / random) and fused (MixtureGrowth, qkv tiled head by head);
FLOPs of its attention and its AdamW parameter groups."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import Attention
from torch import nn
from torch.testing import assert_close
from typer.testing import CliRunner

import mgtool
import mgtool.fuse
import mgtool.loading
from mgtool.analysis.activations import default_layers
from mgtool.archs import ArchSpec, build_plain, get_family, grow_spec, input_size, resolve_spec
from mgtool.archs.families.vit import (
    dims,
    grow_vit_preserving,
    grow_vit_random,
    tensor_spaces,
    timm_kwargs,
    vit_maps,
    vit_qkv_tile_order,
)
from mgtool.archs.widening import zero_sum_noise
from mgtool.checkpoint import CheckpointMeta, Flops, save_checkpoint
from mgtool.cli import app
from mgtool.errors import MgtoolError
from mgtool.flops import forward_flops
from mgtool.fuse import fuse_models
from mgtool.grow_baselines import grow, grow_net2net
from mgtool.provenance import new_provenance
from mgtool.recipe import load_recipe
from mgtool.templates import to_template_mixing
from mgtool.train.optim import parameter_groups
from mgtool.train.settings import resolve

from .conftest import TINY_SPECS, randomised_plain

runner = CliRunner()
SPEC = resolve_spec(TINY_SPECS["vit"])  # dim 16, 2 heads of 8, depth 2, 16x16 images
# The CLI contract: the small-image preset, written out as --opt.
PRESET_OPTS = {"embed_dim": 64, "depth": 4, "num_heads": 2, "patch_size": 4, "img_size": 32}


def _batch(spec: ArchSpec, n: int = 4) -> torch.Tensor:
    return torch.randn(n, spec.in_chans, *input_size(spec), generator=torch.Generator().manual_seed(7))


def _logits(model: nn.Module, spec: ArchSpec) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_batch(spec))


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    scale = float(expected.abs().max())
    assert_close(actual, expected, rtol=rel, atol=rel * scale)


def _timm(spec: ArchSpec) -> nn.Module:
    """Bare timm, built from the issue's keyword arguments (not through mgtool)."""
    o, (dim, heads, _) = spec.options, dims(spec)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=o["img_size"], patch_size=o["patch_size"], embed_dim=dim,
        depth=o["depth"], num_heads=heads, mlp_ratio=o["mlp_ratio"], num_classes=spec.num_classes,
        in_chans=spec.in_chans,
    )


def _plain_file(path, net: nn.Module, spec: ArchSpec):
    meta = CheckpointMeta(kind="plain", arch=spec, plan=None, provenance=new_provenance(()), flops=Flops())
    return save_checkpoint(path, net.state_dict(), meta, force=False)


# ------------------------------------------------------------------------ the family


def test_preset_is_timms_vit_at_about_0_2m_parameters():
    spec = resolve_spec(ArchSpec("vit", 1, 10))
    assert {k: spec.options[k] for k in PRESET_OPTS} == PRESET_OPTS and spec.options["mlp_ratio"] == 4.0
    net = build_plain(spec)
    assert 0.15e6 < sum(p.numel() for p in net.parameters()) < 0.25e6
    assert input_size(spec) == (32, 32)
    assert set(net.state_dict()) == set(_timm(spec).state_dict())
    assert input_size(resolve_spec(ArchSpec("vit", 1, 10, 1, {"img_size": 28}))) == (28, 28)


def test_width_multiplies_dim_heads_and_mlp_keeping_head_dim():
    for w, expected in ((0.5, (16, 2, 64)), (1, (32, 4, 128)), (1.5, (48, 6, 192))):  # base 32 dim, 4 heads
        assert dims(replace(SPEC, width=w)) == expected
    assert dims(grow_spec(SPEC, 3)) == (48, 6, 192)
    kw = timm_kwargs(grow_spec(resolve_spec(ArchSpec("vit", 1, 10)), 2))
    assert (kw["embed_dim"], kw["num_heads"], kw["img_size"], kw["patch_size"]) == (128, 4, 32, 4)
    net = build_plain(grow_spec(SPEC, 2))
    assert net.blocks[0].attn.head_dim == build_plain(SPEC).blocks[0].attn.head_dim == 8
    assert net.blocks[0].mlp.fc1.out_features == 128


@pytest.mark.parametrize(
    ("width", "options", "message"),
    [
        (1, {"embed_dim": 30, "num_heads": 4}, "multiple of num_heads"),
        (0.25, {}, "channels for vit num_heads"),
        (1, {"img_size": 30}, "multiple of patch_size"),
        (1, {"depth": 0}, "depth must be at least 1"),
        (1, {"mlp_ratio": 4.1}, "not a whole number"),
        (1, {"heads": 2}, "unknown option"),
    ],
)
def test_bad_vit_settings_are_refused(width, options, message):
    with pytest.raises(MgtoolError, match=message):
        build_plain(ArchSpec("vit", width, 10, 3, options))


def test_cka_default_layers_are_the_block_outputs():
    net = build_plain(SPEC)
    assert default_layers(net, "vit") == ["blocks.0", "blocks.1"]
    assert default_layers(to_template_mixing(build_plain(SPEC)), "vit") == ["blocks.0", "blocks.1"]


# ------------------------------------------------------------------------ mixing, convert, export


def test_template_mixing_covers_every_linear_and_pairs_same_shape_layers():
    spec = resolve_spec(replace(SPEC, options={**SPEC.options, "depth": 4}))
    tm = to_template_mixing(randomised_plain(spec))
    banks = {tuple(la.name for la in tm.plan.layers_of(b.name)) for b in tm.plan.banks}
    assert ("patch_embed.proj",) in banks and ("head",) in banks
    for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
        assert (f"blocks.0.{part}", f"blocks.1.{part}") in banks
        assert (f"blocks.2.{part}", f"blocks.3.{part}") in banks
    # timm's Attention calls self.qkv(x): the generated weight is used, and banks get gradients.
    x = _batch(spec, 2)
    tm.train()(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tm.banks.values())


def test_convert_cli_contract_is_exact_and_export_loads_into_bare_timm(tmp_path):
    torch.manual_seed(0)
    spec = resolve_spec(ArchSpec("vit", 1, 10, 3, PRESET_OPTS))
    original = _timm(spec)
    with torch.no_grad():  # timm zero-inits nothing here, but make every tensor non-trivial
        for name, t in original.named_parameters():
            if t.ndim == 1:
                t.normal_(1.0 if name.endswith("norm1.weight") else 0.0, 0.1)
    src, tm, plain = tmp_path / "vit.pth", tmp_path / "a.safetensors", tmp_path / "a.plain.safetensors"
    torch.save(original.state_dict(), src)
    opts = [a for k, v in PRESET_OPTS.items() for a in ("--opt", f"{k}={v}")]
    result = runner.invoke(app, ["convert", str(src), "--arch", "vit", "--width", "1", *opts, "-o", str(tm), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["relative_logit_diff"] <= 1e-5 and report["arch"]["num_classes"] == 10
    result = runner.invoke(app, ["export", str(tm), "-o", str(plain)])
    assert result.exit_code == 0, result.output
    bare = _timm(spec)
    bare.load_state_dict(mgtool.checkpoint.read_tensors(plain), strict=True)
    _assert_rel_close(_logits(bare, spec), _logits(original, spec))


def test_export_of_a_width_2_template_mixing_vit_loads_into_bare_timm(tmp_path):
    wide = grow_spec(SPEC, 2)
    tm_model = to_template_mixing(randomised_plain(wide, 3))
    meta = CheckpointMeta(kind="template-mixing", arch=wide, plan=tm_model.plan, provenance=new_provenance(()),
                          flops=Flops())
    src = save_checkpoint(tmp_path / "w2.safetensors", tm_model.state_dict(), meta, force=False)
    out = mgtool.export(src, tmp_path / "w2.plain.safetensors").path
    bare = _timm(wide)
    assert bare.embed_dim == 32 and bare.blocks[0].attn.num_heads == 4
    bare.load_state_dict(mgtool.checkpoint.read_tensors(out), strict=True)
    _assert_rel_close(_logits(bare, wide), _logits(tm_model, wide))


# ------------------------------------------------------------------------ function-preserving growth


@pytest.mark.parametrize("method", ["clone", "net2net"])
@pytest.mark.parametrize("factor", [2, 3])
def test_vit_growth_preserves_the_function(method, factor):
    small = randomised_plain(SPEC, 1)
    wide, _ = grow_vit_preserving(small, SPEC, factor, method=method, seed=4)
    _assert_rel_close(_logits(wide, SPEC), _logits(small, SPEC))
    x = _batch(SPEC)
    with torch.no_grad():  # dropout and drop-path are off by default, so train mode too
        _assert_rel_close(wide.train()(x), small.train()(x))


def test_clone_duplicates_heads_in_timms_qkv_layout():
    small = randomised_plain(SPEC, 1)
    wide, maps = grow_vit_preserving(small, SPEC, 2, method="clone")
    d, g = 16, 2
    assert torch.equal(maps.heads, torch.tensor([0, 1, 0, 1]))
    w_small = small.blocks[0].attn.qkv.weight
    w_wide = wide.blocks[0].attn.qkv.weight.view(3, g, d, g * d)  # [q|k|v] x copy x unit x input
    for part in range(3):
        for copy in range(g):
            for block in range(g):  # input block: the stream copy the weights read
                torch.testing.assert_close(w_wide[part, copy, :, block * d:(block + 1) * d],
                                           w_small[part * d:(part + 1) * d] / g, rtol=0, atol=0)


def test_net2net_stream_map_is_balanced_and_heads_are_drawn():
    maps = vit_maps(SPEC, 3, "net2net", torch.Generator().manual_seed(0))
    assert torch.equal(maps.stream[:16], torch.arange(16))
    assert torch.equal(torch.bincount(maps.stream), torch.full((16,), 3))  # LayerNorm needs equal counts
    assert torch.equal(maps.heads[:2], torch.arange(2)) and int(maps.heads.max()) < 2
    qkv = maps.of("qkv")  # q, k and v of a head move together
    assert qkv.numel() == 3 * 48 and torch.equal(qkv[48:96] - 16, qkv[:48])


def test_unknown_tensor_is_refused():
    with pytest.raises(MgtoolError, match="no widening rule for tensor blocks.0.ls1.gamma"):
        tensor_spaces("blocks.0.ls1.gamma")


def test_zero_sum_noise_cancels_over_copies_at_the_stated_ratio():
    in_map = torch.tensor([0, 1, 2, 0, 1, 0])  # unit 2 has one copy: no noise there
    n = zero_sum_noise(in_map, (20000, 6), 0.1, 2.0, torch.Generator().manual_seed(0))
    for unit in range(3):
        assert_close(n[:, in_map == unit].sum(1), torch.zeros(20000, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(n[:, 2], torch.zeros(20000, dtype=torch.float64))
    rms = n[:, in_map != 2].pow(2).mean().sqrt()
    assert abs(float(rms) - 0.2) < 0.01  # ratio x scale


@pytest.mark.parametrize("method", ["clone", "net2net"])
def test_noise_breaks_symmetry_and_keeps_the_function(method):
    small = randomised_plain(SPEC, 1)
    exact, _ = grow_vit_preserving(small, SPEC, 2, method=method, seed=4)
    noisy, _ = grow_vit_preserving(small, SPEC, 2, method=method, seed=4, noise=0.05)
    a, b = exact.blocks[0].mlp.fc2.weight.detach(), noisy.blocks[0].mlp.fc2.weight.detach()
    ratio = float((b - a).pow(2).mean().sqrt() / a.pow(2).mean().sqrt())
    assert 0.03 < ratio < 0.07
    _assert_rel_close(_logits(noisy, SPEC), _logits(small, SPEC))


def test_random_growth_keeps_the_small_tensors_at_the_original_units():
    small = randomised_plain(SPEC, 1)
    wide = grow_vit_random(small, SPEC, 2, seed=0)
    s, w = small.blocks[1].attn.qkv, wide.blocks[1].attn.qkv
    for part in range(3):
        assert torch.equal(w.weight[part * 32: part * 32 + 16, :16], s.weight[part * 16:(part + 1) * 16])
        assert torch.equal(w.bias[part * 32: part * 32 + 16], s.bias[part * 16:(part + 1) * 16])
    assert torch.equal(wide.pos_embed[..., :16], small.pos_embed)
    assert torch.equal(wide.head.weight[:, :16], small.head.weight)


def test_grow_cli_clone_on_a_vit_file_then_bare_timm_loads_it(tmp_path):
    small = randomised_plain(SPEC, 2)
    src = _plain_file(tmp_path / "a.plain.safetensors", small, SPEC)
    out = tmp_path / "wide.safetensors"
    result = runner.invoke(app, ["grow", str(src), "--method", "clone", "--noise", "0.01", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verify"]["relative_logit_diff"] <= 1e-5 and report["arch"]["width"] == 1.0
    bare = _timm(grow_spec(SPEC, 2))
    bare.load_state_dict(mgtool.checkpoint.read_tensors(out), strict=True)
    _assert_rel_close(_logits(bare, SPEC), _logits(small, SPEC))
    assert grow(src, None, method="net2net", factor=3, seed=1).logit_scale is not None


def test_grow_bad_noise_is_refused(tmp_path):
    src = _plain_file(tmp_path / "a.plain.safetensors", randomised_plain(SPEC, 2), SPEC)
    with pytest.raises(MgtoolError, match="--noise must be a finite number >= 0"):
        grow(src, None, method="clone", noise=-0.1)
    with pytest.raises(MgtoolError, match="--noise applies to net2net and clone growth, not to random"):
        grow(src, None, method="random", noise=0.1)
    result = runner.invoke(app, ["grow", str(src), "--method", "clone", "--noise", "nan", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--noise" in result.stderr


@pytest.mark.parametrize("key", ["tiny-cnn", "wrn"])
def test_clone_and_noise_on_cnn_families_are_exact(key):
    spec = resolve_spec(TINY_SPECS[key])
    small = randomised_plain(spec, 1)
    wide, maps = grow_net2net(small, spec, 2, seed=0, clone=True, noise=0.05)
    for index in maps.maps.values():
        assert torch.equal(index, torch.arange(index.numel() // 2).repeat(2))
    _assert_rel_close(_logits(wide, spec), _logits(small, spec))


# ------------------------------------------------------------------------ what fuse will need


def test_qkv_tile_order_interleaves_q_k_v_of_the_nets():
    perm = vit_qkv_tile_order(2, 2)  # rows [qA kA vA | qB kB vB], 2 each
    assert perm.tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]
    assert torch.equal(vit_qkv_tile_order(8, 1), torch.arange(24))
    with pytest.raises(ValueError):
        vit_qkv_tile_order(0, 2)


def test_qkv_tile_order_reproduces_each_nets_attention_with_zero_off_diagonal_tiles():
    torch.manual_seed(0)
    d, heads = 16, 2
    a, b = Attention(d, heads, qkv_bias=True).eval(), Attention(d, heads, qkv_bias=True).eval()
    wide = Attention(2 * d, 2 * heads, qkv_bias=True).eval()
    perm = vit_qkv_tile_order(d, 2)
    with torch.no_grad():
        wide.qkv.weight.copy_(torch.block_diag(a.qkv.weight, b.qkv.weight)[perm])
        wide.qkv.bias.copy_(torch.cat([a.qkv.bias, b.qkv.bias])[perm])
        wide.proj.weight.copy_(torch.block_diag(a.proj.weight, b.proj.weight))
        wide.proj.bias.copy_(torch.cat([a.proj.bias, b.proj.bias]))
        xa, xb = torch.randn(3, 5, d), torch.randn(3, 5, d)
        out = wide(torch.cat([xa, xb], -1))
        expected = torch.cat([a(xa), b(xb)], -1)
        # Without the permutation timm would split [qA kA] as q: the heads would be wrong.
        wide.qkv.weight.copy_(torch.block_diag(a.qkv.weight, b.qkv.weight))
        wide.qkv.bias.copy_(torch.cat([a.qkv.bias, b.qkv.bias]))
        wrong = wide(torch.cat([xa, xb], -1))
    _assert_rel_close(out, expected)
    assert float((wrong - expected).abs().max()) > 1e-2


# ------------------------------------------------------------------------ fuse (MixtureGrowth on ViTs)


def _small_tm(seed: int, spec: ArchSpec = SPEC):
    return to_template_mixing(randomised_plain(spec, seed), templates=2, seed=seed).eval()


def _attention_probs(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, N) softmax(q k^T * scale) as timm's Attention computes it."""
    b, n, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return (q * attn.scale @ k.transpose(-2, -1)).softmax(-1)


def test_fused_vit_reproduces_each_heads_attention_with_zero_new_tiles():
    a, b = _small_tm(1), _small_tm(2)
    grown, layout = fuse_models([a, b], SPEC, init="zero")
    assert all(la.row_interleave == 3 for la in layout.plan.layers if la.name.endswith("attn.qkv"))
    assert all(la.row_interleave == 1 for la in layout.plan.layers if not la.name.endswith("attn.qkv"))
    d, heads = dims(SPEC)[:2]
    x = torch.randn(3, 17, 2 * d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in (a, b, grown):
            m.generate_weights()
        for i in range(int(SPEC.options["depth"])):
            wide, attn_a, attn_b = (m.net.blocks[i].attn for m in (grown, a, b))
            xa, xb = x[..., :d], x[..., d:]
            probs = _attention_probs(wide, x)  # LayerNorm left out: the module fed directly
            assert probs.shape[1] == 2 * heads
            _assert_rel_close(probs[:, :heads], _attention_probs(attn_a, xa))
            _assert_rel_close(probs[:, heads:], _attention_probs(attn_b, xb))
            _assert_rel_close(wide(x), torch.cat([attn_a(xa), attn_b(xb)], -1))


def test_fused_vit_concatenates_tokens_norms_and_qkv_bias_in_timms_layout():
    a, b = _small_tm(1), _small_tm(2)
    grown, layout = fuse_models([a, b], SPEC, init="orthogonal")
    sd, sa, sb = grown.state_dict(), a.state_dict(), b.state_dict()
    for key in ("net.cls_token", "net.pos_embed"):  # along the embedding, not the tokens
        assert torch.equal(sd[key], torch.cat([sa[key], sb[key]], -1))
    for key in ("net.patch_embed.proj.bias", "net.blocks.1.norm1.weight", "net.norm.bias", "net.blocks.0.mlp.fc1.bias"):
        assert torch.equal(sd[key], torch.cat([sa[key], sb[key]]))
    d = dims(SPEC)[0]
    key = "net.blocks.0.attn.qkv.bias"
    assert torch.equal(sd[key], torch.cat([sa[key], sb[key]])[vit_qkv_tile_order(d, 2)])
    assert torch.equal(sd["net.head.bias"], sa["net.head.bias"] + sb["net.head.bias"])
    assert {layout.roles[n] for n in ("patch_embed.proj", "blocks.0.attn.qkv", "head")} == {"first", "hidden",
                                                                                           "classifier"}


def test_zero_init_fusion_of_vits_is_near_but_not_the_sum_and_one_input_is_exact():
    a, b = _small_tm(1), _small_tm(2)
    assert not get_family("vit").fusion_sums_logits
    grown, _ = fuse_models([a, b], SPEC, init="zero")
    expected = _logits(a, SPEC) + _logits(b, SPEC)
    gap = float((_logits(grown, SPEC) - expected).abs().max() / expected.abs().max())
    assert 1e-3 < gap < 0.5  # LayerNorm normalises [x_a, x_b] with the joint mean and variance
    # One input: the stream is [x, x], which LayerNorm normalises exactly: g times the logits.
    twice, _ = fuse_models([a], SPEC, init="zero")
    _assert_rel_close(_logits(twice, SPEC), 2 * _logits(a, SPEC))


def test_fuse_cli_on_preset_vits_then_export_loads_into_bare_timm(tmp_path):
    spec = resolve_spec(ArchSpec("vit", 1, 10, 3, PRESET_OPTS))
    paths = []
    for seed in (1, 2):
        tm = _small_tm(seed, spec)
        meta = CheckpointMeta(kind="template-mixing", arch=spec, plan=tm.plan, provenance=new_provenance(()),
                              flops=Flops())
        paths.append(save_checkpoint(tmp_path / f"{seed}.safetensors", tm.state_dict(), meta, force=False))
    ab, plain = tmp_path / "ab.safetensors", tmp_path / "ab.plain.safetensors"
    result = runner.invoke(app, ["fuse", *map(str, paths), "--init", "orthogonal", "-o", str(ab), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["arch"]["width"] == 2
    result = runner.invoke(app, ["export", str(ab), "-o", str(plain)])
    assert result.exit_code == 0, result.output
    bare = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=128, depth=4,
                             num_heads=4, num_classes=10)
    bare.load_state_dict(mgtool.checkpoint.read_tensors(plain), strict=True)
    grown, _ = mgtool.loading.load_checkpoint(ab)
    _assert_rel_close(_logits(bare, spec), _logits(grown, spec))
    # --verify: the sum of two ViTs is not what zero-init fusion computes, so it is refused ...
    result = runner.invoke(app, ["fuse", *map(str, paths), "--verify", "-o", str(tmp_path / "v.safetensors")])
    assert result.exit_code == 1 and "LayerNorm" in result.stderr
    # ... while one input (w/o fusion) is exact: g times its logits.
    report = mgtool.fuse.fuse(paths[:1], None, init="zero", verify=True).verify
    assert report is not None and report.relative <= 1e-5


def test_row_interleave_is_a_row_permutation_stored_in_the_plan():
    from mgtool.mixing import mix
    from mgtool.plan import TemplatePlan

    bank = torch.randn(2, 3, 12, 5, dtype=torch.float64)
    coefs = torch.randn(2, 2, 3, dtype=torch.float64)
    plain = mix(bank, coefs, ((0,), (1,)))
    assert torch.equal(mix(bank, coefs, ((0,), (1,)), 3), plain[vit_qkv_tile_order(4, 2)])
    assert torch.equal(mix(bank, coefs[None], ((0,), (1,)), 3)[0], plain[vit_qkv_tile_order(4, 2)])
    _, layout = fuse_models([_small_tm(1), _small_tm(2)], SPEC, init="zero")
    data = layout.plan.to_dict()
    assert TemplatePlan.from_dict(data) == layout.plan
    assert "row_interleave" not in json.dumps(_small_tm(1).plan.to_dict())  # small plans unchanged
    qkv = next(la for la in data["layers"] if la["name"].endswith("attn.qkv"))
    qkv["row_interleave"] = 5
    with pytest.raises(MgtoolError, match="cannot interleave 48 rows in 5 parts"):
        TemplatePlan.from_dict(data)


# ------------------------------------------------------------------------ FLOPs and the optimizer


def test_flops_count_scaled_dot_product_attention():
    class Sdpa(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.view(1, 2, 5, 3)  # heads 2, tokens 5, head_dim 3
            return nn.functional.scaled_dot_product_attention(q, q, q)

    assert forward_flops(Sdpa(), (2, 5, 3)) == 2 * 5 * 5 * (3 + 3)  # q k^T and attn v
    # The preset: fvcore's 13,163,968 without the attention products, + 4 blocks x 2 x 65^2 x 64.
    assert forward_flops(build_plain(resolve_spec(ArchSpec("vit", 1, 10))), (3, 32, 32)) == 15_327_168


def test_adamw_groups_exclude_norms_biases_pos_embed_and_cls_token_from_decay():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "fashion-mnist-vit-cpu.yaml")
    cfg = resolve(recipe.net1.train)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("adamw", 1e-3, 0.05)
    for model in (build_plain(SPEC), _small_tm(1)):
        names = {id(p): n for n, p in model.named_parameters()}
        groups = {g["name"]: g for g in parameter_groups(model, cfg)}
        decayed = {names[id(p)] for g in groups.values() if g["weight_decay"] > 0 for p in g["params"]}
        free = {names[id(p)] for g in groups.values() if g["weight_decay"] == 0 for p in g["params"]}
        assert decayed | free == set(names.values()) and not decayed & free
        for name in decayed:
            assert not name.endswith(("bias", "pos_embed", "cls_token")) and ".norm" not in name, name
            assert name.endswith(("weight", "coefficients")) or name.startswith("banks."), name
        assert {n.removeprefix("net.") for n in free} >= {"pos_embed", "cls_token", "norm.weight", "norm.bias",
                                                          "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"}
