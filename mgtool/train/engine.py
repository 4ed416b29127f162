"""The one training engine under ``train-small`` and ``finetune``, and the evaluation loop.

``fit`` trains a model (plain or template-mixing) with SGD, writes OUT (a normal mgtool
checkpoint) and a resume sidecar atomically after every epoch, appends the epoch's
metrics, counts training FLOPs, stops cleanly on a non-finite loss, and runs under DDP
when launched by torchrun (only rank 0 writes).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mgtool.archs import ArchSpec
from mgtool.checkpoint import CheckpointMeta, Flops, atomic_write, check_output_path, save_checkpoint
from mgtool.data import DataConfig, dataset_info, eval_batches, normaliser, resolve_config, train_loader
from mgtool.data.loaders import seed_for
from mgtool.errors import MgtoolError, first_line
from mgtool.flops import flops_per_training_sample
from mgtool.plan import TemplatePlan
from mgtool.provenance import Parent, new_provenance
from mgtool.train.distributed import DistEnv, all_reduce_sum, any_rank, barrier, init_distributed, shutdown
from mgtool.train.paths import RunPaths, run_paths
from mgtool.train.report import Reporter
from mgtool.train.schedule import make_schedule
from mgtool.train.state import load_state, rng_state, save_state, set_rng_state

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe; every field is part of the resume fingerprint."""

    epochs: int
    batch_size: int = 128  # global: split evenly over DDP processes
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()  # in epochs, for schedule="step"
    warmup_epochs: float = 0.0
    budget: float = 1.0  # stop after this fraction of the schedule's training FLOPs
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def validate(self) -> None:
        if self.epochs < 1:
            raise MgtoolError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise MgtoolError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.budget <= 1.0:
            raise MgtoolError(f"--budget must be a fraction in (0, 1], got {self.budget:g}")
        if not 0.0 <= self.momentum < 1.0:
            raise MgtoolError(f"--momentum must be in [0, 1), got {self.momentum:g}")
        if self.weight_decay < 0:
            raise MgtoolError(f"--wd must not be negative, got {self.weight_decay:g}")


@dataclass(frozen=True)
class Runtime:
    """How to run (not what to compute): none of this enters the resume fingerprint."""

    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None = on for CUDA
    compile: bool = False
    loader: str = "auto"
    workers: int | None = None
    keep_every: int = 0
    quiet: bool = False
    eval_batch_size: int = 256
    check_every: int | None = None  # steps between non-finite checks; None = 1 on CPU, 25 on CUDA


@dataclass(frozen=True)
class Lineage:
    """What OUT says about itself besides its weights."""

    command: str
    kind: str
    arch: ArchSpec
    plan: TemplatePlan | None
    parents: tuple[Parent, ...] = ()
    inherited: Flops = field(default_factory=Flops)  # the parent's training FLOPs
    extra: dict[str, Any] = field(default_factory=dict)  # copied into meta.training


@dataclass(frozen=True)
class EvalResult:
    loss: float
    top1: float
    top5: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "samples": self.samples}


