"""What ``mgtool run`` resolves from the recipe before and between its stages: the check of
everything the stages will need (``preflight``), the ``train:`` sections resolved for the
run's data set, and the FLOPs accounting: the reference's (the paper's 1.0X), what a stage
is charged, and the epochs that spend a FLOPs budget. ``Pipeline`` (mgtool.pipeline) is a
``PipelinePlan``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mgtool.archs import ArchSpec, build_plain, grow_spec, resolve_spec
from mgtool.budget import epochs_for_flops, samples_per_epoch
from mgtool.checkpoint import read_meta
from mgtool.data import DataConfig, data_config, dataset_info, split_size
from mgtool.errors import MgtoolError, SettingError
from mgtool.flops import flops_per_training_sample
from mgtool.recipe import Recipe, TrainSection
from mgtool.train import TrainConfig, train_config


class PipelinePlan:
    """Resolution and FLOPs accounting over ``self.r`` (the recipe), ``self.data`` (the data the
    stages train on) and ``self.net1_flops`` (net 1's training FLOPs: given, never charged)."""

    r: Recipe
    data: DataConfig
    net1_flops: float

    def _train(self, section: TrainSection, seed: int, budget: float | None = None, epochs: int | None = None,
               **values: Any) -> TrainConfig:
        """The section resolved for this data set; ``budget``/``epochs`` given here override the section's."""
        values.update({k: v for k, v in (("budget", budget), ("epochs", epochs)) if v is not None})
        return train_config(self.data.name, section, seed=seed, **values)

    def preflight(self) -> None:
        """Resolve what the stages will need from the recipe (architectures, data options,
        training settings), so a bad value fails before the first stage, not hours later."""
        r = self.r
        d = r.data
        source = data_config(d.name, d.dir, d.options, d.download)
        self.data = source  # until prepare_data: the training settings' data set defaults
        small = self.small_spec()
        with torch.device("meta"):  # the family checks its options when it builds (no memory used)
            build_plain(small)
            build_plain(resolve_spec(grow_spec(small, r.fuse.factor)))
        sections = [(r.net1.train if r.net1 else None, "net1.train"), (r.net2.train, "net2.train"),
                    (r.finetune.train if r.finetune else None, "finetune.train"),
                    (r.scratch.train if r.scratch else None, "scratch.train")]
        for section, key in sections:
            if section is not None:
                try:
                    self._train(section, 0)  # resolved against the data set's preset, validated
                except SettingError as e:
                    raise e.renamed(f"{key}.{e.field}") from None
        given = [("net1.checkpoint", r.net1.checkpoint if r.net1 else None), ("net2.checkpoint", r.net2.checkpoint)]
        for key, path in given:
            if path is not None and not Path(path).is_file():
                raise MgtoolError(f"recipe {key}: {path} does not exist")
        if r.scratch is None and r.method == "mixturegrowth" and r.fuse.fusion and r.net2.train is None \
                and r.net1.train is None and r.net2.checkpoint is None:
            raise MgtoolError("recipe net2.train: required when net 1 is given as a checkpoint "
                              "(there is no net 1 schedule to copy)")

    def train_size(self) -> int:
        """The training images actually there (dataset_info gives the full set's nominal size)."""
        return split_size(self.data, "train")

    def _epochs_for(self, target: float, model: torch.nn.Module, section: TrainSection) -> tuple[int, float]:
        """``(epochs, budget)`` for ``model`` to spend ``target`` training FLOPs."""
        batch = self._train(section, 0).batch_size
        per_sample = flops_per_training_sample(model, dataset_info(self.data).shape, batch)
        return epochs_for_flops(target, per_sample, samples_per_epoch(self.train_size(), batch))

    def charged(self, path: Path, role: str) -> float:
        """Training FLOPs charged to ``path``: all of them, less net 1's (given, not charged)."""
        meta = read_meta(path)
        if role == "net1":
            return 0.0
        if self.r.method != "mixturegrowth" and role in ("grown", "grown_bn", "final"):
            return meta.flops.training - self.net1_flops  # the baselines' grow keeps no "given" mark
        return meta.flops.training - meta.flops.given

    def large_per_sample(self, batch_size: int) -> float:
        spec = grow_spec(self.small_spec(), self.r.fuse.factor)
        with torch.device("cpu"):
            model = build_plain(spec)
        info = dataset_info(self.data)
        return flops_per_training_sample(model, info.shape, batch_size)

    def small_spec(self) -> ArchSpec:
        info = dataset_info(self.data)
        a = self.r.arch
        return resolve_spec(ArchSpec(a.name, a.width, info.num_classes, info.shape[0], dict(a.options)))

    def reference_flops(self) -> float:
        """The large net trained from scratch for ``reference.epochs``: the paper's 1.0X."""
        section = self.r.finetune.train if self.r.finetune else self.r.scratch.train
        batch = self.r.reference.batch_size or self._train(section, 0).batch_size
        return self.large_per_sample(batch) * samples_per_epoch(self.train_size(), batch) * self.r.reference.epochs
