"""Pure tensor functions of template mixing: weight generation and exact decomposition.

A layer's weight is a grid of ``rows x cols`` tiles. Every tile in row ``r`` is a
linear combination of the templates of that row's template sets, with its own
coefficient vector. With templates ``T`` of shape ``(sets, K, *tile)`` and
coefficients of shape ``(rows, cols, M*K)`` (``M`` sets per row) the weight is

    W[r*o:(r+1)*o, c*i:(c+1)*i] = sum_k coefs[r, c, k] * T_row(r)[k]

produced by one ``einsum`` per layer. A small network is the 1x1 grid.
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
    that share the bank and the grid: then one einsum makes all L weights, ``(L, *weight)``,
    and the backward pass writes the bank's gradient once instead of once per layer.
    """
    templates = row_templates(bank, row_sets)
    batched = coefficients.dim() == 4
    coefs = coefficients if batched else coefficients.unsqueeze(0)
    layers, rows, cols = coefs.shape[:3]
    out_t, in_t, *rest = templates.shape[2:]
    weight = torch.einsum("lrck,rkoi...->lroci...", coefs, templates)
    if row_interleave > 1:
        weight = weight.unflatten(2, (row_interleave, out_t // row_interleave)).transpose(1, 2)
    weight = weight.reshape(layers, rows * out_t, cols * in_t, *rest)
    return weight if batched else weight[0]


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