@dataclass(frozen=True)
class FitResult:
    out: Path
    meta: CheckpointMeta
    history: list[dict[str, Any]]
    wall_s: float
    is_main: bool = True  # False on DDP ranks other than 0, which print nothing

    def to_dict(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        training = self.meta.training or {}
        return {
            "output": str(self.out),
            "metrics": str(run_paths(self.out).metrics),
            "epochs_done": training.get("epochs_done"),
            "complete": training.get("complete"),
            "stopped_by_budget": training.get("stopped_by_budget"),
            "test_top1": last.get("test_top1"),
            "test_top5": last.get("test_top5"),
            "test_loss": last.get("test_loss"),
            "training_flops": self.meta.flops.training,
            "wall_s": self.wall_s,
        }


class NonFiniteLoss(Exception):
    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


def resolve_precision(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bf16."""
    if precision not in PRECISIONS:
        raise MgtoolError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, data: DataConfig, *, split: str = "test", limit: int | None = None,
             batch_size: int = 256, device: torch.device | str = "cpu", env: DistEnv | None = None,
             bf16: bool = False, channels_last: bool = False, workers: int | None = None) -> EvalResult:
    """Loss, top-1 and top-5 over ``split`` (each DDP process takes a share; sums are reduced)."""
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
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             hit[:, 0].sum().double(), hit.any(1).sum().double(),
                             torch.tensor(float(y.numel()), dtype=torch.float64, device=device)])
    all_reduce_sum(sums)
    model.train(was_training)
    loss, top1, top5, n = sums.tolist()
    if n == 0:
        raise MgtoolError(f"{data.name}: the {split} split is empty")
    return EvalResult(loss / n, top1 / n, top5 / n, int(n))


def fit(model: nn.Module, lineage: Lineage, data: DataConfig, train: TrainConfig, runtime: Runtime,
        out: Path | str, *, resume: bool = False, force: bool = False) -> FitResult:
    """Train ``model`` and write OUT; see the module docstring and README "Training"."""
    train.validate()
    if runtime.keep_every < 0:
        raise MgtoolError(f"--keep-every must not be negative, got {runtime.keep_every}")
    env, device, started = init_distributed(runtime.device)
    try:
        return _fit(model, lineage, resolve_config(data), train, runtime, run_paths(out), env, device,
                    resume=resume, force=force)
    finally:
        if started:
            shutdown()


def _fingerprint(lineage: Lineage, data: DataConfig, train: TrainConfig) -> dict[str, Any]:
    return {
        "command": lineage.command,
        "kind": lineage.kind,
        "arch": lineage.arch.to_dict(),
        "plan": lineage.plan.to_dict() if lineage.plan is not None else None,
        "parents": [p.sha256 for p in lineage.parents],
        "extra": json.loads(json.dumps(lineage.extra, default=str)),
        "data": {"name": data.name, "options": data.options},
        "train": train.to_dict(),
    }


def _prepare_output(paths: RunPaths, resume: bool, force: bool, reporter: Reporter) -> dict | None:
    """Apply the resume/overwrite rules; returns the loaded resume state, if any."""
    out = paths.out
    if paths.state.exists():
        if resume:
            check_output_path(out, force=True)
            return load_state(paths.state)
        if not force:
            raise MgtoolError(
                f"{paths.state}: an interrupted run of {out} left its resume state here; "
                "pass --resume to continue it, or --force to start over"
            )
    elif resume:
        if out.exists():
            raise MgtoolError(f"{out}: nothing to resume (no {paths.state.name} beside it: the run "
                              "finished); pass --force without --resume to train again")
        reporter.note(f"no resume state at {paths.state}; starting a fresh run")
    check_output_path(out, force)
    leftovers = [p for p in (paths.metrics,) if p.exists()] + [p for _, p in paths.epoch_files()]
    if leftovers and not force:
        raise MgtoolError(f"{leftovers[0]}: left by an earlier run of {out}; pass --force to replace it")
    return None


def check_model_fits(model: nn.Module, lineage: Lineage, data: DataConfig,
                      shape: tuple[int, int, int], classes: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(torch.zeros(2, *shape))
    except RuntimeError as e:
        raise MgtoolError(f"{lineage.arch.describe()} does not accept {data.name} images of shape "
                          f"{'x'.join(map(str, shape))} ({first_line(e, 160)})") from None
    finally:
        model.train(was_training)
    if y.ndim != 2 or y.shape[1] != classes:
        raise MgtoolError(f"the model has {y.shape[-1]} outputs but {data.name} has {classes} classes; "
                          "pass --num-classes to train-small, or use a checkpoint made for this data set")


def _gather_rng(env: DistEnv) -> list[dict[str, Any]]:
    mine = rng_state()
    if not env.enabled:
        return [mine]
    states: list[Any] = [None] * env.world
    dist.all_gather_object(states, mine)
    return states


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _fit(model: nn.Module, lineage: Lineage, data: DataConfig, train: TrainConfig, runtime: Runtime,
         paths: RunPaths, env: DistEnv, device: torch.device, *, resume: bool, force: bool) -> FitResult:
    started_at = time.perf_counter()
    reporter = Reporter(quiet=runtime.quiet, main=env.is_main)
    state = _prepare_output(paths, resume, force, reporter)
    info = dataset_info(data)
    if train.batch_size % env.world:
        raise MgtoolError(f"--batch-size {train.batch_size} must be divisible by the number of "
                          f"processes ({env.world}); it is the global batch")
    per_rank = train.batch_size // env.world
    fingerprint = _fingerprint(lineage, data, train)
    if state is not None:
        saved = json.loads(state["fingerprint"])
        differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        if differ:
            raise MgtoolError(f"{paths.state}: was written by a run with different {', '.join(differ)}; "
                              "rerun the same command with --resume, or pass --force (without "
                              "--resume) to start over")
    check_model_fits(model, lineage, data, info.shape, info.num_classes)
    per_sample = flops_per_training_sample(model, info.shape, per_rank)

    bf16 = resolve_precision(runtime.precision, device)
    channels_last = device.type == "cuda" if runtime.channels_last is None else runtime.channels_last
    loader = train_loader(data, batch_size=per_rank, device=device, seed=train.seed, rank=env.rank,
                          world=env.world, loader=runtime.loader, workers=runtime.workers)
    norm = normaliser(data, channels_last)
    steps_per_epoch = len(loader)
    schedule = make_schedule(train.schedule, train.lr, train.epochs, steps_per_epoch,
                             warmup_epochs=train.warmup_epochs, milestones=train.milestones)
    budget_steps = max(1, math.ceil(train.budget * schedule.total_steps - 1e-9))
    check_every = runtime.check_every or (25 if device.type == "cuda" else 1)

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                                nesterov=train.nesterov and train.momentum > 0,
                                weight_decay=train.weight_decay)
    start_epoch, step, samples = 0, 0, 0
    history: list[dict[str, Any]] = []
    torch.manual_seed(seed_for(train.seed, env.rank, 3))
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, samples = int(state["epoch"]), int(state["step"]), int(state["samples_seen"])
        history = list(state["metrics"])
        if int(state["world"]) == env.world:
            set_rng_state(state["rng"][env.rank])
        else:
            reporter.note(f"resuming a {state['world']}-process run on {env.world}: data order and "
                          "RNG differ from an uninterrupted run")
        reporter.note(f"resuming {paths.out} after epoch {start_epoch} (step {step})")
    elif env.is_main and force:
        for stale in [paths.state, paths.metrics] + [p for _, p in paths.epoch_files()]:
            stale.unlink(missing_ok=True)
    barrier()

    train_model: nn.Module = model
    if env.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if runtime.compile:
        train_model = torch.compile(train_model)

    meta = None
    for epoch in range(start_epoch, train.epochs):
        epoch_steps = min(steps_per_epoch, budget_steps - (epoch * steps_per_epoch))
        reporter.start_epoch(epoch + 1, train.epochs, epoch_steps)
        model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        bad = torch.zeros((), dtype=torch.bool, device=device)
        seen, done, lr = 0, 0, schedule.lr(step)
        t0 = time.perf_counter()
        try:
            for xb, yb in loader.epoch(epoch):
                if done >= epoch_steps:
                    break
                lr = schedule.lr(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = norm(xb)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = train_model(x)
                loss = F.cross_entropy(logits.float(), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step, done, seen = step + 1, done + 1, seen + yb.shape[0]
                samples += train.batch_size
                with torch.no_grad():
                    d = loss.detach()
                    bad |= ~torch.isfinite(d)
                    sums += torch.stack([d.double() * yb.shape[0],
                                         (logits.argmax(1) == yb).sum().double()])
                if step % check_every == 0 and any_rank(bad):
                    raise NonFiniteLoss(f"epoch {epoch + 1}, step {step} (lr {lr:.4g})")
                if reporter.wants_stats(done):
                    rate = seen * env.world / max(time.perf_counter() - t0, 1e-9)
                    loss_avg, acc = (sums / seen).tolist()
                    reporter.advance(done, f"loss {loss_avg:.3f} acc {acc:.1%} {rate:,.0f} img/s")
                else:
                    reporter.advance(done)
            if any_rank(bad):
                raise NonFiniteLoss(f"epoch {epoch + 1}, step {step} (lr {lr:.4g})")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - t0
            all_reduce_sum(sums)
            total_seen = seen * env.world
            result = evaluate(model, data, batch_size=runtime.eval_batch_size, device=device, env=env,
                              bf16=bf16, channels_last=channels_last, workers=runtime.workers)
            if not math.isfinite(result.loss) or not _params_finite(model):
                raise NonFiniteLoss(f"evaluation after epoch {epoch + 1} (non-finite weights or loss)")
        except NonFiniteLoss as e:
            reporter.close()
            kept = (f"the last good checkpoint {paths.out} (epoch {epoch}) and its resume state "
                    "are kept" if epoch > 0 and paths.state.exists() else "nothing was written")
            raise MgtoolError(f"non-finite training loss at {e.where}; training stopped and {kept}; "
                              "lower --lr or check the data") from None

        partial = done < steps_per_epoch
        epochs_done = epoch + done / steps_per_epoch if partial else epoch + 1
        stopped_by_budget = step >= budget_steps and step < schedule.total_steps
        complete = epoch + 1 == train.epochs or stopped_by_budget
        spent = samples * per_sample
        record = {
            "epoch": epochs_done,
            "train_loss": float(sums[0] / total_seen) if total_seen else float("nan"),
            "train_top1": float(sums[1] / total_seen) if total_seen else float("nan"),
            "test_loss": result.loss,
            "test_top1": result.top1,
            "test_top5": result.top5,
            "lr": lr,
            "images_per_s": total_seen / max(train_time, 1e-9),
            "samples_seen": samples,
            "training_flops": lineage.inherited.training + spent,
            "time_s": time.perf_counter() - t0,
        }
        history.append(record)
        summary = {
            "command": lineage.command,
            "epochs": train.epochs,
            "epochs_done": epochs_done,
            "complete": complete,
            "stopped_by_budget": stopped_by_budget,
            "steps": step,
            "samples_seen": samples,
            "flops_per_sample": per_sample,
            "flops_spent": spent,
            "world_size": env.world,
            "precision": "bf16" if bf16 else "fp32",
            "recipe": train.to_dict(),
            "test_top1": result.top1,
            "test_top5": result.top5,
            "test_loss": result.loss,
            **lineage.extra,
        }
        meta = CheckpointMeta(
            kind=lineage.kind, arch=lineage.arch, plan=lineage.plan,
            provenance=new_provenance(lineage.parents),
            flops=Flops(training=lineage.inherited.training + spent, given=lineage.inherited.given),
            data=data.to_dict(), training=summary,
        )
        rng = _gather_rng(env)
        if env.is_main:
            _write_epoch(paths, model, optimizer, meta, history, rng, fingerprint, env, runtime,
                         epoch=epoch + 1, step=step, samples=samples, complete=complete)
        barrier()
        reporter.end_epoch(
            f"epoch {_fmt_epoch(epochs_done)}/{train.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_top1']:.2%}  test loss {result.loss:.4f} top1 {result.top1:.2%} "
            f"top5 {result.top5:.2%}  lr {lr:.4g}  {record['images_per_s']:,.0f} img/s  "
            f"{record['time_s']:.1f}s"
        )
        if complete:
            break
    if meta is None:  # resumed a state whose run had already reached its last epoch
        raise MgtoolError(f"{paths.state}: the run had already finished its {train.epochs} epochs; "
                          f"delete {paths.state} (the output {paths.out} is complete)")
    return FitResult(paths.out, meta, history, time.perf_counter() - started_at, env.is_main)


def _fmt_epoch(e: float) -> str:
    return str(int(e)) if float(e).is_integer() else f"{e:.2f}"


def _write_epoch(paths: RunPaths, model: nn.Module, optimizer: torch.optim.Optimizer,
                 meta: CheckpointMeta, history: list[dict[str, Any]], rng: list[dict[str, Any]],
                 fingerprint: dict[str, Any], env: DistEnv, runtime: Runtime, *, epoch: int, step: int,
                 samples: int, complete: bool) -> None:
    """Order matters for crash safety: copies, resume state, OUT, metrics; the state goes last
    when the run is complete (a crash in between only repeats the last epoch)."""
    tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if runtime.keep_every and (epoch % runtime.keep_every == 0 or complete):
        save_checkpoint(paths.epoch(epoch), tensors, meta, force=True)
    if not complete:
        save_state(paths.state, {
            "fingerprint": json.dumps(fingerprint, sort_keys=True),
            "epoch": epoch, "step": step, "samples_seen": samples, "world": env.world,
            "model": tensors, "optimizer": optimizer.state_dict(), "rng": rng, "metrics": history,
        })
    save_checkpoint(paths.out, tensors, meta, force=True)
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(paths.metrics, lambda tmp: Path(tmp).write_text(text))
    if complete:
        paths.state.unlink(missing_ok=True)
