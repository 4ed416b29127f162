"""Issue 26: pretrained timm sources for convert, export --format timm-dir, the model card.

Offline: a Hugging Face hub cache folder is built under tmp (HF_HOME, HF_HUB_OFFLINE=1) holding
tiny timm models in the hub layout (models--OWNER--NAME/snapshots/REV, refs/main).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf
from typer.testing import CliRunner

import mgtool
from mgtool.archs import ArchSpec, family_names, get_family, resolve_spec, tiny_spec
from mgtool.card import literal
from mgtool.checkpoint import read_meta
from mgtool.cli import app
from mgtool.errors import MgtoolError, SettingError
from mgtool.sources import infer_spec, parse_source
from mgtool.timm_dir import timm_architecture

from .conftest import randomised_plain

runner = CliRunner()
REV = "0123456789abcdef0123456789abcdef01234567"
RESNET_KW = {"channels": (4, 8, 16, 32), "num_classes": 7}  # timm's 64-channel stem: mgtool stem=timm
VIT_KW = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 5}
SYNTHETIC = ["--data", "synthetic", "--data-opt", "shape=3x16x16", "--data-opt", "classes=5",
             "--data-opt", "train_size=32", "--data-opt", "test_size=16"]
QUICK = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "-q"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _timm(name: str, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, **kw)
    with torch.no_grad():  # non-trivial BatchNorm statistics and biases
        for key, value in model.state_dict().items():
            if value.is_floating_point() and not key.endswith("weight"):
                value.add_(0.1 * torch.rand_like(value))
    return model


def save_hub(root: Path, repo: str, model: torch.nn.Module) -> Path:
    """``model`` saved by timm, laid out as huggingface_hub's cache does: the snapshot folder."""
    base = root / "hub" / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / REV
    save_for_hf(model, str(snap), safe_serialization=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(REV)
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    save_hub(root, "timm/resnet18.tiny", _timm("resnet18", 0, **RESNET_KW))
    save_hub(root, "timm/vit_tiny_patch16_224.tiny", _timm("vit_tiny_patch16_224", 1, **VIT_KW))
    # tiny stand-ins under the names docs/guide-timm.md uses, so that its commands run as written
    save_hub(root, "timm/resnet18.a1_in1k", _timm("resnet18", 2, **RESNET_KW))
    save_hub(root, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", _timm("vit_tiny_patch16_224", 3, **VIT_KW))
    return root


@pytest.fixture
def offline(hub, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(hub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def _run(args: list[str]) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _ok(args: list[str]) -> str:
    code, out, err = _run(args)
    assert code == 0, f"mgtool {' '.join(map(str, args))}\n{err}"
    return out


def _refused(args: list[str], code: int, *words: str) -> str:
    got, _, err = _run(args)
    lines = err.strip().splitlines()
    assert got == code and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _timm_logits(folder: Path, x: torch.Tensor, *, fresh: bool = True) -> torch.Tensor:
    """timm alone loads the folder (strict) and runs ``x``; ``fresh``: in an interpreter without mgtool."""
    if not fresh:
        with torch.no_grad():
            return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x)
    code = (
        "import sys, torch, timm\n"
        f"m = timm.create_model('local-dir:{folder}', pretrained=True).eval()\n"
        "assert not any(k.startswith('mgtool') for k in sys.modules), 'mgtool was imported'\n"
        f"torch.save(m(torch.load('{folder}.x.pt')).detach(), '{folder}.y.pt')\n"
    )
    torch.save(x, f"{folder}.x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=folder.parent)
    assert done.returncode == 0, done.stderr
    return torch.load(f"{folder}.y.pt")


def _same_logits(folder: Path, ckpt: Path, spec: ArchSpec, size: int, *, fresh: bool = True) -> None:
    x = torch.randn(3, spec.in_chans, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = mgtool.load(ckpt)(x)
    theirs = _timm_logits(folder, x, fresh=fresh)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))


# ---------------------------------------------------------------- source names

@pytest.mark.parametrize("text", ["hf-hub:", "hf-hub:   ", "hf-hub:timm", "hf-hub:timm/", "hf-hub:/x",
                                  "hf-hub:a/b/c", "hf-hub:timm/x@", "hf-hub:timm/x@a@b", "local-dir:"])
def test_malformed_source_is_a_usage_error(text, tmp_path):
    with pytest.raises(SettingError):
        parse_source(text)
    out = tmp_path / "x.safetensors"
    _refused(["convert", text, "-o", out], 2, "SRC")
    assert not out.exists()


def test_parse_source_names():
    assert str(parse_source("hf-hub:timm/resnet18.a1_in1k@main")) == "hf-hub:timm/resnet18.a1_in1k@main"
    assert parse_source("local-dir:some/folder").ident == "some/folder"
    assert parse_source("resnet18.a1_in1k") is None  # a file path unless --pretrained
    assert parse_source("resnet18.a1_in1k", pretrained=True).kind == "timm"
    with pytest.raises(SettingError):
        parse_source("timm/resnet18", pretrained=True)


# ---------------------------------------------------------------- convert from hub and folder

@pytest.mark.parametrize(("repo", "arch", "options"), [
    ("timm/resnet18.tiny", {"name": "resnet18", "width": 0.0625, "num_classes": 7}, {"stem": "timm"}),
    ("timm/vit_tiny_patch16_224.tiny", {"name": "vit", "width": 1.0, "num_classes": 5},
     {"embed_dim": 32, "depth": 2, "num_heads": 4, "patch_size": 4, "img_size": 16, "mlp_ratio": 4.0}),
])
def test_convert_hub_infers_the_spec_and_exports_a_timm_folder(offline, tmp_path, repo, arch, options):
    tm, folder = tmp_path / "net.tm.safetensors", tmp_path / "net.timm"
    _ok(["convert", f"hf-hub:{repo}", "-o", tm])
    meta = read_meta(tm)
    assert {k: meta.arch.to_dict()[k] for k in arch} == arch and meta.arch.options == options
    source = meta.provenance.source
    assert source["name"] == f"hf-hub:{repo}" and source["revision"] == REV and source["pretrained_tag"]
    weights = offline / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / REV / "model.safetensors"
    assert meta.provenance.parents[0].sha256 == source["weights_sha256"] == mgtool.provenance.sha256_file(weights)
    _ok(["export", tm, "--format", "timm-dir", "-o", folder])
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["num_classes"] == arch["num_classes"] and config["pretrained_cfg"]["tag"] == "mgtool"
    size = options.get("img_size", 32)
    _same_logits(folder, tm, meta.arch, size, fresh=False)  # a fresh interpreter: the round trip test
    # the hub revision pinned by name resolves too, and the same weights give the same file content
    _ok(["convert", f"hf-hub:{repo}@{REV}", "-o", tmp_path / "pinned.safetensors"])


def test_convert_local_dir_and_reexport(tmp_path):
    """(Width 1.0, the stem=scaled case, is the slow test_timm_models_at_width_one_round_trip.)"""
    src = tmp_path / "r50"
    save_for_hf(_timm("resnet50", 3, channels=(8, 16, 32, 64), num_classes=4), str(src), safe_serialization=True)
    tm, folder = tmp_path / "r50.tm.safetensors", tmp_path / "r50.timm"
    _ok(["convert", f"local-dir:{src}", "--templates", "1", "-o", tm])
    meta = read_meta(tm)
    assert (meta.arch.name, meta.arch.width, meta.arch.options["stem"]) == ("resnet50", 0.125, "timm")
    assert meta.provenance.source["kind"] == "local-dir" and meta.provenance.source["revision"] is None
    _ok(["export", tm, "--format", "timm-dir", "-o", folder])
    _same_logits(folder, tm, meta.arch, 32, fresh=False)
    _refused(["export", tm, "--format", "timm-dir", "-o", folder], 1, "already exists", "--force")
    before = (folder / "model.safetensors").read_bytes()
    _ok(["export", tm, "--format", "timm-dir", "-o", folder, "--force"])
    assert (folder / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's 0700
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    _refused(["export", tm, "--format", "timm-dir", "-o", other, "--force"], 1, "mine.txt", "only a timm folder")
    assert (other / "mine.txt").read_text() == "keep"


def _convert_args(spec: ArchSpec) -> list:
    opts = sum((["--opt", f"{k}={v}"] for k, v in spec.options.items()), [])
    return ["--arch", spec.name, "--width", spec.width, "--num-classes", spec.num_classes, "--in-chans", spec.in_chans,
            *opts]


@pytest.mark.parametrize("family", family_names())
def test_every_family_declares_its_timm_bridge_or_is_refused(family):
    """Generated from the registry: a family's ``Family.timm`` maps its net to timm and back (the timm model
    claimed by that bridge alone), or ``timm_architecture`` refuses the family in one line."""
    spec, bridge = tiny_spec(family), get_family(family).timm
    if bridge is None:
        with pytest.raises(MgtoolError, match="not registered with timm") as refusal:
            timm_architecture(spec)
        assert "\n" not in str(refusal.value)
        return
    try:
        name, kwargs = timm_architecture(spec)
    except MgtoolError as e:  # a tiny net timm cannot express (a resnet's scaled stem); width 1 is timm's own
        assert "\n" not in str(e)
        spec = resolve_spec(ArchSpec(spec.name, 1.0, spec.num_classes, spec.in_chans, spec.options))
        name, kwargs = timm_architecture(spec)
    model = timm.create_model(name, **kwargs)
    claims = {get_family(f).timm for f in family_names()
              if get_family(f).timm and get_family(f).timm.from_timm(model, name, kwargs) is not None}
    assert claims == {bridge}
    assert timm_architecture(infer_spec(model, name, kwargs)) == (name, kwargs)


@pytest.mark.parametrize("family", family_names())
def test_every_family_exports_to_a_timm_folder_or_is_refused(family, tmp_path):
    """Generated from the registry: a new family is either loadable by timm or refused in one line."""
    spec = tiny_spec(family)
    if family.startswith("resnet"):  # timm's 64-channel stem at the tiny width
        spec = ArchSpec(spec.name, spec.width, spec.num_classes, spec.in_chans, {**spec.options, "stem": "timm"})
    pt, tm, folder = tmp_path / "net.pt", tmp_path / "net.tm.safetensors", tmp_path / "net.timm"
    torch.save(randomised_plain(spec).state_dict(), pt)
    _ok(["convert", pt, *_convert_args(spec), "-o", tm])
    if get_family(family).timm is None:
        _refused(["export", tm, "--format", "timm-dir", "-o", folder], 1, "not registered with timm")
        assert not folder.exists()
        return
    _ok(["export", tm, "--format", "timm-dir", "-o", folder])
    _same_logits(folder, tm, spec, int(spec.options.get("img_size", 32)), fresh=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "vit_small_patch16_224"])
def test_timm_models_at_width_one_round_trip(name, tmp_path):
    """timm's own models, unchanged sizes: local-dir -> convert -> export timm-dir -> timm, same logits."""
    src, tm, folder = tmp_path / "src", tmp_path / "net.tm.safetensors", tmp_path / "net.timm"
    save_for_hf(_timm(name, 0, num_classes=10), str(src), safe_serialization=True)
    _ok(["convert", f"local-dir:{src}", "-o", tm])
    meta = read_meta(tm)
    assert meta.arch.width == 1.0 and meta.arch.num_classes == 10
    _ok(["export", tm, "--format", "timm-dir", "-o", folder])
    _same_logits(folder, tm, meta.arch, 224 if meta.arch.name == "vit" else 64, fresh=False)


# ---------------------------------------------------------------- the round trip

def test_round_trip_hub_vit_grown_to_timm_folder(offline, tmp_path):
    f = {n: tmp_path / f"{n}.safetensors" for n in ("net1", "net1t", "net2", "grown", "ft")}
    _ok(["convert", "hf-hub:timm/vit_tiny_patch16_224.tiny", "-o", f["net1"]])
    _ok(["train-small", "--init-from", f["net1"], *SYNTHETIC, *QUICK, "-o", f["net1t"]])
    _ok(["train-small", "--like", f["net1t"], *QUICK, "-o", f["net2"]])
    _ok(["fuse", f["net1t"], f["net2"], "-o", f["grown"]])
    _ok(["finetune", f["grown"], *QUICK, "-o", f["ft"]])
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(_ok(["eval", f["ft"], "--device", "cpu", "--json"]))
    folder = tmp_path / "grown.timm"
    _ok(["export", f["ft"], "--format", "timm-dir", "--eval-json", evaluation, "-o", folder])
    meta = read_meta(f["ft"])
    assert meta.arch.width == 2.0
    _same_logits(folder, f["ft"], meta.arch, 16)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"]["embed_dim"] == 64 and config["model_args"]["num_heads"] == 8
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]  # the synthetic set's normalisation

    card = (folder / "README.md").read_text()
    printed = _ok(["info", f["ft"], "--card"])
    for path in (f["net1"], f["net1t"], f["net2"], f["grown"]):  # every ancestor's hash, computed here
        digest = mgtool.provenance.sha256_file(path)
        assert digest in card and digest in printed
    assert "hf-hub:timm/vit_tiny_patch16_224.tiny" in card and REV in card
    assert "mixturegrowth, x2 from 2 net(s); init orthogonal" in card and "tile ratio s median" in card
    assert "`mgtool eval`: top-1" in card and "| finetune (this file) |" in card

    # a reader checks the hashes: all match, then an altered parent is visible
    assert _run(["info", f["ft"], "--check-parents"])[0] == 0
    with open(f["net2"], "ab") as fh:
        fh.write(b"\0")
    code, _, err = _run(["info", f["ft"], "--check-parents"])
    report = err.strip().splitlines()
    assert code == 1 and report[-1].startswith("error: ") and "differ from their recorded sha256" in report[-1]
    assert [line.split()[0] for line in report[:-1] if str(f["net2"]) in line] == ["MISMATCH"]
    assert sum(line.startswith("ok ") for line in report) == 3  # net1, net1t, grown


# ---------------------------------------------------------------- bad input

def test_unknown_hub_name_or_tag_says_what_to_fetch(offline, tmp_path):
    out = tmp_path / "x.safetensors"
    _refused(["convert", "hf-hub:timm/nosuch.model", "-o", out], 1, "huggingface-cli download timm/nosuch.model",
             "HF_HOME")
    _refused(["convert", "hf-hub:timm/resnet18.tiny@feedbeef", "-o", out], 1, "--revision feedbeef")
    _refused(["convert", "resnet34.a1_in1k", "--pretrained", "-o", out], 1,
             "huggingface-cli download timm/resnet34.a1_in1k")
    _refused(["convert", "resnet18.nosuchtag", "--pretrained", "-o", out], 1, "nosuchtag")
    _refused(["convert", "nosuchnet", "--pretrained", "-o", out], 1, "knows no model 'nosuchnet'")
    assert not out.exists()


def _folder(tmp_path: Path, config: dict, model: torch.nn.Module | None = None) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if model is not None:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(("config", "words"), [
    ({"architecture": "resnet9000", "num_classes": 3, "pretrained_cfg": {}}, ["resnet9000", "not a model timm"]),
    ({"architecture": "resnet18", "num_classes": 7, "model_args": {**RESNET_KW, "stem_type": "deep"},
      "pretrained_cfg": {}}, ["stem_type='deep'", "cannot be mapped"]),
    ({"architecture": "vit_tiny_patch16_224", "num_classes": 5, "model_args": {**VIT_KW, "qkv_bias": False},
      "pretrained_cfg": {}}, ["qkv_bias=False", "cannot be mapped"]),
    ({"architecture": "resnet26", "num_classes": 7, "model_args": {"channels": [4, 8, 16, 32]},
      "pretrained_cfg": {}}, ["outside mgtool's families", "resnet18/34/50/101"]),
    ({"num_classes": 7, "pretrained_cfg": {}}, ["not a timm config"]),
])
def test_local_dir_config_refused(tmp_path, config, words):
    folder = _folder(tmp_path, config, _timm("resnet18", 0, **RESNET_KW))
    out = tmp_path / "x.safetensors"
    _refused(["convert", f"local-dir:{folder}", "-o", out], 1, *words)
    assert not out.exists()


def test_local_dir_without_config_or_weights(tmp_path):
    out = tmp_path / "x.safetensors"
    (tmp_path / "empty").mkdir()
    _refused(["convert", f"local-dir:{tmp_path / 'empty'}", "-o", out], 1, "no config.json")
    _refused(["convert", f"local-dir:{tmp_path / 'absent'}", "-o", out], 1, "no such folder")
    folder = _folder(tmp_path, {"architecture": "resnet18", "num_classes": 7, "model_args": RESNET_KW,
                                "pretrained_cfg": {}})
    _refused(["convert", f"local-dir:{folder}", "-o", out], 1, "no weights")
    assert not out.exists()


def test_a_timm_name_without_pretrained_says_so(tmp_path):
    _refused(["convert", "resnet18.a1_in1k", "-o", tmp_path / "x.safetensors"], 2, "add --pretrained")
    assert not (tmp_path / "x.safetensors").exists()


def test_pretrained_source_takes_no_arch_options(offline, tmp_path):
    _refused(["convert", "hf-hub:timm/resnet18.tiny", "--arch", "resnet18", "--width", "1", "-o",
              tmp_path / "x.safetensors"], 2, "drop --arch")


def test_timm_dir_refuses_what_timm_cannot_load(plain_ckpts, tmp_path):
    from mgtool.archs import tiny_spec

    for name, words in (("wrn", ["not registered with timm", "mgtool export SRC -o"]),
                        ("resnet18", ["stem", "fixed at 64 channels", "grow to width 1.0"])):
        spec = tiny_spec(name)
        tm = tmp_path / f"{name}.tm.safetensors"
        _ok(["convert", plain_ckpts[name], "--arch", name, "--width", spec.width,
             *sum((["--opt", f"{k}={v}"] for k, v in spec.options.items()), []), "-o", tm])
        out = tmp_path / f"{name}.timm"
        _refused(["export", tm, "--format", "timm-dir", "-o", out], 1, *words)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    _refused(["export", tm, "--format", "onnx", "-o", out], 2, "--format")


def test_control_characters_are_written_and_printed_literally(tmp_path):
    evil = "tag\x1b[31mred\nnext|line\x07"
    src = tmp_path / "r18"
    model = _timm("resnet18", 4, **RESNET_KW)
    save_for_hf(model, str(src), safe_serialization=True,
                model_config={"pretrained_cfg": {"tag": evil, "license": evil}})
    tm, folder = tmp_path / "r.tm.safetensors", tmp_path / "r.timm"
    _ok(["convert", f"local-dir:{src}", "-o", tm])
    assert read_meta(tm).provenance.source["pretrained_tag"] == evil  # stored as given, in JSON
    printed = _ok(["info", tm, "--card"])
    assert literal(evil) in printed and "\x1b" not in printed and "\x07" not in printed
    assert "tag\\x1b[31mred\\nnext\\|line\\x07" in printed
    _ok(["export", tm, "--format", "timm-dir", "-o", folder])
    card = (folder / "README.md").read_text()
    assert "\x1b" not in card and literal(evil) in card
    text = (folder / "config.json").read_text()
    assert json.loads(text)["pretrained_cfg"]["license"] == evil  # the source's licence, kept verbatim
    assert all(ord(c) >= 0x20 or c == "\n" for c in text) and "\\u001b" in text  # as JSON escapes


def test_model_card_from_metadata_alone(tmp_path, monkeypatch):
    """No parent file is needed: the lineage travels in the header."""
    from mgtool.card import model_card

    def mgtool_cli(args: list) -> None:
        monkeypatch.setattr(sys, "argv", ["/venv/bin/mgtool", *map(str, args)])  # what the console script sees
        _ok(args)

    net, grown = tmp_path / "net.safetensors", tmp_path / "grown.safetensors"
    torch.save(randomised_plain(ArchSpec("tiny-cnn", 1.0, 7)).state_dict(), tmp_path / "p.pt")
    mgtool_cli(["convert", tmp_path / "p.pt", "--arch", "tiny-cnn", "--width", "1", "-o", net])
    mgtool_cli(["fuse", net, "--factor", "2", "-o", grown])
    digest = mgtool.provenance.sha256_file(net)
    shutil.move(net, tmp_path / "moved.safetensors")
    card = model_card(read_meta(grown), name="g", load_hint="")
    assert card.count(digest) >= 2 and "| 1 | convert |" in card and "| 2 | fuse (this file) |" in card


def test_a_failed_check_leaves_no_folder_and_keeps_the_old_one(offline, tmp_path, monkeypatch):
    import mgtool.timm_dir as timm_dir
    from mgtool.verify import LogitCheck

    tm, folder = tmp_path / "net.tm.safetensors", tmp_path / "net.timm"
    _ok(["convert", "hf-hub:timm/resnet18.tiny", "-o", tm])
    _ok(["export", tm, "--format", "timm-dir", "-o", folder])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(timm_dir, "compare_logits", lambda *a, **k: LogitCheck(1.0, 1.0))
    _refused(["export", tm, "--format", "timm-dir", "-o", folder, "--force"], 1, "differs", "nothing written")
    _refused(["export", tm, "--format", "timm-dir", "-o", tmp_path / "new.timm"], 1, "differs")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not (tmp_path / "new.timm").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_card_of_a_crafted_header_is_literal_and_does_not_crash(plain_ckpts, tmp_path):
    """Free-form header sections hold whatever a writer put there: the card shows them, escaped."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mgtool.archs import tiny_spec

    spec, tm, crafted = tiny_spec("tiny-cnn"), tmp_path / "net.safetensors", tmp_path / "crafted.safetensors"
    _ok(["convert", plain_ckpts["tiny-cnn"], *_convert_args(spec), "-o", tm])
    with safe_open(str(tm), "pt") as f:
        doc = json.loads(f.metadata()["mgtool"])
    doc["training"], doc["data"] = ["not", "a", "dict"], "nor\x1b[2Jthis"
    doc["provenance"]["lineage"] = [{"sha256": "\x1b]0;title\x07", "test_top1": "x\x1b[2J", "training_flops": "lots",
                                     "parents": "abc", "stage": "fuse\r\n",
                                     "growth": {"tile_ratio": {"median": "m", "min": 1, "max": None}}}]
    save_file(load_file(str(tm)), str(crafted), metadata={"mgtool": json.dumps(doc)})
    printed = _ok(["info", crafted, "--card"])
    assert "\x1b" not in printed and "\x07" not in printed and "\r" not in printed
    assert "x\\x1b[2J" in printed and "\\x1b]0;title\\x07" in printed and "fuse\\r\\n" in printed


GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide-timm.md"
# The guide's commands at tiny settings: the explicit substitutions that make them run here.
GUIDE_TINY = [
    ("--data imagenet --data-dir /data/imagenet", " ".join(SYNTHETIC)),  # the tiny ViT: 16x16, 5 classes
    ("local-dir:path/to/folder", "local-dir:{folder}"),
]


def test_guide_commands_run(offline, tmp_path, monkeypatch):
    """Every command of docs/guide-timm.md's bash blocks, in order, in one folder (python lines too)."""
    import re
    import shlex

    folder = tmp_path / "folder"
    save_for_hf(_timm("resnet18", 6, **RESNET_KW), str(folder), safe_serialization=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    ran = 0
    for line in filter(None, lines):
        for old, new in GUIDE_TINY:
            line = line.replace(old, new.format(folder=folder))
        if line.startswith("python -c"):
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            done = subprocess.run([sys.executable, *shlex.split(line)[1:]], cwd=work, env=env,
                                  capture_output=True, text=True)
            assert done.returncode == 0, (line, done.stderr)
            ran += 1
            continue
        args, _, redirect = line.partition(" > ")
        argv = shlex.split(args)
        assert argv[0] == "mgtool", line
        if argv[1] in ("train-small", "finetune"):
            argv += ["--batch-size", "16", "--device", "cpu", "-q"]
        out = _ok(argv[1:])
        if redirect:
            (work / redirect.strip()).write_text(out)
        ran += 1
    assert ran == 14  # every line of the guide's bash blocks
    assert (work / "grown-vit" / "README.md").is_file()
