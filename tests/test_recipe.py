"""The recipe schema: every shipped recipe loads; unknown keys and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mgtool.cli import app
from mgtool.errors import MgtoolError, SettingError
from mgtool.recipe import load_recipe, recipe_command, recipe_from_dict

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "synthetic-smoke.yaml"
runner = CliRunner()


def smoke_dict() -> dict:
    return yaml.safe_load(SMOKE.read_text())


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load_and_name_their_command(path: Path) -> None:
    recipe = load_recipe(path)
    command = recipe_command(path)
    assert command is not None and command.startswith(f"mgtool run recipes/{path.name}")
    assert recipe.reference.epochs >= 1
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe  # round trip


def test_the_paper_recipes() -> None:
    root = SMOKE.parent
    c100 = load_recipe(root / "cifar100-wrn28.yaml")
    assert (c100.arch.name, c100.arch.width, c100.arch.options["depth"]) == ("wrn", 5, 28)
    assert c100.arch.options["norm"] == "block-input"
    assert c100.net1.train.epochs == 200 and c100.reference.epochs == 200
    assert c100.finetune.train.epochs == 40 and c100.net2.growth_point == 1.0
    r50 = load_recipe(root / "imagenet-resnet50.yaml")
    assert (r50.arch.name, r50.arch.width, r50.arch.options) == ("resnet50", 0.5, {"stem": "scaled"})
    assert r50.net1.train.milestones == (30, 60, 80) and r50.net1.train.batch_size == 256
    assert r50.reference.epochs == 90


def test_scaled_stem_grows_half_width_resnet50_into_resnet50() -> None:
    import timm

    from mgtool.archs import ArchSpec, build_plain, grow_spec, resolve_spec

    r50 = load_recipe(SMOKE.parent / "imagenet-resnet50.yaml")
    small = resolve_spec(ArchSpec(r50.arch.name, r50.arch.width, 1000, 3, dict(r50.arch.options)))
    with __import__("torch").device("meta"):
        grown = build_plain(grow_spec(small, 2))
        reference = timm.create_model("resnet50")
    assert {k: tuple(v.shape) for k, v in grown.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}


@pytest.mark.parametrize(("where", "key"), [((), "finetun"), (("finetune", "train"), "epoch"),
                                            (("data",), "subsets"), (("fuse",), "int")])
def test_unknown_key_is_named_with_its_place(where: tuple[str, ...], key: str) -> None:
    data = smoke_dict()
    node = data
    for part in where:
        node = node[part]
    node[key] = 1
    with pytest.raises(MgtoolError) as e:
        recipe_from_dict(data)
    assert repr(key) in str(e.value)
    assert (".".join(where) or "top level") in str(e.value)


def test_wrong_types_and_missing_keys_are_named() -> None:
    data = smoke_dict()
    data["finetune"]["train"]["epochs"] = "three"
    with pytest.raises(MgtoolError, match=r"finetune\.train\.epochs: expected an integer"):
        recipe_from_dict(data)
    data = smoke_dict()
    del data["reference"]
    with pytest.raises(MgtoolError, match="missing key 'reference'"):
        recipe_from_dict(data)
    data = smoke_dict()
    data["net1"]["checkpoint"] = "net1.safetensors"
    with pytest.raises(MgtoolError, match="exactly one of checkpoint"):
        recipe_from_dict(data)
    data = smoke_dict()
    data["net2"]["growth_point"] = 1.5
    with pytest.raises(MgtoolError, match="growth_point"):
        recipe_from_dict(data)


def test_overrides_are_typed_and_validated() -> None:
    r = recipe_from_dict(smoke_dict(), ["finetune.train.epochs=3", "fuse.init=random", "finetune.train.lr=0.05"])
    assert r.finetune.train.epochs == 3 and r.fuse.init == "random" and r.finetune.train.lr == 0.05
    with pytest.raises(MgtoolError, match="'epoch'"):
        recipe_from_dict(smoke_dict(), ["finetune.train.epoch=3"])
    with pytest.raises(MgtoolError, match="KEY=VALUE"):
        recipe_from_dict(smoke_dict(), ["finetune.train.epochs"])


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MgtoolError, match="no such recipe"):
        load_recipe(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(MgtoolError, match="not valid YAML"):
        load_recipe(bad)


def test_run_cli_help_and_bad_recipes(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "Example: mgtool run" in result.output
    typo = tmp_path / "typo.yaml"
    data = smoke_dict()
    data["finetune"]["train"]["epoch"] = 1
    typo.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(typo), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "unknown key 'epoch'" in result.stderr and "finetune.train" in result.stderr
    assert result.stdout == "" and not (tmp_path / "out" / "net1.safetensors").exists()
    result = runner.invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1 and "no such recipe" in result.stderr
    result = runner.invoke(app, ["run", str(SMOKE), "--set", "nonsense"])
    assert result.exit_code == 1 and "KEY=VALUE" in result.stderr


@pytest.mark.parametrize(("override", "key"), [
    ("fuse.init=ortogonal", "fuse.init"), ("fuse.noise=-1", "fuse.noise"), ("eval.batch_size=0", "eval.batch_size"),
    ("eval.limit=0", "eval.limit"), ("arch.name=wrm", "arch.name"), ("arch.share=all", "arch.share"),
    ("arch.templates=0", "arch.templates"), ("arch.width=0", "arch.width"), ("data.name=fashion", "data.name"),
    ("finetune.train.schedule=cos", "finetune.train.schedule"), ("finetune.train.lr=0", "finetune.train.lr"),
    ("net1.train.momentum=1", "net1.train.momentum"), ("finetune.train.batch_size=0", "finetune.train.batch_size"),
    ("runtime.device=gpu", "runtime.device"), ("runtime.precision=fp16", "runtime.precision"),
    ("runtime.loader=fast", "runtime.loader"), ("runtime.threads=0", "runtime.threads"),
    ("reference.epochs=0", "reference.epochs"), ("method=grow", "method"), ("fuse.factor=3", "fuse.factor"),
    ("fuse.init_scale=-0.5", "fuse.init_scale"), ("fuse.init_norm=huge", "fuse.init_norm"),
    ("recalibrate.samples=-1", "recalibrate.samples"), ("recalibrate.batch_size=0", "recalibrate.batch_size"),
])
def test_every_value_is_checked_and_named_by_its_key(override: str, key: str) -> None:
    with pytest.raises(SettingError) as e:
        recipe_from_dict(smoke_dict(), [override])
    assert e.value.label == key and str(e.value).startswith(f"{key} must")


@pytest.mark.parametrize("name", ["../..", "..", ".", "", "/abs", "a/b", "a\\b", "runs/x"])
def test_the_name_is_a_plain_folder_name(name: str) -> None:
    with pytest.raises(SettingError) as e:
        recipe_from_dict({**smoke_dict(), "name": name})
    assert e.value.label == "name"
    assert recipe_from_dict({**smoke_dict(), "name": "ok-name_1.v2"}).name == "ok-name_1.v2"


def test_scratch_recipes_need_no_growth_sections_and_refuse_them() -> None:
    data = smoke_dict()
    train = data["finetune"]["train"]
    for key in ("net1", "net2", "fuse", "finetune"):
        del data[key]
    r = recipe_from_dict({**data, "scratch": {"train": train, "size": "small", "kind": "template-mixing"}})
    assert r.scratch.kind == "template-mixing" and r.net1 is None
    with pytest.raises(MgtoolError, match="missing key 'net1'"):
        recipe_from_dict(data)
    with pytest.raises(MgtoolError, match="recipe finetune: not used by a scratch"):
        recipe_from_dict({**smoke_dict(), "net1": None, "scratch": {"train": train}})
    with pytest.raises(SettingError, match="scratch.size must"):
        recipe_from_dict({**data, "scratch": {"train": train, "size": "huge"}})


def test_run_cli_refuses_a_bad_name_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(SMOKE), "--set", "name=../escaped"])
    assert result.exit_code == 1 and "name must be a plain folder name" in result.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()


def test_a_given_net2_takes_no_training_settings() -> None:
    r = recipe_from_dict(smoke_dict(), ["net2.checkpoint=n2.safetensors"])
    assert r.net2.checkpoint == "n2.safetensors"
    with pytest.raises(MgtoolError, match="net2: a given checkpoint is fused as is"):
        recipe_from_dict(smoke_dict(), ["net2.checkpoint=n2.safetensors", "net2.growth_point=0.5"])


@pytest.mark.parametrize(("overrides", "key", "problem"), [
    (["fuse.init_options={foo: 1}"], "fuse.init_options.foo", "is not a setting of --init orthogonal"),
    (["fuse.init=zero", "fuse.init_scale=0.25"], "fuse.init_scale", "does not apply to --init zero"),
    (["fuse.init_norm=unit", "fuse.init_scale=0.25"], "fuse.init_scale", "--init-norm unit"),
    (["fuse.noise=0.1"], "fuse.noise", "is not a setting of --init orthogonal"),
])
def test_fuse_init_settings_are_checked_as_fuse_checks_them(overrides: list[str], key: str, problem: str) -> None:
    with pytest.raises(SettingError) as e:
        recipe_from_dict(smoke_dict(), overrides)
    assert e.value.label == key and problem in str(e.value)


def test_growth_settings_reach_the_recipe() -> None:
    r = recipe_from_dict(smoke_dict(), ["fuse.init_scale=0.25", "fuse.init_norm=learned", "recalibrate.samples=0",
                                        "finetune.train.protocol=authors", "finetune.train.coef_weight_decay=0.01"])
    assert (r.fuse.init_scale, r.fuse.init_norm, r.recalibrate.samples) == (0.25, "learned", 0)
    assert (r.finetune.train.protocol, r.finetune.train.coef_weight_decay) == ("authors", 0.01)
    assert recipe_from_dict(smoke_dict()).recalibrate.samples == 0  # off unless asked (see RecalibrateSection)
    with pytest.raises(SettingError) as e:
        recipe_from_dict(smoke_dict(), ["finetune.train.protocol=theirs"])
    assert e.value.label == "finetune.train.protocol"


def test_a_section_checks_itself_when_built_and_the_recipe_names_its_key() -> None:
    from mgtool.errors import SettingError
    from mgtool.recipe import EvalSection, FuseSection

    with pytest.raises(SettingError) as e:
        FuseSection(init="nope")
    assert e.value.label == "init"
    with pytest.raises(SettingError) as e:
        EvalSection(batch_size=0)
    assert e.value.label == "batch_size"
    with pytest.raises(SettingError, match=r"^fuse\.factor "):
        recipe_from_dict(smoke_dict(), ["fuse.factor=1"])
