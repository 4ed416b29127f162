"""The one trainer under ``train-small``, ``finetune`` and the pipeline's training stages.

``fit`` trains a model (plain or template-mixing) and writes OUT, a normal mgtool
checkpoint, plus a resume sidecar, atomically after every epoch; appends the epoch's
metrics; counts training FLOPs; stops cleanly on a non-finite loss, weight or buffer;
and runs under DDP when launched by torchrun (only rank 0 writes). ``Trainer`` is the
same in parts: ``setup`` (devices, data, optimizer, schedule, restore), ``train_epoch``,
``evaluate`` and ``save``; the caller's ``Lineage`` supplies the checkpoint metadata.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mgtool.data import DataConfig, data_source, dataset_info, normaliser, resolve_config, train_loader
from mgtool.data.fingerprint import changed_files, data_fingerprint, describe_changes
from mgtool.data.loaders import seed_for
from mgtool.errors import MgtoolError, check_range
from mgtool.flops import flops_per_training_sample
from mgtool.model import TemplateMixingNet
from mgtool.safe_write import make_parent
from mgtool.train.distributed import DistEnv, all_reduce_sum, any_rank, barrier, init_distributed, shutdown
from mgtool.train.evaluate import EvalResult, check_model_fits, evaluate, resolve_precision
from mgtool.train.lineage import Lineage
from mgtool.train.optim import make_optimizer
from mgtool.train.outputs import (
    check_state,
    output_lock,
    prepare_output,
    remove_stale_temporaries,
    write_epoch,
)
from mgtool.train.paths import RunPaths, run_paths
from mgtool.train.report import Reporter
from mgtool.train.resume_check import check_loaded, check_structure, saved_files, saved_fingerprint
from mgtool.train.schedule import LrSchedule
from mgtool.train.settings import TrainConfig
from mgtool.train.state import rng_state, set_rng_state


@dataclass(frozen=True)
class Runtime:
    """How to run (not what to compute): none of this enters the resume fingerprint."""

    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None = on for CUDA
    compile: bool = False
    mixing_kernel: str = "auto"  # weight generation of template-mixing models: auto, triton or torch
    loader: str = "auto"
    workers: int | None = None
    keep_every: int = 0
    quiet: bool = False
    eval_batch_size: int = 256
    check_every: int | None = None  # steps between non-finite checks; None = 1 on CPU, 25 on CUDA


@dataclass(frozen=True)
class FitResult:
    out: Path
    meta: Any  # CheckpointMeta
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
            "lr": last.get("lr"),
            "training_flops": self.meta.flops.training,
            "wall_s": self.wall_s,
        }


class NonFinite(Exception):
    def __init__(self, where: str, what: str = "loss"):
        super().__init__(where)
        self.where, self.what = where, what


@dataclass
class EpochStats:
    steps: int
    seen: int  # samples, all ranks
    loss: float
    top1: float
    lr: float
    seconds: float


def state_finite(model: nn.Module) -> str | None:
    """The name of the first parameter or floating buffer holding NaN/Inf, or None."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


