"""The paper recipes build the paper's nets: every grown parameter shape against the reference model."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from mgtool.archs import ArchSpec, resolve_spec
from mgtool.fuse.layout import meta_model, plan_fusion
from mgtool.plan import make_plan
from mgtool.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
WRN28_10 = {"depth": 28, "norm": "block-input", "stem_width": 16}


def _reference(name: str, classes: int) -> torch.nn.Module:
    if name == "resnet50":
        with torch.device("meta"):
            return timm.create_model("resnet50", num_classes=classes)
    return meta_model(resolve_spec(ArchSpec("wrn", 10, classes, 3, WRN28_10)))  # the standard WRN-28-10


@pytest.mark.parametrize(("recipe", "classes", "reference"), [
    ("cifar10-wrn28.yaml", 10, "wrn"), ("cifar100-wrn28.yaml", 100, "wrn"),
    ("imagenet-resnet50.yaml", 1000, "resnet50"),
])
def test_each_paper_recipe_grows_into_exactly_the_papers_net(recipe, classes, reference):
    r = load_recipe(RECIPES / recipe, ["data.dir=/nonexistent"] if "imagenet" in recipe else [])
    assert (r.arch.templates, r.arch.share) == (2, "none")  # the authors' plan: 2 per layer, no sharing
    small = resolve_spec(ArchSpec(r.arch.name, r.arch.width, classes, 3, r.arch.options))
    layout = plan_fusion(small, make_plan(meta_model(small), r.arch.templates, r.arch.share), 2, fused=True)
    grown = {k: tuple(v.shape) for k, v in meta_model(layout.spec).state_dict().items()}
    want = {k: tuple(v.shape) for k, v in _reference(reference, classes).state_dict().items()}
    assert grown == want
    if reference == "wrn":
        assert small.options["stem_width"] == 8 and layout.spec.options["stem_width"] == 16


def test_the_recipes_cite_no_module_that_does_not_exist():
    for path in RECIPES.glob("*.yaml"):
        assert "mgtool.train.recipes" not in path.read_text(), path
