"""Evaluation: loss, top-1 and top-5 over a split, under DDP too; the model/data fit check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mgtool.data import DataConfig, eval_batches
from mgtool.errors import MgtoolError, check_choice, first_line
from mgtool.train.distributed import DistEnv, all_reduce_sum

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class EvalResult:
    loss: float
    top1: float
    top5: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "samples": self.samples}


def resolve_precision(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bf16."""
    check_choice("precision", precision, PRECISIONS)
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, data: DataConfig, *, split: str = "test", limit: int | None = None,
             batch_size: int = 256, device: torch.device | str = "cpu", env: DistEnv | None = None,
             bf16: bool = False, channels_last: bool = False, workers: int | None = None,
             finite: bool = False) -> EvalResult:
    """Loss, top-1 and top-5 over ``split`` (each DDP process takes a share; sums are reduced).

    ``finite``: a NaN or Inf logit is an error naming the first layer whose output is not finite
    (the trainer checks the loss itself and keeps its own message)."""
    env = env or DistEnv()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for x, y in eval_batches(data, split, limit, batch_size, device, rank=env.rank, world=env.world,
                             workers=workers, channels_last=channels_last):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        logits = logits.float()
        if finite and not bool(torch.isfinite(logits).all()):
            where = first_nonfinite_output(model, x, bf16)  # still in eval mode
            model.train(was_training)
            raise MgtoolError(f"the model's logits are not finite on {data.name} {split} images (first at "
                              f"{where}); no accuracy is reported from NaN; check the checkpoint (e.g. its "
                              "BatchNorm running_var or --init-scale)")
        k = min(5, logits.shape[1])
        hit = logits.topk(k, dim=1).indices == y[:, None]
        sums[:3] += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 hit[:, 0].sum().double(), hit.any(1).sum().double()])
        sums[3] += y.numel()  # a scalar, not a tensor built on the host: no blocking copy per batch
    all_reduce_sum(sums)
    model.train(was_training)
    loss, top1, top5, n = sums.tolist()
    if n == 0:
        raise MgtoolError(f"{data.name}: the {split} split is empty")
    return EvalResult(loss / n, top1 / n, top5 / n, int(n))


@torch.no_grad()
def first_nonfinite_output(model: nn.Module, x: torch.Tensor, bf16: bool = False) -> str:
    """The name of the first module (in execution order) whose output holds NaN or Inf."""
    names = {m: name for name, m in model.named_modules()}
    found: list[str] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if not found and isinstance(output, torch.Tensor) and output.is_floating_point() \
                and not bool(torch.isfinite(output).all()):
            found.append(f"layer {names[module] or 'the model'} ({type(module).__name__})")

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else "the logits"


def check_model_fits(model: nn.Module, what: str, data: DataConfig, shape: tuple[int, int, int],
                     classes: int) -> None:
    """One tiny forward pass: the model takes the data set's images and gives one logit per class."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            y = model(torch.zeros(2, *shape, device=device))
    except RuntimeError as e:
        raise MgtoolError(f"{what} does not accept {data.name} images of shape "
                          f"{'x'.join(map(str, shape))} ({first_line(e, 160)})") from None
    finally:
        model.train(was_training)
    if y.ndim != 2 or y.shape[1] != classes:
        raise MgtoolError(f"the model has {y.shape[-1]} outputs but {data.name} has {classes} classes; "
                          "pass --num-classes to train-small, or use a checkpoint made for this data set")
