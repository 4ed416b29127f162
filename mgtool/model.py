"""``TemplateMixingNet``: a plain architecture whose Conv2d/Linear weights are generated.

The wrapped ``net`` is the family's own module tree with the ``weight`` parameter of
every mixed layer removed; each such layer instead carries a ``coefficients``
parameter ``(rows, cols, K)``, and the templates live in ``banks`` (one parameter per
bank, shared by its layers). ``forward`` generates every weight with one einsum per
layer and then runs the plain forward, so state-dict keys other than weights keep
the family's names (``net.<layer>.coefficients``, ``banks.<bank>``, ``net.<bn>...``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mgtool.errors import MgtoolError
from mgtool.mixing import mix
from mgtool.plan import TemplatePlan, mixable_layers


class TemplateMixingNet(nn.Module):
    def __init__(self, net: nn.Module, plan: TemplatePlan):
        super().__init__()
        plan.validate()
        self.plan = plan
        self.net = net
        self.banks = nn.ParameterDict(
            {b.name: nn.Parameter(torch.zeros(b.shape)) for b in plan.banks}
        )
        modules = dict(mixable_layers(net))
        planned = {layer.name for layer in plan.layers}
        unplanned = sorted(set(modules) - planned)
        absent = sorted(planned - set(modules))
        if unplanned or absent:
            raise MgtoolError(
                f"template plan does not match the architecture: layers without a plan "
                f"{unplanned[:5]}, planned layers not in the model {absent[:5]}"
            )
        self._mixed: list[tuple[nn.Module, str, tuple[tuple[int, ...], ...]]] = []
        for layer in plan.layers:
            module = modules[layer.name]
            expected = plan.weight_shape(layer)
            if tuple(module.weight.shape) != expected:
                raise MgtoolError(
                    f"layer {layer.name}: plan gives weight shape {expected}, "
                    f"architecture has {tuple(module.weight.shape)}"
                )
            del module._parameters["weight"]
            module.register_parameter(
                "coefficients", nn.Parameter(torch.zeros(plan.coefficient_shape(layer)))
            )
            self._mixed.append((module, layer.bank, layer.row_sets))

    def generate_weights(self) -> None:
        """Set every mixed layer's ``weight`` (a plain tensor attribute) from its templates."""
        for module, bank, row_sets in self._mixed:
            module.weight = mix(self.banks[bank], module.coefficients, row_sets)

    def forward(self, x: Tensor) -> Tensor:
        self.generate_weights()
        return self.net(x)

    @torch.no_grad()
    def materialised_state_dict(self) -> dict[str, Tensor]:
        """The plain state dict with the family's key names: generated weights, no templates."""
        self.generate_weights()
        names = {id(module): name for name, module in self.net.named_modules()}
        out = {
            k: v.detach().clone()
            for k, v in self.net.state_dict().items()
            if not k.endswith(".coefficients")
        }
        for module, _, _ in self._mixed:
            out[f"{names[id(module)]}.weight"] = module.weight.detach().clone()
        return out

    def template_parameters(self) -> int:
        return sum(p.numel() for p in self.banks.values())

    def coefficient_parameters(self) -> int:
        return sum(module.coefficients.numel() for module, _, _ in self._mixed)
