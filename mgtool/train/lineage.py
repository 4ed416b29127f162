"""What a training run's output says about itself: the caller's description of the run.

The trainer asks a ``Lineage`` for the checkpoint metadata after every epoch and for the
resume fingerprint; it never builds metadata itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mgtool.archs import ArchSpec
from mgtool.checkpoint import CheckpointMeta, Flops, Kind
from mgtool.data import DataConfig
from mgtool.plan import TemplatePlan
from mgtool.provenance import Parent, new_provenance
from mgtool.train.settings import TrainConfig


@dataclass(frozen=True)
class Lineage:
    command: str
    kind: Kind | str
    arch: ArchSpec
    plan: TemplatePlan | None
    parents: tuple[Parent, ...] = ()
    inherited: Flops = field(default_factory=Flops)  # the parent's training FLOPs
    extra: dict[str, Any] = field(default_factory=dict)  # copied into meta.training

    def fingerprint(self, data: DataConfig, train: TrainConfig) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one."""
        return {
            "command": self.command,
            "kind": str(self.kind),
            "arch": self.arch.to_dict(),
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "parents": [p.sha256 for p in self.parents],
            "extra": json.loads(json.dumps(self.extra, default=str)),
            "data": {"name": data.name, "options": data.options},
            "train": train.to_dict(),
        }

    def checkpoint_meta(self, data: DataConfig, summary: dict[str, Any], spent: float) -> CheckpointMeta:
        """The metadata of OUT after an epoch: ``summary`` goes to ``training``, ``spent`` FLOPs are added."""
        return CheckpointMeta(
            kind=Kind(str(self.kind)), arch=self.arch, plan=self.plan, provenance=new_provenance(self.parents),
            flops=Flops(training=self.inherited.training + spent, given=self.inherited.given),
            data=data.to_dict(), training={"command": self.command, **summary, **self.extra},
        )
