"""timm's VisionTransformer (class token, learned pos_embed, token pooling) at any width.

Options ``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``img_size`` and
``mlp_ratio`` give the width-1 model; the defaults are a small-image preset for tests
and CPU runs (patch 4 on 32x32, dim 64, depth 4, 2 heads: about 0.2 M parameters;
pass ``--opt img_size=28`` for 28x28 inputs). Width W multiplies ``embed_dim``,
``num_heads`` (so ``head_dim`` is kept) and with them the MLP hidden size
(``mlp_ratio * embed_dim``). Key names are timm's, and ``timm_kwargs(spec)`` makes
``timm.create_model("vit_tiny_patch16_224", **timm_kwargs(spec))`` this model at any width.

Widening (``grow --method clone|net2net|random``), head by head:

A ViT widens along four unit spaces, each with its own map ``new unit -> old unit``
(units 0..n-1 of every map are the originals):

* ``stream``: the residual stream (``embed_dim``): patch_embed outputs, cls_token,
  pos_embed, every LayerNorm, attn.proj and mlp.fc2 outputs, the inputs of qkv, fc1
  and the head;
* ``heads``: attention heads; a head's q, k and v rows and its slice of proj's input
  move together, and ``head_dim`` is kept, so the softmax scale is unchanged. The qkv
  output is laid out as timm splits it, ``[q heads | k heads | v heads]``, each part in
  the heads map's order;
* ``mlp``: the MLP hidden units (fc1 outputs, fc2 inputs).

Methods:

* ``clone`` (HyperCloning, Samragh et al. 2024): every map is the identity tiled g
  times, so the stream is ``[x, x, ...]`` and the heads ``[heads of the net, copies]``;
* ``net2net`` (Chen et al. 2016): new heads and MLP units copy uniformly drawn old
  ones; the stream map is the originals followed by g-1 random permutations of them,
  because LayerNorm is exact only if every unit has the same number of copies (then
  the widened vector has the mean and variance of the original);
* ``random``: the wide net's own init with the small tensors at the originals' units
  (for qkv, in the q, k and v parts), as ``grow_baselines.grow_random`` does for CNNs.

clone and net2net copy every tensor's outgoing units along the maps and divide the
weights reading a widened space by the number of copies of their source unit, so the
wide net computes the small net's function (eval and train mode, dropout off).
Symmetry breaking (``noise``): see ``zero_sum_noise``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mgtool.archs.registry import Family, build_plain, grow_spec, register_family, resolve_spec, scaled
from mgtool.archs.spec import ArchSpec
from mgtool.archs.timm_bridge import TimmBridge, check_model_args
from mgtool.archs.widening import Widening, zero_sum_noise
from mgtool.errors import MgtoolError

TIMM_NAME = "vit_tiny_patch16_224"  # qkv_bias, class token, token pooling: timm's default ViT
QKV_PARTS = 3  # timm's qkv output is [q heads..., k heads..., v heads...]
# model_args the family expresses (the value must equal the one given where there is one).
TIMM_ARGS = {"img_size": None, "patch_size": None, "embed_dim": None, "depth": None, "num_heads": None,
             "mlp_ratio": None, "num_classes": None, "in_chans": None, "global_pool": "token",
             "qkv_bias": True, "class_token": True, "drop_rate": None, "pos_drop_rate": None,
             "proj_drop_rate": None, "attn_drop_rate": None}


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


def _from_timm(model: nn.Module, architecture: str, model_args: dict) -> ArchSpec | None:
    if not isinstance(model, VisionTransformer):
        return None
    check_model_args("vit", model_args, TIMM_ARGS)
    pe = model.patch_embed
    dim = model.embed_dim
    hidden = model.blocks[0].mlp.fc1.out_features if len(model.blocks) else 0
    img, patch = tuple(pe.img_size or (0, 0)), tuple(pe.patch_size)
    plain = (model.cls_token is not None and getattr(model, "num_reg_tokens", 0) == 0
             and model.global_pool == "token" and not getattr(model, "no_embed_class", False)
             and not getattr(model, "dynamic_img_size", False) and img[0] == img[1] and patch[0] == patch[1])
    if not plain or not hidden:
        raise MgtoolError(f"{architecture}: a VisionTransformer that mgtool's vit family cannot express (it has "
                          "one class token, no register tokens, token pooling, square patches and images)")
    options = {"embed_dim": dim, "depth": len(model.blocks), "num_heads": model.blocks[0].attn.num_heads,
               "patch_size": patch[0], "img_size": img[0], "mlp_ratio": hidden / dim}
    return resolve_spec(ArchSpec("vit", 1.0, model.num_classes, pe.proj.in_channels, options))


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


# ---------------------------------------------------------------------- widening

STREAM, HEADS, MLP = "stream", "heads", "mlp"
ATTN, QKV = "attn", "qkv"  # unit maps derived from the heads map

# key pattern -> (space of dim 0 or of the last dim for embeddings, space of dim 1)
_RULES: tuple[tuple[str, str | None, str | None], ...] = (
    (r"(cls_token|pos_embed)", STREAM, None),
    (r"patch_embed\.proj\.(weight|bias)", STREAM, None),
    (r"(blocks\.\d+\.norm[12]|norm)\.(weight|bias)", STREAM, None),
    (r"blocks\.\d+\.attn\.qkv\.weight", QKV, STREAM),
    (r"blocks\.\d+\.attn\.qkv\.bias", QKV, None),
    (r"blocks\.\d+\.attn\.proj\.weight", STREAM, ATTN),
    (r"blocks\.\d+\.attn\.proj\.bias", STREAM, None),
    (r"blocks\.\d+\.mlp\.fc1\.weight", MLP, STREAM),
    (r"blocks\.\d+\.mlp\.fc1\.bias", MLP, None),
    (r"blocks\.\d+\.mlp\.fc2\.weight", STREAM, MLP),
    (r"blocks\.\d+\.mlp\.fc2\.bias", STREAM, None),
    (r"head\.weight", None, STREAM),
    (r"head\.bias", None, None),
)
_EMBEDDINGS = re.compile(r"(cls_token|pos_embed)\Z")


def tensor_spaces(key: str) -> tuple[str | None, str | None]:
    """(output space, input space) of a ViT state-dict tensor; refuses unknown tensors."""
    for pattern, out_space, in_space in _RULES:
        if re.fullmatch(pattern, key):
            return out_space, in_space
    raise MgtoolError(f"vit: no widening rule for tensor {key} (only timm's default ViT blocks are supported)")


@dataclass(frozen=True)
class VitMaps:
    """new unit -> old unit for the stream, the heads and the MLP hidden units."""

    stream: Tensor
    heads: Tensor
    mlp: Tensor
    embed_dim: int  # of the small net
    head_dim: int

    def of(self, space: str | None) -> Tensor | None:
        """The map of a space; ``attn`` (proj's input) and ``qkv`` follow from the heads map."""
        if space is None:
            return None
        if space in (STREAM, HEADS, MLP):
            return {STREAM: self.stream, HEADS: self.heads, MLP: self.mlp}[space]
        per_dim = torch.arange(self.head_dim)
        attn = (self.heads.unsqueeze(1) * self.head_dim + per_dim).reshape(-1)
        if space == ATTN:
            return attn
        return torch.cat([p * self.embed_dim + attn for p in range(QKV_PARTS)])


def vit_maps(spec: ArchSpec, factor: int, method: str, generator: torch.Generator) -> VitMaps:
    """The unit maps of ``clone`` (tiled identity) or ``net2net`` (see the module docstring)."""
    dim, heads, hidden = dims(resolve_spec(spec))

    def tiled(n: int) -> Tensor:
        return torch.arange(n).repeat(factor)

    def drawn(n: int) -> Tensor:
        return torch.cat([torch.arange(n), torch.randint(0, n, ((factor - 1) * n,), generator=generator)])

    def balanced(n: int) -> Tensor:
        return torch.cat([torch.arange(n), *(torch.randperm(n, generator=generator) for _ in range(factor - 1))])

    if method == "clone":
        return VitMaps(tiled(dim), tiled(heads), tiled(hidden), dim, dim // heads)
    if method == "net2net":
        return VitMaps(balanced(dim), drawn(heads), drawn(hidden), dim, dim // heads)
    raise MgtoolError(f"vit: no unit maps for method {method!r}")


def _widen(t: Tensor, key: str, maps: VitMaps) -> tuple[Tensor, Tensor | None]:
    """The cloned tensor, and the input map where it reads a widened space (for the noise)."""
    out_space, in_space = tensor_spaces(key)
    out_map, in_map = maps.of(out_space), maps.of(in_space)
    if in_map is not None:
        counts = torch.bincount(in_map).to(t.dtype)
        t = t.index_select(1, in_map) / counts[in_map].view(1, -1, *[1] * (t.ndim - 2))
    if out_map is not None:
        t = t.index_select(t.ndim - 1 if _EMBEDDINGS.search(key) else 0, out_map)
    return t, in_map


def grow_vit_preserving(net: nn.Module, spec: ArchSpec, factor: int, *, method: str, seed: int = 0,
                        noise: float = 0.0) -> tuple[nn.Module, VitMaps]:
    """``clone`` or ``net2net`` widening of a plain ViT, with optional zero-sum noise."""
    spec = resolve_spec(spec)
    generator = torch.Generator().manual_seed(seed)
    maps = vit_maps(spec, factor, method, generator)
    wide = build_plain(grow_spec(spec, factor))
    wide_sd = wide.state_dict()
    small_sd = net.state_dict()
    _same_keys(small_sd, wide_sd)
    with torch.no_grad():
        for key, value in small_sd.items():
            grown, in_map = _widen(value, key, maps)
            if tuple(grown.shape) != tuple(wide_sd[key].shape):
                raise MgtoolError(f"vit: widened {key} has shape {tuple(grown.shape)}, "
                                  f"the wide model {tuple(wide_sd[key].shape)}")
            if noise > 0 and in_map is not None:
                scale = float(grown.double().pow(2).mean().sqrt())
                grown = grown + zero_sum_noise(in_map, tuple(grown.shape), noise, scale, generator).to(grown.dtype)
            wide_sd[key].copy_(grown)
    return wide, maps


def grow_vit_random(net: nn.Module, spec: ArchSpec, factor: int, seed: int = 0) -> nn.Module:
    """The wide ViT's own init, with every small tensor at the originals' units: the
    leading block, except qkv's rows, which sit at the start of each of q, k and v."""
    spec = resolve_spec(spec)
    dim = dims(spec)[0]
    torch.manual_seed(seed)
    wide = build_plain(grow_spec(spec, factor))
    qkv_rows = torch.cat([p * dim * factor + torch.arange(dim) for p in range(QKV_PARTS)])
    small_sd, wide_sd = net.state_dict(), wide.state_dict()
    _same_keys(small_sd, wide_sd)
    with torch.no_grad():
        for key, old in small_sd.items():
            target = wide_sd[key]
            if tensor_spaces(key)[0] == QKV:  # also refuses tensors without a rule
                target = target[..., : old.shape[-1]] if old.ndim == 2 else target
                target.index_copy_(0, qkv_rows, old)
            else:
                target[tuple(slice(0, s) for s in old.shape)] = old
    return wide


def _same_keys(small: dict[str, Tensor], wide: dict[str, Tensor]) -> None:
    if set(small) != set(wide):
        diff = sorted(set(small) ^ set(wide))
        raise MgtoolError(f"vit: growing changes the state-dict keys ({diff[:4]})")


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
        widening=Widening(grow_vit_random, grow_vit_preserving),
        cka_layers=lambda net: [n for n, _ in net.named_modules() if re.fullmatch(r"blocks\.\d+", n)],
        timm=TimmBridge(lambda spec: (TIMM_NAME, timm_kwargs(spec)), _from_timm,
                        reads="VisionTransformer models (vit_*, deit_*)", fixed_input_size=True),
    )
)
