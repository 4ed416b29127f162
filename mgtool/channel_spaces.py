"""Channel spaces of a network, read off its torch.fx graph (for function-preserving widening).

A channel space is a set of feature channels that must be widened with one unit
mapping. Every Conv2d/Linear starts a new space on its output; BatchNorm,
activations, pooling, dropout and flatten keep the space of their input; adding two
tensors (a residual connection) makes their spaces one. So in a ResNet the whole
residual stream of a stage, every projection shortcut into it and every block
output added to it is one space, without naming any layer.

Operations that could mix or reorder channels in other ways (concatenation,
reshapes, attention, ...) are refused, so a family this module cannot describe fails
loudly instead of being widened wrongly.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from mgtool.errors import MgtoolError, first_line

_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
)
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASS_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.dropout,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.avg_pool2d,
    F.max_pool2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.flatten,
}
_PASS_METHODS = {"relu", "relu_", "flatten", "contiguous", "sigmoid", "tanh"}
_JOIN_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
}
_JOIN_METHODS = {"add", "add_", "sub", "mul", "mul_"}


@dataclass(frozen=True)
class LayerSpaces:
    """The channel spaces a module with parameters reads and writes (the same for a norm)."""

    kind: str  # "conv", "linear" or "norm"
    out_space: int
    in_space: int


@dataclass(frozen=True)
class ChannelSpaces:
    layers: dict[str, LayerSpaces]  # module name -> spaces
    input_space: int
    output_space: int

    def spaces(self) -> list[int]:
        found = {self.input_space, self.output_space}
        for layer in self.layers.values():
            found.update((layer.out_space, layer.in_space))
        return sorted(found)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


def channel_spaces(model: nn.Module, name: str = "model") -> ChannelSpaces:
    """Trace ``model`` (no forward pass is run) and group its channels into spaces."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:
        raise MgtoolError(
            f"{name}: cannot trace the model with torch.fx ({type(e).__name__}: {first_line(e)})"
        ) from None
    modules = dict(model.named_modules())
    sets = _UnionFind()
    space: dict[fx.Node, int] = {}
    layers: dict[str, tuple[str, int, int]] = {}
    input_space = output_space = None

    def of(arg: object) -> int:
        if not isinstance(arg, fx.Node) or arg not in space:
            raise MgtoolError(f"{name}: operation {node.format_node()} reads a value without a channel space")
        return space[arg]

    for node in graph.nodes:
        if node.op == "placeholder":
            if input_space is not None:
                raise MgtoolError(f"{name}: models with more than one input are not supported")
            input_space = space[node] = sets.new()
        elif node.op == "get_attr":
            raise MgtoolError(f"{name}: the forward pass reads the tensor {node.target} directly; unsupported")
        elif node.op == "call_module":
            module = modules[str(node.target)]
            source = of(node.args[0])
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if str(node.target) in layers:
                    raise MgtoolError(f"{name}: layer {node.target} is called twice; unsupported")
                out = sets.new()
                kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
                layers[str(node.target)] = (kind, out, source)
                space[node] = out
            elif isinstance(module, _NORM_MODULES):
                layers[str(node.target)] = ("norm", source, source)
                space[node] = source
            elif isinstance(module, _PASS_MODULES):
                space[node] = source
            else:
                raise MgtoolError(
                    f"{name}: module {node.target} ({type(module).__name__}) is not one "
                    "whose effect on channels is known; cannot widen it"
                )
        elif node.op in ("call_function", "call_method"):
            target = node.target
            tensors = [a for a in node.args if isinstance(a, fx.Node)]
            joins = target in _JOIN_FUNCTIONS if node.op == "call_function" else target in _JOIN_METHODS
            passes = target in _PASS_FUNCTIONS if node.op == "call_function" else target in _PASS_METHODS
            if joins and tensors:
                root = of(tensors[0])
                for other in tensors[1:]:
                    root = sets.join(root, of(other))
                space[node] = root
            elif passes and tensors:
                space[node] = of(tensors[0])
            else:
                what = getattr(target, "__name__", str(target))
                raise MgtoolError(
                    f"{name}: operation {what} is not one whose effect on channels is known; cannot widen the model"
                )
        elif node.op == "output":
            output_space = of(node.args[0])
    if input_space is None or output_space is None:
        raise MgtoolError(f"{name}: the traced graph has no input or no output")
    return ChannelSpaces(
        layers={k: LayerSpaces(kind, sets.find(o), sets.find(i)) for k, (kind, o, i) in layers.items()},
        input_space=sets.find(input_space),
        output_space=sets.find(output_space),
    )


def space_sizes(model: nn.Module, spaces: ChannelSpaces) -> dict[int, int | None]:
    """Channels of every space in ``model`` (a model with the traced one's structure).

    ``None`` for the input space when no layer reads it channel by channel. A space
    whose members disagree (e.g. a Linear reading a flattened feature map) is refused.
    """
    modules = dict(model.named_modules())
    sizes: dict[int, int | None] = {s: None for s in spaces.spaces()}
    for name, layer in spaces.layers.items():
        module = modules[name]
        if layer.kind == "norm":
            dims = [(layer.out_space, module.num_features)]
        else:
            dims = [(layer.out_space, module.weight.shape[0]), (layer.in_space, module.weight.shape[1])]
        for s, n in dims:
            if sizes[s] is None:
                sizes[s] = int(n)
            elif sizes[s] != int(n) and s != spaces.input_space:
                raise MgtoolError(
                    f"layer {name} sees {n} channels where another layer of its channel "
                    f"space sees {sizes[s]} (a flattened feature map?); cannot widen it"
                )
    return sizes
