"""Pure tensor functions of template mixing: weight generation and exact decomposition.

A layer's weight is a grid of ``rows x cols`` tiles. Every tile in row ``r`` is a
linear combination of the templates of that row's template sets, with its own
coefficient vector. With templates ``T`` of shape ``(sets, K, *tile)`` and
coefficients of shape ``(rows, cols, M*K)`` (``M`` sets per row) the weight is

    W[r*o:(r+1)*o, c*i:(c+1)*i] = sum_k coefs[r, c, k] * T_row(r)[k]

produced by one matrix product per bank group (``mix_layers``). A small network is the 1x1 grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

RowSets = tuple[tuple[int, ...], ...]
# --mixing-kernel: auto (triton on CUDA, torch elsewhere), triton (mgtool.mixing_triton), torch (here).
MIXING_KERNELS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class MixShape:
    """The static shapes of one bank group, computed once per model, not per step.

    ``layers`` layers share a bank of ``(sets, K, *tile)`` templates and a ``rows x cols``
    grid; each row mixes ``k`` templates (its sets' K each) and each weight is
    ``(rows*out_t, cols*in_t, *rest)``.
    """

    layers: int
    rows: int
    cols: int
    k: int
    tile: tuple[int, ...]
    row_sets: RowSets
    row_interleave: int = 1

    @classmethod
    def of(cls, bank_shape: Sequence[int], layers: int, cols: int, row_sets: RowSets,
           row_interleave: int = 1) -> MixShape:
        return cls(layers, len(row_sets), cols, len(row_sets[0]) * bank_shape[1], tuple(bank_shape[2:]),
                   row_sets, row_interleave)

    @property
    def weight(self) -> tuple[int, ...]:
        out_t, in_t, *rest = self.tile
        return (self.rows * out_t, self.cols * in_t, *rest)

    @property
    def tile_numel(self) -> int:
        n = 1
        for d in self.tile:
            n *= d
        return n


def row_templates(bank: Tensor, row_sets: RowSets) -> Tensor:
    """The template stack each row mixes from, shape ``(rows, M*K, *tile)``.

    The usual layouts are views with no copy: one set per row in order
    (``((0,), (1,))``), one row over all sets (``((0, 1),)``) and every row on the
    same set (``((0,), (0,))``). Any other layout gathers (a copy, with no index tensor made
    on the host, so it is safe inside a CUDA graph).
    """
    sets, k = bank.shape[0], bank.shape[1]
    tile = bank.shape[2:]
    rows, per_row = len(row_sets), len(row_sets[0])
    flat = [s for row in row_sets for s in row]
    if flat == list(range(sets)):
        return bank.reshape(rows, per_row * k, *tile)
    if per_row == 1 and len(set(flat)) == 1:
        s = flat[0]
        return bank[s : s + 1].expand(rows, k, *tile)
    return torch.cat([bank[s] for s in flat]).reshape(rows, per_row * k, *tile)


def mix(bank: Tensor, coefficients: Tensor, row_sets: RowSets, row_interleave: int = 1) -> Tensor:
    """Generate a layer weight ``(rows*o, cols*i, *rest)`` from its bank and coefficients.

    ``row_interleave`` p > 1 splits each tile row's ``o`` output rows into p equal parts
    and lists part 0 of every tile row, then part 1, ...: a fused qkv's tile rows
    ``[q_0 k_0 v_0 | q_1 k_1 v_1]`` become timm's ``[q_0 q_1 | k_0 k_1 | v_0 v_1]`` (p = 3).

    ``coefficients`` may carry a leading layer dimension ``(L, rows, cols, K)``: the result
    is then ``(L, *weight)`` (stacked, a copy; models use ``mix_layers``, which is not).
    """
    if coefficients.dim() == 4:
        return torch.stack(mix_layers(bank, coefficients.unbind(0), row_sets, row_interleave))
    return mix_layers(bank, (coefficients,), row_sets, row_interleave)[0]


def mix_layers(bank: Tensor, coefficients: Sequence[Tensor], row_sets: RowSets,
               row_interleave: int = 1) -> tuple[Tensor, ...]:
    """The weights of layers that share a bank and a grid, from their coefficients
    ``(rows, cols, K)`` each: one matrix product makes all of them, and the backward pass
    writes the bank's gradient once, not once per layer."""
    shape = MixShape.of(bank.shape, len(coefficients), coefficients[0].shape[1], row_sets, row_interleave)
    return mix_group(bank, coefficients, shape)


def mix_group(bank: Tensor, coefficients: Sequence[Tensor], shape: MixShape) -> tuple[Tensor, ...]:
    """``mix_layers`` with the group's shapes computed beforehand (``TemplateMixingNet`` does
    this once), so a step does no shape work in Python."""
    templates = row_templates(bank, shape.row_sets)
    if torch.jit.is_tracing():  # FLOP counters trace the model; they see an einsum, not a Python op
        weight = torch.einsum("lrck,rkoi...->lroci...", torch.stack(tuple(coefficients)), templates)
        weights = tuple(weight.reshape(len(coefficients), *shape.weight).unbind(0))
    else:
        weights = _Mix.apply(shape, templates, *coefficients)
    if shape.row_interleave > 1:
        weights = tuple(interleave_rows(w, shape) for w in weights)
    return weights


def interleave_rows(weight: Tensor, shape: MixShape) -> Tensor:
    """Tile rows ``[q_0 k_0 v_0 | q_1 k_1 v_1]`` listed part by part: ``[q_0 q_1 | k_0 k_1 | v_0 v_1]``."""
    parts, out_t = shape.row_interleave, shape.tile[0]
    return (weight.unflatten(0, (shape.rows, parts, out_t // parts)).transpose(0, 1)
            .reshape(shape.weight))


# The coefficient gradient is a product with a tiny output ``(L*cols, K)`` and a long
# reduction over every weight value. Splitting that reduction into batches (``reduce_product``
# with a chunk) was meant to spread it over more GPU blocks, but on an H200 the single product
# is faster (WRN-28-10 step 22.6 ms vs 25.5 ms, bench/gpu_profile.py), so it is off (None).
REDUCTION_CHUNK: int | None = None


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled, entered only where it is on (entering costs more than the small ops)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _Mix(torch.autograd.Function):
    """``W_l[r*o, c*i] = sum_k C_l[r, c, k] T[r, k, o, i]`` for each layer l, as one (batched)
    matrix product.

    One output per layer, so that each layer's weight gradient arrives on its own: a single
    ``(L, *weight)`` output split into per-layer views would make autograd scatter every
    layer's gradient into a zero tensor of all L weights and add them up (about 14 weight-sized
    memory passes per group on the CPU). Forward and backward are each one ``bmm`` per
    direction; for 1x1 grids the weights are views of the product, no copy. ``torch.einsum``
    computes the same product but, for these shapes, permutes its operands into slower
    kernels. Runs in the templates' dtype with autocast off: generated weights are the fp32
    values a plain model's weights would be, and the layer's own autocast casts them as it
    casts a plain weight.
    """

    @staticmethod
    def forward(ctx, shape: MixShape, templates: Tensor, *coefs: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        with _autocast_off(templates.device.type):
            rows, k, cols, layers = shape.rows, shape.k, shape.cols, shape.layers
            out_t, in_t, *rest = shape.tile
            flat_t = templates.reshape(rows, k, -1)
            stacked = coefs[0].unsqueeze(0) if layers == 1 else torch.stack(coefs)
            flat_c = stacked.to(templates.dtype).transpose(0, 1).reshape(rows, layers * cols, k)
            product = torch.bmm(flat_c, flat_t).view(rows, layers, cols, out_t, in_t, *rest)
            if rows == 1 and cols == 1:
                weights = tuple(product[0, :, 0].unbind(0))
            else:
                weights = tuple(w.transpose(1, 2).reshape(rows * out_t, cols * in_t, *rest)
                                for w in product.unbind(1))
        ctx.save_for_backward(flat_t, flat_c)
        ctx.shape = shape
        ctx.coef_dtype = coefs[0].dtype
        return weights

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        flat_t, flat_c = ctx.saved_tensors
        shape = ctx.shape
        rows, cols, layers, (out_t, in_t, *rest) = shape.rows, shape.cols, shape.layers, shape.tile
        need_t, need_c = ctx.needs_input_grad[1], any(ctx.needs_input_grad[2:])
        with _autocast_off(flat_t.device.type):
            per_layer = [g.to(flat_t.dtype).reshape(rows, out_t, cols, in_t, *rest).transpose(1, 2)
                         .reshape(rows, cols, -1) for g in grads]
            flat_g = per_layer[0] if layers == 1 else torch.stack(per_layer, 1).view(rows, layers * cols, -1)
            grad_t = grad_c = None
            if need_t:
                grad_t = torch.bmm(flat_c.transpose(1, 2), flat_g).view(rows, -1, out_t, in_t, *rest)
            if need_c:
                chunk = REDUCTION_CHUNK if flat_g.is_cuda else None
                grad_c = reduce_product(flat_g, flat_t, chunk)  # (rows, L*cols, K)
                grad_c = grad_c.view(rows, layers, cols, -1).transpose(0, 1).to(ctx.coef_dtype).unbind(0)
        return (None, grad_t, *(grad_c if grad_c is not None else (None,) * layers))


def reduce_product(a: Tensor, b: Tensor, chunk: int | None = None) -> Tensor:
    """``a @ b^T`` for ``a (R, m, N)`` and ``b (R, k, N)`` with tiny m, k and long N.

    With ``chunk``, N is cut into batches of ``chunk`` values whose partial products are
    summed (and any remainder added), so that the GPU runs one block per batch.
    """
    n = a.shape[-1]
    if chunk is None or n < 4 * chunk:
        return torch.bmm(a, b.transpose(1, 2))
    pieces, head = n // chunk, (n // chunk) * chunk
    parts = []
    for r in range(a.shape[0]):  # 1 for a small net's 1x1 grids, g rows for a grown net
        ar = a[r, :, :head].unflatten(-1, (pieces, chunk)).transpose(0, 1)  # (S, m, chunk)
        br = b[r, :, :head].unflatten(-1, (pieces, chunk)).transpose(0, 1)  # (S, k, chunk)
        part = torch.bmm(ar, br.transpose(1, 2)).sum(0)
        if head < n:
            part = part + a[r, :, head:] @ b[r, :, head:].T
        parts.append(part)
    return torch.stack(parts)


def orthonormal_rows(n: int, dim: int, generator: torch.Generator) -> Tensor:
    """``n`` orthonormal vectors of length ``dim`` (n <= dim), float64, from a random QR."""
    if n > dim:
        raise ValueError(f"cannot make {n} orthonormal vectors in dimension {dim}")
    gauss = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar-uniform, not QR-biased
    return q.T[:n].contiguous()


def decompose(
    weights: Sequence[Tensor], templates_per_layer: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Exact template decomposition of layers that share one bank.

    Returns ``(templates, coefficients)`` with templates ``(L*t, *tile)`` and
    coefficients ``(L, L*t)`` such that ``coefficients[l] @ templates == weights[l]``.
    The coefficient vectors are orthonormal and ``T = A^T W + (I - A^T A) N`` with
    ``N`` Gaussian noise at the weights' scale: ``A T = W`` exactly, while the
    templates span more than the weights alone (they stay diverse to train from).
    Computed in float64 and returned in the weights' dtype.
    """
    tile = weights[0].shape
    if any(w.shape != tile for w in weights):
        raise ValueError("layers sharing a bank must have one weight shape")
    n_layers = len(weights)
    k = n_layers * templates_per_layer
    w = torch.stack([x.detach().to(torch.float64).reshape(-1) for x in weights])
    a = orthonormal_rows(n_layers, k, generator)
    scale = w.std().clamp_min(1e-12) if w.numel() > 1 else w.abs().mean().clamp_min(1e-12)
    noise = torch.randn(k, w.shape[1], generator=generator, dtype=torch.float64) * scale
    templates = a.T @ w + noise - a.T @ (a @ noise)
    dtype = weights[0].dtype
    return templates.reshape(k, *tile).to(dtype), a.to(dtype)
