"""Devices and DDP: the process group comes from torchrun's environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mgtool.errors import MgtoolError, SettingError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def env_from_environ() -> DistEnv:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (a single process otherwise)."""
    try:
        return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise MgtoolError("RANK, WORLD_SIZE or LOCAL_RANK is not an integer; launch with torchrun") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU if CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MgtoolError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name != "cpu":
        raise SettingError("device", f"must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device("cpu")


def init_distributed(device_name: str) -> tuple[DistEnv, torch.device, bool]:
    """(env, device, whether this call started the process group)."""
    env = env_from_environ()
    device = resolve_device(device_name, env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = False
    if env.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return env, device, started


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: torch.Tensor) -> bool:
    """True if ``flag`` (a bool/0-1 tensor) is set on any process."""
    value = flag.to(torch.float32).reshape(1)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
