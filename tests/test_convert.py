"""Exactness of convert and export on every family, and the Python API."""

from dataclasses import replace

import pytest
import timm
import torch
from torch.testing import assert_close

import mgtool
from mgtool.archs import build_plain, resolve_spec
from mgtool.archs.families.timm_resnet import timm_kwargs
from mgtool.checkpoint import read_meta, read_tensors
from mgtool.errors import MgtoolError
from mgtool.model import TemplateMixingNet
from mgtool.templates import to_template_mixing
from mgtool.verify import RELATIVE_TOLERANCE, compare_logits, compare_weights
from mgtool.weights import read_plain_weights

from .conftest import TINY_SPECS, randomised_plain

FAMILIES = sorted(TINY_SPECS)


@pytest.mark.parametrize("key", FAMILIES)
def test_generated_weights_equal_the_originals(key):
    spec = resolve_spec(TINY_SPECS[key])
    original = randomised_plain(spec)
    reference = {k: v.clone() for k, v in original.state_dict().items()}
    tm = to_template_mixing(original, templates=2, share="pairs", seed=3)
    generated = tm.materialised_state_dict()
    assert generated.keys() == reference.keys()
    for name, value in reference.items():
        assert_close(generated[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("key", FAMILIES)
@pytest.mark.parametrize("share", ["pairs", "none"])
def test_converted_logits_match(key, share):
    spec = resolve_spec(TINY_SPECS[key])
    reference = randomised_plain(spec)
    tm = to_template_mixing(randomised_plain(spec), templates=3, share=share, seed=1)
    check = compare_logits(reference, tm, spec)
    assert check.ok and check.max_abs_diff <= RELATIVE_TOLERANCE * check.scale


@pytest.mark.parametrize("key", FAMILIES)
def test_export_of_convert_round_trips(key, plain_ckpts, tmp_path):
    tm_path, plain_path = tmp_path / "tm.safetensors", tmp_path / "plain.safetensors"
    spec = TINY_SPECS[key]
    result = mgtool.convert(plain_ckpts[key], spec, out=tm_path)
    assert result.max_abs_logit_diff <= RELATIVE_TOLERANCE * result.logit_scale
    mgtool.export(tm_path, plain_path)
    original = torch.load(plain_ckpts[key], weights_only=True)
    exported = read_plain_weights(plain_path)
    assert exported.keys() == original.keys()
    for name, value in original.items():
        assert_close(exported[name], value, rtol=0, atol=1e-6, msg=name)
    meta = read_meta(plain_path)
    assert meta.kind == "plain" and meta.plan is None
    assert meta.provenance.parents[0].path == str(tm_path)


@pytest.mark.parametrize("key", ["resnet18", "resnet50"])
def test_exported_resnet_with_timm_stem_loads_strictly_into_timm(key, tmp_path):
    spec = resolve_spec(replace(TINY_SPECS[key], options={"stem": "timm"}))
    src, tm_path, plain_path = tmp_path / "src.pt", tmp_path / "tm.safetensors", tmp_path / "plain.safetensors"
    torch.save(randomised_plain(spec).state_dict(), src)
    mgtool.convert(src, spec, out=tm_path)
    mgtool.export(tm_path, plain_path)
    model = timm.create_model(key, **timm_kwargs(spec))
    model.load_state_dict(read_plain_weights(plain_path), strict=True)
    reference = randomised_plain(spec)
    x = torch.randn(2, 3, 64, 64)
    assert_close(model.eval()(x), reference(x), rtol=1e-5, atol=1e-5)


def test_scaled_stem_grows_with_the_width_and_is_timms_model_at_width_one():
    half = build_plain(resolve_spec(replace(TINY_SPECS["resnet18"], width=0.5)))
    assert half.conv1.out_channels == 32 and half.bn1.num_features == 32
    for stem in ("scaled", "timm"):
        ours = build_plain(resolve_spec(mgtool.archs.ArchSpec("resnet18", 1.0, 10, 3, {"stem": stem})))
        theirs = timm.create_model("resnet18", num_classes=10)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }


def test_width_one_resnet_is_timms_own_model():
    spec = resolve_spec(mgtool.archs.ArchSpec("resnet50", 1.0, 1000, 3))
    ours = build_plain(spec)
    theirs = timm.create_model("resnet50")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_load_builds_from_metadata_alone(plain_ckpts, tmp_path):
    out = tmp_path / "tm.safetensors"
    mgtool.convert(plain_ckpts["tiny-cnn"], TINY_SPECS["tiny-cnn"], out=out)
    model = mgtool.load(out)
    assert isinstance(model, TemplateMixingNet) and not model.training
    reference = randomised_plain(TINY_SPECS["tiny-cnn"])
    x = torch.randn(3, 3, 16, 16)
    assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_num_classes_is_inferred_from_the_classifier(plain_ckpts, tmp_path):
    spec = TINY_SPECS["resnet18"]
    without = mgtool.archs.ArchSpec(spec.name, spec.width, 0, spec.in_chans, spec.options)
    result = mgtool.convert(plain_ckpts["resnet18"], without, out=tmp_path / "tm.safetensors")
    assert result.meta.arch.num_classes == spec.num_classes


def test_convert_accepts_mgtool_plain_files_without_arch(plain_ckpts, tmp_path):
    mgtool.convert(plain_ckpts["tiny-mlp"], TINY_SPECS["tiny-mlp"], out=tmp_path / "a.safetensors")
    mgtool.export(tmp_path / "a.safetensors", tmp_path / "plain.safetensors")
    again = mgtool.convert(tmp_path / "plain.safetensors", None, out=tmp_path / "b.safetensors")
    assert again.meta.arch == read_meta(tmp_path / "a.safetensors").arch


# ------------------------------------------------------------------------ exactness per weight, dtype


def _bank_mates(spec):
    """Two layers that share a bank under share=pairs."""
    from mgtool.plan import make_plan

    plan = make_plan(build_plain(spec), 2, "pairs")
    return next([la.name for la in plan.layers_of(b.name)] for b in plan.banks if len(plan.layers_of(b.name)) == 2)


def test_denormal_weights_are_refused_not_written_as_noise(tmp_path):
    spec = resolve_spec(TINY_SPECS["tiny-cnn"])
    sd = randomised_plain(spec).state_dict()
    tiny = {k: v * 1e-39 if k.endswith("weight") and v.ndim > 1 else v for k, v in sd.items()}
    src, out = tmp_path / "denormal.pt", tmp_path / "tm.safetensors"
    torch.save(tiny, src)
    with pytest.raises(MgtoolError, match=r"not exact: .*weight comes back .* own scale.*nothing written"):
        mgtool.convert(src, spec, out=out)
    assert not out.exists()


def test_bank_mates_at_scales_1000x_apart_are_refused_and_fine_without_sharing(tmp_path):
    spec = resolve_spec(TINY_SPECS["tiny-cnn"])
    big, small = _bank_mates(spec)
    sd = randomised_plain(spec).state_dict()
    sd[f"{small}.weight"] = sd[f"{small}.weight"] * 1e-3
    src, out = tmp_path / "pair.pt", tmp_path / "tm.safetensors"
    torch.save(sd, src)
    with pytest.raises(MgtoolError, match=f"{small}.weight comes back"):
        mgtool.convert(src, spec, out=out)
    assert not out.exists()
    result = mgtool.convert(src, spec, share="none", out=out)  # each layer its own bank: exact again
    assert result.weights.ok and result.weights.worst_relative < 1e-6


def test_the_weight_check_measures_each_tensor_against_its_own_scale():
    original = {"a": torch.full((3,), 100.0), "b": torch.full((3,), 1e-4), "n": torch.tensor(3)}
    generated = {"a": original["a"] + 1e-5, "b": original["b"] + 1e-8, "n": torch.tensor(3)}
    check = compare_weights(original, generated)
    assert check.key == "b" and not check.ok  # 1e-8 absolute is 1e-4 of b's own scale
    assert_close(torch.tensor(check.worst_relative), torch.tensor(1e-4), rtol=1e-3, atol=0)
    assert not compare_weights({"z": torch.zeros(2)}, {"z": torch.tensor([0.0, 1e-30])}).ok  # 0 stays 0
    assert not compare_weights({"n": torch.tensor(3)}, {"n": torch.tensor(4)}).ok
    assert compare_weights(original, {k: v.clone() for k, v in original.items()}).worst_relative == 0.0


@pytest.mark.parametrize("key", ["tiny-cnn", "wrn"])
def test_float64_weights_stay_float64(key, tmp_path):
    spec = resolve_spec(TINY_SPECS[key])
    sd = {k: v.double() if v.is_floating_point() else v for k, v in randomised_plain(spec).state_dict().items()}
    src, out = tmp_path / "f64.pt", tmp_path / "tm.safetensors"
    torch.save(sd, src)
    result = mgtool.convert(src, spec, out=out)
    assert result.to_dict()["dtype"] == "float64"
    stored = read_tensors(out)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float64}
    assert result.weights.worst_relative < 1e-12  # float64 round-off, not float32's
    generated = result.model.materialised_state_dict()
    for name, value in sd.items():
        assert generated[name].dtype == value.dtype
        assert_close(generated[name], value, rtol=1e-12, atol=1e-14, msg=name)


def test_float32_weights_stay_float32(plain_ckpts, tmp_path):
    result = mgtool.convert(plain_ckpts["tiny-cnn"], TINY_SPECS["tiny-cnn"], out=tmp_path / "tm.safetensors")
    assert result.to_dict()["dtype"] == "float32"
    assert {v.dtype for v in read_tensors(tmp_path / "tm.safetensors").values() if v.is_floating_point()} == {
        torch.float32}