class Trainer:
    def __init__(self, model: nn.Module, lineage: Lineage, data: DataConfig, train: TrainConfig,
                 runtime: Runtime, paths: RunPaths, env: DistEnv, device: torch.device):
        self.model, self.lineage, self.data, self.train = model, lineage, data, train
        self.runtime, self.paths, self.env, self.device = runtime, paths, env, device
        self.reporter = Reporter(quiet=runtime.quiet, main=env.is_main)
        self.step = self.samples = self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.first_write = True

    # ------------------------------------------------------------------ set-up

    def setup(self, state: dict[str, Any] | None, *, force: bool = False) -> None:
        """``force``: resume even if the data files changed since the state was written."""
        train, env, device = self.train, self.env, self.device
        info = dataset_info(self.data)
        self.data_files = data_fingerprint(self.data)
        if train.batch_size % env.world:
            raise MgtoolError(f"--batch-size {train.batch_size} must be divisible by the number of processes "
                              f"({env.world}); it is the global batch")
        per_rank = train.batch_size // env.world
        self.fingerprint = self.lineage.fingerprint(self.data, train)
        check_model_fits(self.model, self.lineage.arch.describe(), self.data, info.shape, info.num_classes)
        self.per_sample = flops_per_training_sample(self.model, info.shape, per_rank)
        self.bf16 = resolve_precision(self.runtime.precision, device)
        self.channels_last = device.type == "cuda" if self.runtime.channels_last is None else self.runtime.channels_last
        self.loader = train_loader(self.data, batch_size=per_rank, device=device, seed=train.seed, rank=env.rank,
                                   world=env.world, loader=self.runtime.loader, workers=self.runtime.workers)
        self.norm = normaliser(self.data, self.channels_last)
        self.steps_per_epoch = len(self.loader)
        self.check_every = self.runtime.check_every or (25 if device.type == "cuda" else 1)
        self.model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if isinstance(self.model, TemplateMixingNet):
            self.model.set_mixing_kernel(self.runtime.mixing_kernel, device, channels_last=self.channels_last)
        self.optimizer = make_optimizer(self.model, train)
        self.schedule = LrSchedule(self.optimizer, train, self.steps_per_epoch)
        self.epochs = math.ceil(self.schedule.stop_step / self.steps_per_epoch)
        torch.manual_seed(seed_for(train.seed, env.rank, 3))
        if state is not None:
            self._restore(state, force)
        barrier()
        self.train_model: nn.Module = self.model
        if env.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.runtime.compile:
            self.train_model = torch.compile(self.train_model)

    def _restore(self, state: dict[str, Any], force: bool) -> None:
        saved = saved_fingerprint(state, self.paths.state)
        differ = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
        if differ:
            raise MgtoolError(f"{self.paths.state}: was written by a run with different {', '.join(differ)}; "
                              "rerun the same command with --resume, or pass --force (without --resume) to "
                              "start over")
        check_structure(state, self.model, self.optimizer, self.paths.state)
        check_state(state, self.paths, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                    world=self.env.world)
        files = saved_files(state, self.paths.state)
        changed = [] if files is None else changed_files(files, self.data_files)
        if changed and not force:
            folder = data_source(self.data, "train").path
            raise MgtoolError(f"{self.paths.state}: the data changed since this run started "
                              f"({describe_changes(changed)} in {folder}); restore the data, or pass --force "
                              "with --resume to continue on the new data")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        check_loaded(self.optimizer, self.paths.state)
        self.start_epoch, self.step, self.samples = int(state["epoch"]), int(state["step"]), int(state["samples_seen"])
        self.history = list(state["metrics"])
        self.first_write = False
        if int(state["world"]) == self.env.world:
            set_rng_state(state["rng"][self.env.rank])
        else:
            self.reporter.note(f"resuming a {state['world']}-process run on {self.env.world}: data order and RNG "
                               "differ from an uninterrupted run")
        self.reporter.note(f"resuming {self.paths.out} after epoch {self.start_epoch} (step {self.step})")

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int) -> EpochStats:
        steps = min(self.steps_per_epoch, self.schedule.stop_step - self.step)
        self.reporter.start_epoch(epoch + 1, self.epochs, steps)
        self.model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        seen = done = 0
        lr = self.schedule.set(self.step)
        t0 = time.perf_counter()
        for xb, yb in self.loader.epoch(epoch):
            if done >= steps:
                break
            lr = self.schedule.set(self.step)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.train_model(self.norm(xb))
            loss = F.cross_entropy(logits.float(), yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step, done, seen = self.step + 1, done + 1, seen + yb.shape[0]
            self.samples += self.train.batch_size
            with torch.no_grad():
                d = loss.detach()
                bad |= ~torch.isfinite(d)
                sums += torch.stack([d.double() * yb.shape[0], (logits.argmax(1) == yb).sum().double()])
            if self.step % self.check_every == 0 and any_rank(bad):
                raise NonFinite(f"epoch {epoch + 1}, step {self.step} (lr {lr:.4g})")
            if self.reporter.wants_stats(done):
                rate = seen * self.env.world / max(time.perf_counter() - t0, 1e-9)
                loss_avg, acc = (sums / seen).tolist()
                self.reporter.advance(done, f"loss {loss_avg:.3f} acc {acc:.1%} {rate:,.0f} img/s")
            else:
                self.reporter.advance(done)
        if any_rank(bad):
            raise NonFinite(f"epoch {epoch + 1}, step {self.step} (lr {lr:.4g})")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        all_reduce_sum(sums)
        total = seen * self.env.world
        loss_avg, top1 = (float(sums[0] / total), float(sums[1] / total)) if total else (math.nan, math.nan)
        return EpochStats(done, total, loss_avg, top1, lr, seconds)

    def evaluate(self) -> EvalResult:
        result = evaluate(self.model, self.data, batch_size=self.runtime.eval_batch_size, device=self.device,
                          env=self.env, bf16=self.bf16, channels_last=self.channels_last,
                          workers=self.runtime.workers)
        bad = state_finite(self.model)
        if bad is not None or not math.isfinite(result.loss):
            raise NonFinite(f"the evaluation after epoch {len(self.history) + 1} "
                            f"({'tensor ' + bad if bad else 'the test loss'} is not finite)", "state")
        return result

    def save(self, epoch: int, stats: EpochStats, result: EvalResult, t0: float) -> Any:
        """Record the epoch and write OUT (rank 0); returns OUT's metadata."""
        train = self.train
        partial = stats.steps < self.steps_per_epoch
        epochs_done = epoch + stats.steps / self.steps_per_epoch if partial else epoch + 1
        complete = self.step >= self.schedule.stop_step
        spent = self.samples * self.per_sample
        record = {
            "epoch": epochs_done, "train_loss": stats.loss, "train_top1": stats.top1,
            "test_loss": result.loss, "test_top1": result.top1, "test_top5": result.top5, "lr": stats.lr,
            "images_per_s": stats.seen / max(stats.seconds, 1e-9), "samples_seen": self.samples,
            "training_flops": self.lineage.inherited.training + spent, "time_s": time.perf_counter() - t0,
        }
        self.history.append(record)
        summary = {
            "epochs": train.epochs, "epochs_done": epochs_done, "complete": complete,
            "stopped_by_budget": complete and self.step < self.schedule.total_steps,  # --stop-at cut it
            "schedule_steps": self.schedule.total_steps, "steps": self.step, "samples_seen": self.samples,
            "flops_per_sample": self.per_sample, "flops_spent": spent, "world_size": self.env.world,
            "precision": "bf16" if self.bf16 else "fp32", "recipe": train.to_dict(),
            "test_top1": result.top1, "test_top5": result.top5, "test_loss": result.loss,
        }
        meta = self.lineage.checkpoint_meta(self.data, summary, spent)
        rng = self._gather_rng()
        if self.env.is_main:
            tensors = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            resume_state = None if complete else {
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True), "epoch": epoch + 1, "step": self.step,
                "samples_seen": self.samples, "world": self.env.world, "model": tensors,
                "optimizer": self.optimizer.state_dict(), "rng": rng, "metrics": self.history,
                "data_files": self.data_files,
            }
            write_epoch(self.paths, tensors, meta, self.history, resume_state, epoch=epoch + 1,
                        keep_every=self.runtime.keep_every, complete=complete, first_write=self.first_write)
            self.first_write = False
        barrier()
        self.reporter.end_epoch(
            f"epoch {_fmt_epoch(epochs_done)}/{train.epochs}  train loss {stats.loss:.4f} acc {stats.top1:.2%}  "
            f"test loss {result.loss:.4f} top1 {result.top1:.2%} top5 {result.top5:.2%}  lr {stats.lr:.4g}  "
            f"{record['images_per_s']:,.0f} img/s  {record['time_s']:.1f}s")
        return meta

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = rng_state()
        if not self.env.enabled:
            return [mine]
        states: list[Any] = [None] * self.env.world
        dist.all_gather_object(states, mine)
        return states

    # ------------------------------------------------------------------ the loop

    def run(self) -> Any:
        meta = None
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.perf_counter()
            try:
                stats = self.train_epoch(epoch)
                result = self.evaluate()
            except NonFinite as e:
                self.reporter.close()
                if self.first_write:
                    kept = "nothing was written and any earlier files of this output are untouched"
                else:
                    kept = (f"the last good checkpoint {self.paths.out} (epoch {epoch}) and its resume state "
                            "are kept")
                raise MgtoolError(f"non-finite training {e.what} at {e.where}; training stopped and {kept}; "
                                  "lower --lr or check the data") from None
            meta = self.save(epoch, stats, result, t0)
        if meta is None:
            raise MgtoolError(f"{self.paths.state}: the run had already finished its {self.train.epochs} epochs; "
                              f"delete {self.paths.state} (the output {self.paths.out} is complete)")
        return meta


