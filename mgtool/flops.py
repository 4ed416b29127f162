"""FLOPs counting with fvcore (one FLOP per multiply-add, as the paper reports)."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
from torch import nn

TRAINING_MULTIPLIER = 3  # forward + backward ~= 3x forward


def sdpa_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention`` (timm's fused attention), which
    fvcore does not count: ``q @ k^T`` and ``attn @ v``, one FLOP per multiply-add (softmax,
    scaling and masking are not counted, as fvcore counts no element-wise op)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def forward_flops(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1) -> float:
    """Forward FLOPs per sample of ``model`` at ``input_shape`` (C, H, W), counted by fvcore.

    For a template-mixing model the weight generation runs once per batch, so the
    per-sample figure includes its cost divided by ``batch_size``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(batch_size, *input_shape, device=device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, x)
            analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flops)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            logging.getLogger("fvcore").setLevel(logging.ERROR)
            total = float(analysis.total())
    finally:
        model.train(was_training)
    return total / batch_size


def training_flops_per_sample(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> float:
    return TRAINING_MULTIPLIER * forward_flops(model, input_shape, batch_size)


def flops_per_training_sample(model: nn.Module, shape: tuple[int, ...], batch_size: int) -> float:
    """``training_flops_per_sample`` at ``batch_size``, counted at batch 1 and 2 only.

    fvcore's count is ``batch * net + generation``, so two small traces give both parts
    exactly without tracing a full batch.
    """
    one = training_flops_per_sample(model, shape, 1)
    two = training_flops_per_sample(model, shape, 2)
    generation = 2.0 * (one - two)
    return (one - generation) + generation / batch_size
