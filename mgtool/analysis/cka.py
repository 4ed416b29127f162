"""Linear Centered Kernel Alignment (Kornblith et al., ICML 2019).

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels K = X X^T, L = Y Y^T.

Two estimators:

* ``linear_cka``: the full estimator on all n samples at once, with the biased HSIC
  ``tr(K H L H) / (n - 1)^2`` (the normalisation cancels in the ratio). Memory O(n d).
* ``MinibatchCKA``: the minibatch estimator of Nguyen, Raghu & Kornblith (ICLR 2021):
  HSIC is estimated on each batch with the unbiased estimator of Song et al. (JMLR 2012)
  and averaged over batches before taking the ratio. Memory O(b^2) per layer for batch
  size b, whatever the number of samples. Being unbiased per batch, it converges to the
  same population value as the full estimator, without the full estimator's upward bias
  for wide layers and few samples.

All arithmetic is float64: the unbiased estimator subtracts large, nearly equal terms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mgtool.errors import MgtoolError

MIN_BATCH = 4  # the unbiased HSIC divides by n (n - 3)


def flatten(x: Tensor) -> Tensor:
    """``(n, ...)`` activations -> ``(n, d)`` float64 feature matrix."""
    return x.reshape(x.shape[0], -1).to(torch.float64)


def gram(x: Tensor) -> Tensor:
    """The linear kernel ``X X^T`` (n x n, float64) of ``(n, ...)`` activations.

    The features are centred first: neither estimator changes (the unbiased HSIC removes
    row and column means itself), and the later subtractions lose fewer digits.
    """
    f = flatten(x)
    f = f - f.mean(0, keepdim=True)
    return f @ f.T


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Full-sample linear CKA of two representations of the same n samples.

    Computed in feature space, ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``, or with
    centred Gram matrices when n is smaller than the feature counts (the same number).
    NaN when either representation is constant over the samples.
    """
    if x.shape[0] != y.shape[0]:
        raise MgtoolError(f"CKA needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]}")
    fx, fy = flatten(x), flatten(y)
    fx = fx - fx.mean(0, keepdim=True)
    fy = fy - fy.mean(0, keepdim=True)
    n = fx.shape[0]
    if n <= min(fx.shape[1], fy.shape[1]):
        k, l_ = fx @ fx.T, fy @ fy.T
        xy, xx, yy = (k * l_).sum(), (k * k).sum(), (l_ * l_).sum()
    else:
        xy = (fy.T @ fx).square().sum()
        xx = (fx.T @ fx).square().sum()
        yy = (fy.T @ fy).square().sum()
    return _ratio(float(xy), float(xx), float(yy))


def unbiased_hsic(k: Tensor, l_: Tensor) -> float:
    """The unbiased HSIC estimator of Song et al. (2012) for two n x n kernel matrices.

    With K~, L~ the kernels with zeroed diagonals:
    ``[tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3))``.
    """
    terms_k, terms_l = _hsic_terms(k.unsqueeze(0)), _hsic_terms(l_.unsqueeze(0))
    return float(_cross_hsic(terms_k, terms_l, k.shape[0])[0, 0])


class MinibatchCKA:
    """Accumulates the minibatch linear CKA between p and q representations over batches.

    ``update`` takes the Gram matrices of one batch, ``(p, b, b)`` and ``(q, b, b)``,
    computed on the same b samples; ``compute`` returns the ``(p, q)`` CKA matrix
    ``mean_i HSIC1(K_i, L_i) / sqrt(mean_i HSIC1(K_i, K_i) mean_i HSIC1(L_i, L_i))``.
    Batches may differ in size (each must have at least 4 samples); every batch
    counts equally, as in Nguyen et al.
    """

    def __init__(self) -> None:
        self.batches = 0
        self.samples = 0
        self._xy: Tensor | None = None
        self._xx: Tensor | None = None
        self._yy: Tensor | None = None

    def update(self, grams_x: Tensor, grams_y: Tensor) -> None:
        if grams_x.ndim != 3 or grams_y.ndim != 3:
            raise ValueError("update expects stacked Gram matrices of shape (layers, b, b)")
        n = grams_x.shape[-1]
        if grams_y.shape[-1] != n or grams_x.shape[-2] != n or grams_y.shape[-2] != n:
            raise MgtoolError(
                f"Gram matrices of one batch disagree in size: {tuple(grams_x.shape)} vs {tuple(grams_y.shape)}"
            )
        if n < MIN_BATCH:
            raise MgtoolError(f"the unbiased HSIC estimator needs batches of at least {MIN_BATCH} samples, got {n}")
        tx, ty = _hsic_terms(grams_x), _hsic_terms(grams_y)
        xy = _cross_hsic(tx, ty, n)
        xx = _self_hsic(tx, n)
        yy = _self_hsic(ty, n)
        if self._xy is None:
            self._xy, self._xx, self._yy = xy, xx, yy
        else:
            if self._xy.shape != xy.shape:
                raise ValueError(f"layer counts changed between batches: {tuple(self._xy.shape)} vs {tuple(xy.shape)}")
            self._xy += xy
            self._xx += xx
            self._yy += yy
        self.batches += 1
        self.samples += n

    def compute(self) -> Tensor:
        """The ``(p, q)`` CKA matrix (float64, NaN where a representation is constant)."""
        if self._xy is None or self._xx is None or self._yy is None:
            raise MgtoolError("no batches were accumulated; CKA needs at least one batch of 4 samples")
        denominator = torch.sqrt(torch.outer(self._xx, self._yy).clamp_min(0.0))
        out = self._xy / denominator
        return torch.where(denominator > 0, out, torch.full_like(out, math.nan))


def minibatch_linear_cka(x: Tensor, y: Tensor, batch_size: int) -> float:
    """The minibatch estimator over consecutive batches of x and y (a convenience for one pair)."""
    acc = MinibatchCKA()
    n = x.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if stop - start < MIN_BATCH:
            break
        acc.update(gram(x[start:stop]).unsqueeze(0), gram(y[start:stop]).unsqueeze(0))
    return float(acc.compute()[0, 0])


def _hsic_terms(grams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per kernel: the zero-diagonal kernel flattened ``(p, b*b)``, its row sums ``(p, b)``
    and its total ``(p,)``: everything the unbiased estimator needs."""
    g = grams.to(torch.float64, copy=True)
    g.diagonal(dim1=-2, dim2=-1).zero_()
    rows = g.sum(-1)
    return g.flatten(1), rows, rows.sum(-1)


def _cross_hsic(tx: tuple[Tensor, Tensor, Tensor], ty: tuple[Tensor, Tensor, Tensor], n: int) -> Tensor:
    (fx, rx, sx), (fy, ry, sy) = tx, ty
    trace = fx @ fy.T  # tr(K~ L~) for symmetric kernels
    value = trace + torch.outer(sx, sy) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rx @ ry.T)
    return value / (n * (n - 3))


def _self_hsic(t: tuple[Tensor, Tensor, Tensor], n: int) -> Tensor:
    f, r, s = t
    trace = torch.linalg.vecdot(f, f)
    value = trace + s.square() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * torch.linalg.vecdot(r, r)
    return value / (n * (n - 3))


def _ratio(xy: float, xx: float, yy: float) -> float:
    denominator = math.sqrt(max(xx, 0.0) * max(yy, 0.0))
    return xy / denominator if denominator > 0 else math.nan