def fit(model: nn.Module, lineage: Lineage, data: DataConfig, train: TrainConfig, runtime: Runtime,
        out: Path | str, *, resume: bool = False, force: bool = False) -> FitResult:
    """Train ``model`` and write OUT; see the module docstring and README "Training"."""
    started_at = time.perf_counter()
    train.validate()
    check_range("epochs", train.epochs, low=1)
    check_range("keep_every", runtime.keep_every, low=0)
    paths = run_paths(out)
    env, device, started = init_distributed(runtime.device)
    try:
        check_output_dir(paths)
        with output_lock(paths) if env.is_main else nullcontext():
            if env.is_main:
                remove_stale_temporaries(paths)
            state = prepare_output(paths, resume=resume, force=force, main=env.is_main)
            if state is None and resume:
                Reporter(quiet=runtime.quiet, main=env.is_main).note(
                    f"no resume state at {paths.state}; starting a fresh run")
            trainer = Trainer(model, lineage, resolve_config(data), train, runtime, paths, env, device)
            trainer.setup(state, force=force)
            meta = trainer.run()
        return FitResult(paths.out, meta, trainer.history, time.perf_counter() - started_at, env.is_main)
    finally:
        if started:
            shutdown()


def check_output_dir(paths: RunPaths) -> None:
    """OUT's folder is made if missing (the lock file goes there first), as every writer does."""
    make_parent(paths.out)


def _fmt_epoch(e: float) -> str:
    return str(int(e)) if float(e).is_integer() else f"{e:.2f}"
