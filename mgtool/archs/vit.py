"""timm's VisionTransformer (class token, learned pos_embed, token pooling) at any width.

Options ``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``img_size`` and
``mlp_ratio`` give the width-1 model; the defaults are a small-image preset for tests
and CPU runs (patch 4 on 32x32, dim 64, depth 4, 2 heads: about 0.2 M parameters;
pass ``--opt img_size=28`` for 28x28 inputs). Width W multiplies ``embed_dim``,
``num_heads`` (so ``head_dim`` is kept) and with them the MLP hidden size
(``mlp_ratio * embed_dim``). Key names are timm's, and ``timm_kwargs(spec)`` makes
``timm.create_model("vit_tiny_patch16_224", **timm_kwargs(spec))`` this model at any width.
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from mgtool.archs.registry import Family, register_family, scaled
from mgtool.archs.spec import ArchSpec
from mgtool.errors import MgtoolError

TIMM_NAME = "vit_tiny_patch16_224"  # qkv_bias, class token, token pooling: timm's default ViT
QKV_PARTS = 3  # timm's qkv output is [q heads..., k heads..., v heads...]


def dims(spec: ArchSpec) -> tuple[int, int, int]:
    """(embed_dim, num_heads, mlp hidden size) of the spec at its width; refuses fractions."""
    o = spec.options
    base_dim, base_heads = int(o["embed_dim"]), int(o["num_heads"])
    if base_heads < 1 or base_dim % base_heads:
        raise MgtoolError(f"vit: embed_dim ({base_dim}) must be a multiple of num_heads ({base_heads})")
    dim = scaled(base_dim, spec.width, "vit embed_dim")
    heads = scaled(base_heads, spec.width, "vit num_heads")
    if dim != heads * (base_dim // base_heads):
        raise MgtoolError(f"vit: width {spec.width:g} does not keep head_dim {base_dim // base_heads}; "
                          "choose a width that makes num_heads a whole number")
    hidden = dim * float(o["mlp_ratio"])
    if abs(hidden - round(hidden)) > 1e-6:
        raise MgtoolError(f"vit: mlp_ratio {o['mlp_ratio']} x embed_dim {dim} is not a whole number")
    return dim, heads, int(round(hidden))


def timm_kwargs(spec: ArchSpec) -> dict:
    """The keyword arguments that make ``timm.create_model(TIMM_NAME, **kw)`` this model."""
    o = spec.options
    dim, heads, _ = dims(spec)
    img, patch, depth = int(o["img_size"]), int(o["patch_size"]), int(o["depth"])
    if patch < 1 or img % patch:
        raise MgtoolError(f"vit: img_size ({img}) must be a multiple of patch_size ({patch})")
    if depth < 1:
        raise MgtoolError(f"vit: depth must be at least 1, got {depth}")
    return {
        "img_size": img,
        "patch_size": patch,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": float(o["mlp_ratio"]),
        "num_classes": spec.num_classes,
        "in_chans": spec.in_chans,
    }


def _build(spec: ArchSpec) -> nn.Module:
    return timm.create_model(TIMM_NAME, pretrained=False, **timm_kwargs(spec))


def _grow(spec: ArchSpec, g: int) -> ArchSpec:
    return ArchSpec(spec.name, spec.width * g, spec.num_classes, spec.in_chans, dict(spec.options))


def vit_qkv_tile_order(embed_dim: int, factor: int) -> Tensor:
    """Row permutation of a fused qkv weight: timm's layout from the tiled one.

    ``fuse`` tiles a hidden layer row block by row block, net r's rows in block r, so a
    fused qkv generates rows ``[q_0 k_0 v_0 | q_1 k_1 v_1 | ...]`` (``embed_dim`` rows
    each, net r's heads in order inside q_r). timm splits qkv as ``[q | k | v]`` with the
    heads in order, so the grown net needs ``[q_0 q_1 .. | k_0 k_1 .. | v_0 v_1 ..]``:
    heads ``[net 0's heads, net 1's heads, ...]`` in each of q, k and v. Returns ``perm``
    with ``timm_rows = tiled_rows[perm]`` (apply to the weight's rows and the bias).
    ``head_dim`` is kept, so the permutation does not depend on the number of heads.
    """
    if embed_dim < 1 or factor < 1:
        raise ValueError(f"embed_dim and factor must be positive, got {embed_dim}, {factor}")
    tiled = torch.arange(factor * QKV_PARTS * embed_dim).view(factor, QKV_PARTS, embed_dim)
    return tiled.transpose(0, 1).reshape(-1)


register_family(
    Family(
        name="vit",
        build=_build,
        options={"embed_dim": 64, "depth": 4, "num_heads": 2, "patch_size": 4, "img_size": 32,
                 "mlp_ratio": 4.0},
        grow=_grow,
        input_size=lambda spec: (int(spec.options["img_size"]),) * 2,
        summary="timm VisionTransformer (class token, learned pos_embed); width multiplies embed_dim, "
        "num_heads (head_dim kept) and the MLP; defaults: patch 4 on 32x32, dim 64, depth 4, 2 heads",
        tiny={"width": 0.5, "num_classes": 5,
              "options": {"embed_dim": 32, "depth": 2, "num_heads": 4, "img_size": 16}},
        row_interleave={"blocks.*.attn.qkv": QKV_PARTS},  # fused heads: see vit_qkv_tile_order
        fusion_sums_logits=False,  # LayerNorm normalises over the nets' joined streams
    )
)
