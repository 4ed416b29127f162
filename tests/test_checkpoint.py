"""The file format: header validation before tensors, strict keys, key normalisation."""

import json

import pytest
import torch
from safetensors.torch import save_file

import mgtool
from mgtool.checkpoint import METADATA_KEY, read_meta
from mgtool.errors import MgtoolError
from mgtool.weights import normalise_state_dict, read_plain_weights

from .conftest import TINY_SPECS


def test_normalise_unwraps_nesting_and_strips_prefixes():
    t = torch.zeros(1)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        sd = {wrapper: {"module._orig_mod.a.weight": t, "module.b": t}, "epoch": 3}
        assert set(normalise_state_dict(sd)) == {"a.weight", "b"}
    assert set(normalise_state_dict({"_orig_mod.x": t, "step": 1})) == {"x"}


def test_normalise_refuses_colliding_and_empty_dicts():
    t = torch.zeros(1)
    with pytest.raises(MgtoolError, match="two keys map"):
        normalise_state_dict({"module.a": t, "a": t})
    with pytest.raises(MgtoolError, match="no tensors"):
        normalise_state_dict({"epoch": 1})


@pytest.fixture()
def tm_file(plain_ckpts, tmp_path):
    out = tmp_path / "tm.safetensors"
    mgtool.convert(plain_ckpts["tiny-cnn"], TINY_SPECS["tiny-cnn"], out=out)
    return out


def _rewrite_meta(path, change):
    tensors = read_plain_weights(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    change(meta)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(format_version=99), "newer than this mgtool"),
        (lambda m: m.update(kind="weird"), "unknown checkpoint kind"),
        (lambda m: m.update(extra=1), "unknown keys"),
        (lambda m: m["arch"].update(name="nope"), None),
        (lambda m: m.update(plan=None), "must carry a template plan"),
        (lambda m: m["plan"]["layers"][0].update(bank="zzz"), "unknown bank"),
    ],
)
def test_bad_metadata_is_refused_with_the_path(tm_file, change, message):
    _rewrite_meta(tm_file, change)
    with pytest.raises(MgtoolError) as err:
        mgtool.load_checkpoint(tm_file)
    assert str(tm_file) in str(err.value)
    if message:
        assert message in str(err.value)


def test_strict_keys_on_load(tm_file):
    tensors = read_plain_weights(tm_file)
    from safetensors import safe_open

    with safe_open(str(tm_file), "pt") as f:
        metadata = f.metadata()
    tensors.pop("banks.b000")
    tensors["net.extra"] = torch.zeros(1)
    save_file(tensors, str(tm_file), metadata=metadata)
    with pytest.raises(MgtoolError, match=r"missing keys \[banks.b000\].*unexpected keys \[net.extra\]"):
        mgtool.load_checkpoint(tm_file)


def test_safetensors_without_mgtool_metadata(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(MgtoolError, match="without mgtool metadata"):
        read_meta(path)


def test_outputs_get_the_usual_file_mode(tm_file):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(tm_file.stat().st_mode) == 0o666 & ~mask
