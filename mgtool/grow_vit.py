"""Widening timm ViTs (family ``vit``): clone, net2net and random, head by head.

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

import torch
from torch import Tensor, nn

from mgtool.archs import ArchSpec, build_plain, grow_spec, resolve_spec
from mgtool.archs.vit import QKV_PARTS, dims
from mgtool.errors import MgtoolError

FAMILIES = ("vit",)
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


def handles(spec: ArchSpec) -> bool:
    """Whether this module (not the channel-space tracer) widens ``spec``'s family."""
    return spec.name in FAMILIES


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


def zero_sum_noise(in_map: Tensor, shape: tuple[int, ...], ratio: float, scale: float,
                   generator: torch.Generator) -> Tensor:
    """Gaussian noise for a widened weight (input units on dim 1) that sums to zero over
    the copies of every source unit, so it leaves the function unchanged.

    Its RMS is ``ratio * scale`` (``scale``: the widened weight's RMS) over every
    column whose source unit has at least two copies, so the signal-to-noise power
    ratio of those columns is ``1 / ratio**2`` (``20 log10(1/ratio)`` dB); a unit with
    one copy gets none.
    """
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    groups = in_map.long()
    counts = torch.bincount(groups).to(torch.float64)
    view = [1] * len(shape)
    view[1] = -1
    sums = torch.zeros(shape[0], counts.numel(), *shape[2:], dtype=torch.float64).index_add_(1, groups, noise)
    mean = sums.index_select(1, groups) / counts[groups].view(view)
    c = counts[groups]
    # Removing the mean of c samples leaves (c-1)/c of the variance; restore it.
    gain = torch.where(c > 1, torch.sqrt(c / (c - 1).clamp_min(1)), torch.zeros_like(c))
    return (noise - mean) * gain.view(view) * ratio * scale


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
