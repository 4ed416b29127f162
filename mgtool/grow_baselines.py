"""The paper's growth baselines on plain checkpoints: Random and Net2Net (Chen et al. 2016),
and HyperCloning-style ``clone`` (Samragh et al. 2024).

Both widen the same family by ``factor`` (``grow_spec``); the small net's units are the
first ones of every widened dimension.

* ``random``: every existing tensor stays in its leading block; everything else is
  the family's own initialisation of the wide model (seeded).
* ``net2net``: function-preserving widening. For every channel space that grows
  (``channel_spaces``: residual connections tie spaces together), new unit j copies a
  uniformly drawn old unit m(j); units 0..n-1 are the originals. A layer's incoming
  weights and every per-channel tensor (bias, BatchNorm affine and statistics) are
  copied along m; its weights from a widened input space are divided by the number of
  copies of their source unit. Nothing is rescaled afterwards, so the wide net
  computes the small net's function, in eval and in train mode.
* ``clone``: ``net2net`` with every unit copied exactly g times (new unit j copies
  unit j mod n), so the wide net's features are the small net's tiled g times.

``noise`` (clone and net2net) adds symmetry-breaking noise that sums to zero over the
copies of every input unit, so the function is kept (``archs.widening.zero_sum_noise``).
A family that declares its own ``Family.widening`` (the ViT: head by head) is widened by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mgtool.archs import ArchSpec, build_plain, get_family, grow_spec, resolve_spec
from mgtool.archs.widening import zero_sum_noise
from mgtool.channel_spaces import ChannelSpaces, channel_spaces, space_sizes
from mgtool.checkpoint import CheckpointMeta, check_output_path, read_meta, save_checkpoint
from mgtool.errors import MgtoolError, SettingError, check_choice, check_range
from mgtool.loading import load_checkpoint
from mgtool.provenance import Parent, new_provenance, sha256_file
from mgtool.verify import LogitCheck, VerifiedResult, compare_logits, require_preserved

METHODS = ("random", "net2net", "clone")
PRESERVING = ("net2net", "clone")
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


def grow_random(net: nn.Module, spec: ArchSpec, factor: int, seed: int = 0) -> nn.Module:
    """The wide model with the family's own init, the small net's tensors in its leading blocks."""
    spec = resolve_spec(spec)
    torch.manual_seed(seed)
    wide = build_plain(grow_spec(spec, factor))
    small_sd, wide_sd = net.state_dict(), wide.state_dict()
    _same_keys(small_sd, wide_sd, spec)
    with torch.no_grad():
        for key, old in small_sd.items():
            new = wide_sd[key]
            if any(b not in (s, factor * s) for s, b in zip(old.shape, new.shape)) or old.ndim != new.ndim:
                raise MgtoolError(
                    f"{spec.name}: tensor {key} has shape {tuple(old.shape)} small and "
                    f"{tuple(new.shape)} grown; not a {factor}-fold widening"
                )
            new[tuple(slice(0, s) for s in old.shape)] = old
    return wide


@dataclass(frozen=True)
class Net2NetMaps:
    """new unit -> old unit, per channel space that grows (absent: the space keeps its size)."""

    spaces: ChannelSpaces
    maps: dict[int, Tensor] = field(default_factory=dict)

    def of_layer(self, name: str) -> tuple[Tensor | None, Tensor | None]:
        """The (output, input) unit maps of a layer; None where the dimension does not grow."""
        layer = self.spaces.layers[name]
        return self.maps.get(layer.out_space), self.maps.get(layer.in_space)


def net2net_maps(net: nn.Module, spec: ArchSpec, factor: int, generator: torch.Generator,
                 *, clone: bool = False) -> Net2NetMaps:
    """Draw the unit maps: m(j) = j for the n old units, uniform over 0..n-1 for the new ones
    (``clone``: m(j) = j mod n)."""
    spec = resolve_spec(spec)
    spaces = channel_spaces(net, spec.name)
    with torch.device("meta"):
        wide = build_plain(grow_spec(spec, factor))
    small, big = space_sizes(net, spaces), space_sizes(wide, spaces)
    maps = {}
    for s in spaces.spaces():
        if s == spaces.input_space or small[s] == big[s]:
            continue
        n = small[s]
        if s == spaces.output_space or n is None or big[s] != factor * n:
            raise MgtoolError(
                f"{spec.name}: a channel space has {small[s]} channels small and "
                f"{big[s]} grown; net2net widens hidden spaces {factor}-fold only"
            )
        extra = torch.randint(0, n, ((factor - 1) * n,), generator=generator)
        maps[s] = torch.arange(n).repeat(factor) if clone else torch.cat([torch.arange(n), extra])
    return Net2NetMaps(spaces, maps)


def grow_net2net(net: nn.Module, spec: ArchSpec, factor: int, seed: int = 0, *, clone: bool = False,
                 noise: float = 0.0) -> tuple[nn.Module, Net2NetMaps]:
    """Function-preserving widening (see the module docstring); returns the model and its maps."""
    spec = resolve_spec(spec)
    generator = torch.Generator().manual_seed(seed)
    maps = net2net_maps(net, spec, factor, generator, clone=clone)
    small_sd = net.state_dict()
    wide = build_plain(grow_spec(spec, factor))
    wide_sd = wide.state_dict()
    _same_keys(small_sd, wide_sd, spec)
    done = set()
    with torch.no_grad():
        for name, layer in maps.spaces.layers.items():
            out_map, in_map = maps.of_layer(name)
            prefix = f"{name}." if name else ""
            if layer.kind == "norm":
                for t in _NORM_TENSORS:
                    key = prefix + t
                    if key in small_sd:
                        wide_sd[key].copy_(_take(small_sd[key], out_map, 0))
                        done.add(key)
                key = prefix + "num_batches_tracked"
                if key in small_sd:
                    wide_sd[key].copy_(small_sd[key])
                    done.add(key)
                continue
            weight = small_sd[prefix + "weight"]
            if in_map is not None:
                counts = torch.bincount(in_map, minlength=weight.shape[1]).to(weight.dtype)
                weight = _take(weight, in_map, 1) / _along(counts[in_map], 1, weight.ndim)
            weight = _take(weight, out_map, 0)
            if noise > 0 and in_map is not None:
                scale = float(weight.double().pow(2).mean().sqrt())
                weight = weight + zero_sum_noise(in_map, tuple(weight.shape), noise, scale, generator).to(weight.dtype)
            wide_sd[prefix + "weight"].copy_(weight)
            done.add(prefix + "weight")
            if prefix + "bias" in small_sd:
                wide_sd[prefix + "bias"].copy_(_take(small_sd[prefix + "bias"], out_map, 0))
                done.add(prefix + "bias")
    left = sorted(set(small_sd) - done)
    if left:
        raise MgtoolError(f"{spec.name}: net2net has no rule for tensors {left[:4]}")
    return wide, maps


def _take(t: Tensor, index: Tensor | None, dim: int) -> Tensor:
    return t if index is None else t.index_select(dim, index)


def _along(v: Tensor, dim: int, ndim: int) -> Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return v.view(shape)


def _same_keys(small: dict[str, Tensor], wide: dict[str, Tensor], spec: ArchSpec) -> None:
    if set(small) != set(wide):
        diff = sorted(set(small) ^ set(wide))
        raise MgtoolError(f"{spec.name}: growing changes the state-dict keys ({diff[:4]})")


# ---------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class GrowResult(VerifiedResult):
    path: Path | None
    meta: CheckpointMeta
    method: str
    factor: int
    model: nn.Module
    verify: LogitCheck | None = None  # net2net: wide vs small on a fixed batch

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "output": str(self.path) if self.path else None,
            "method": self.method,
            "factor": self.factor,
            "arch": self.meta.arch.to_dict(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if self.verify is not None:
            out["verify"] = self.verify.to_dict()
        return out


def grow(
    src: Path | str,
    out: Path | str | None,
    *,
    method: str,
    factor: int = 2,
    seed: int = 0,
    noise: float = 0.0,
    force: bool = False,
) -> GrowResult:
    """Widen a plain mgtool checkpoint by ``factor`` with a baseline ``method``.

    ``net2net`` and ``clone`` refuse to write unless the wide model's logits match the
    small one's within 1e-5 of the logit scale (eval mode, fixed batch). ``noise`` is
    their symmetry breaking: noise RMS / weight RMS (see ``archs.widening.zero_sum_noise``).
    """
    src = Path(src)
    check_choice("method", method, METHODS)
    check_range("noise", noise, low=0)
    if noise > 0 and method not in PRESERVING:
        raise MgtoolError(f"--noise applies to {' and '.join(PRESERVING)} growth, not to {method}")
    if factor < 2:
        raise SettingError("factor", f"must be at least 2, got {factor}")
    if out is not None:
        check_output_path(out, force, inputs=[src])
    meta_in = read_meta(src)
    if meta_in.kind != "plain":
        raise MgtoolError(
            f"{src}: a {meta_in.kind} checkpoint; grow takes plain checkpoints "
            "(`mgtool export` one first; template-mixing nets grow with `mgtool fuse`)"
        )
    net, _ = load_checkpoint(src)
    spec = meta_in.arch
    check = None
    widening = get_family(spec.name).widening
    if method == "random":
        wide = (widening.random if widening else grow_random)(net, spec, factor, seed)
    else:
        if widening is not None:
            wide, _ = widening.preserving(net, spec, factor, method=method, seed=seed, noise=noise)
        else:
            wide, _ = grow_net2net(net, spec, factor, seed, clone=method == "clone", noise=noise)
        check = require_preserved(compare_logits(net, wide, spec), f"{method} changed the function")
    parent = Parent(str(src), sha256_file(src), "input", meta_in.flops.training)
    meta = CheckpointMeta(
        kind="plain",
        arch=grow_spec(spec, factor),
        plan=None,
        provenance=new_provenance((parent,)),
        flops=meta_in.flops,
        data=meta_in.data,
    )
    path = save_checkpoint(out, wide.state_dict(), meta, force=force) if out is not None else None
    return GrowResult(path, meta, method, factor, wide.eval(), check)
