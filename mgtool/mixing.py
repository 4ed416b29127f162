"""Pure tensor functions of template mixing: weight generation and exact decomposition.

A layer's weight is a grid of ``rows x cols`` tiles. Every tile in row ``r`` is a
linear combination of the templates of that row's template sets, with its own
coefficient vector. With templates ``T`` of shape ``(sets, K, *tile)`` and
coefficients of shape ``(rows, cols, M*K)`` (``M`` sets per row) the weight is

    W[r*o:(r+1)*o, c*i:(c+1)*i] = sum_k coefs[r, c, k] * T_row(r)[k]

produced by one matrix product per bank group (``_Mix``). A small network is the 1x1 grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

RowSets = tuple[tuple[int, ...], ...]


def row_templates(bank: Tensor, row_sets: RowSets) -> Tensor:
    """The template stack each row mixes from, shape ``(rows, M*K, *tile)``.

    The usual layouts are views with no copy: one set per row in order
    (``((0,), (1,))``), one row over all sets (``((0, 1),)``) and every row on the
    same set (``((0,), (0,))``). Any other layout gathers (a copy).
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
    index = torch.tensor(flat, device=bank.device)
    return bank.index_select(0, index).reshape(rows, per_row * k, *tile)


def mix(bank: Tensor, coefficients: Tensor, row_sets: RowSets, row_interleave: int = 1) -> Tensor:
    """Generate a layer weight ``(rows*o, cols*i, *rest)`` from its bank and coefficients.

    ``row_interleave`` p > 1 splits each tile row's ``o`` output rows into p equal parts
    and lists part 0 of every tile row, then part 1, ...: a fused qkv's tile rows
    ``[q_0 k_0 v_0 | q_1 k_1 v_1]`` become timm's ``[q_0 q_1 | k_0 k_1 | v_0 v_1]`` (p = 3).

    ``coefficients`` may carry a leading layer dimension ``(L, rows, cols, K)`` for layers
    that share the bank and the grid: then one product makes all L weights, ``(L, *weight)``,
    and the backward pass writes the bank's gradient once instead of once per layer.
    """
    templates = row_templates(bank, row_sets)
    batched = coefficients.dim() == 4
    coefs = coefficients if batched else coefficients.unsqueeze(0)
    layers, rows, cols = coefs.shape[:3]
    out_t, in_t, *rest = templates.shape[2:]
    if torch.jit.is_tracing():  # FLOP counters trace the model; they see an einsum, not a Python op
        weight = torch.einsum("lrck,rkoi...->lroci...", coefs, templates)
        weight = weight.reshape(layers, rows * out_t, cols * in_t, *rest)
    else:
        weight = _Mix.apply(templates, coefs)
    if row_interleave > 1:
        weight = weight.unflatten(1, (rows, row_interleave, out_t // row_interleave)).transpose(1, 2)
        weight = weight.reshape(layers, rows * out_t, cols * in_t, *rest)
    return weight if batched else weight[0]


# The coefficient gradient is a product with a tiny output ``(L*cols, K)`` and a long
# reduction over every weight value. Splitting that reduction into batches (``reduce_product``
# with a chunk) was meant to spread it over more GPU blocks, but on an H200 the single product
# is faster (WRN-28-10 step 22.6 ms vs 25.5 ms, bench/gpu_profile.py), so it is off (None).
REDUCTION_CHUNK: int | None = None


class _Mix(torch.autograd.Function):
    """``W[l, r*o, c*i] = sum_k C[l, r, c, k] T[r, k, o, i]`` as one (batched) matrix product.

    Forward and backward are each one ``bmm`` per direction (``mm`` for 1x1 grids, whose
    weights are then views of the product, no copy). ``torch.einsum`` computes the same
    product but, for these shapes, permutes its operands into slower kernels. Runs in the
    templates' dtype with autocast off: generated weights are the fp32 values a plain
    model's weights would be, and the layer's own autocast casts them as it casts a plain
    weight.
    """

    @staticmethod
    def forward(ctx, templates: Tensor, coefs: Tensor) -> Tensor:  # type: ignore[override]
        with torch.autocast(templates.device.type, enabled=False):
            rows, k, out_t, in_t, *rest = templates.shape
            layers, _, cols, _ = coefs.shape
            flat_t = templates.reshape(rows, k, -1)
            flat_c = coefs.to(templates.dtype).transpose(0, 1).reshape(rows, layers * cols, k)
            product = torch.bmm(flat_c, flat_t)  # (rows, L*cols, o*i*rest)
            if rows == 1 and cols == 1:
                weight = product.view(layers, out_t, in_t, *rest)
            else:
                weight = (product.view(rows, layers, cols, out_t, in_t, *rest)
                          .transpose(0, 1).transpose(2, 3)
                          .reshape(layers, rows * out_t, cols * in_t, *rest))
        ctx.save_for_backward(flat_t, flat_c)
        ctx.grid = (rows, cols, layers, out_t, in_t, tuple(rest))
        ctx.coef_dtype = coefs.dtype
        return weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        flat_t, flat_c = ctx.saved_tensors
        rows, cols, layers, out_t, in_t, rest = ctx.grid
        need_t, need_c = ctx.needs_input_grad[:2]
        with torch.autocast(flat_t.device.type, enabled=False):
            grad = grad.to(flat_t.dtype)
            if rows == 1 and cols == 1:
                flat_g = grad.reshape(1, layers, -1)
            else:
                flat_g = (grad.reshape(layers, rows, out_t, cols, in_t, *rest)
                          .transpose(0, 1).transpose(2, 3).reshape(rows, layers * cols, -1))
            grad_t = grad_c = None
            if need_t:
                grad_t = torch.bmm(flat_c.transpose(1, 2), flat_g).view(rows, -1, out_t, in_t, *rest)
            if need_c:
                chunk = REDUCTION_CHUNK if flat_g.is_cuda else None
                grad_c = reduce_product(flat_g, flat_t, chunk)  # (rows, L*cols, K)
                grad_c = grad_c.view(rows, layers, cols, -1).transpose(0, 1).to(ctx.coef_dtype)
        return grad_t, grad_c


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
