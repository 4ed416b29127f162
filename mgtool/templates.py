"""Template-mixing nets from plain ones: exact conversion, and fresh nets for training."""

from __future__ import annotations

import torch
from torch import nn

from mgtool.archs import ArchSpec, build_plain
from mgtool.mixing import decompose
from mgtool.model import TemplateMixingNet
from mgtool.plan import make_plan


def to_template_mixing(
    net: nn.Module, *, templates: int = 2, share: str = "pairs", seed: int = 0
) -> TemplateMixingNet:
    """Wrap a plain network (consumed) so it generates exactly its current weights.

    Every bank's coefficient vectors are orthonormal and its templates are
    ``A^T W + (I - A^T A) N`` (see ``mixing.decompose``), so templates are diverse.
    Templates and coefficients take the dtype of the net's weights (float64 stays float64).
    """
    plan = make_plan(net, templates, share)
    modules = dict(net.named_modules())
    weights = {layer.name: modules[layer.name].weight.detach().clone() for layer in plan.layers}
    dtype = next(iter(weights.values())).dtype if weights else torch.float32
    tm = TemplateMixingNet(net, plan)
    tm.banks.to(dtype)
    for layer in plan.layers:
        modules[layer.name].to(dtype)  # its coefficients (and its own tensors, already this dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bank in plan.banks:
            layers = plan.layers_of(bank.name)
            bank_templates, coefs = decompose([weights[la.name] for la in layers], templates, generator)
            tm.banks[bank.name].copy_(bank_templates.unsqueeze(0))
            for layer, row in zip(layers, coefs):
                modules[layer.name].coefficients.copy_(row.view(1, 1, -1))
    return tm


def fresh_template_mixing(spec: ArchSpec, *, templates: int = 2, share: str = "pairs",
                          seed: int = 0) -> TemplateMixingNet:
    """A new template-mixing net whose generated weights are the family's own init."""
    torch.manual_seed(seed)
    return to_template_mixing(build_plain(spec), templates=templates, share=share, seed=seed)
