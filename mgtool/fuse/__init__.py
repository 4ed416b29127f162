"""MixtureGrowth fusion: g small template-mixing nets -> one net g times as wide.

* ``layout``: roles, per-tensor rules and the grown plan (pure; see its docstring for the tiling);
* ``inputs``: every check on the input files, once, into a typed ``FuseInputs``;
* ``assembly``: the streaming assembly and the new tiles' initialisation (``--init``, ``--init-scale``);
* ``ratios``: the tile ratio s (a new tile's norm over its layer's diagonal tiles') and the
  coefficient ratio (the same for coefficient vectors; large values warn of unstable fine-tuning);
* ``api``: ``fuse`` (validate -> plan -> stream -> write) and ``fuse_models`` (in memory).
"""

from mgtool.coef_init import InitSettings, resolve_init
from mgtool.fuse.api import FuseResult, SumOfLogits, fuse, fuse_models
from mgtool.fuse.assembly import Assembly, LayerCap, fuse_tensors
from mgtool.fuse.inputs import FuseInputs, check_fusable, validate
from mgtool.fuse.layout import (
    CLASSIFIER,
    FIRST,
    HIDDEN,
    FusionLayout,
    coefficient_key,
    grown_plan,
    layer_roles,
    meta_model,
    plan_fusion,
)
from mgtool.fuse.ratios import TileRatios, coefficient_ratios, tile_ratios

__all__ = [
    "Assembly", "CLASSIFIER", "FIRST", "LayerCap", "HIDDEN", "FuseInputs", "FuseResult", "FusionLayout",
    "InitSettings", "SumOfLogits", "TileRatios", "check_fusable", "coefficient_key", "coefficient_ratios", "fuse",
    "fuse_models", "fuse_tensors", "grown_plan", "layer_roles", "meta_model", "plan_fusion", "resolve_init",
    "tile_ratios", "validate",
]
