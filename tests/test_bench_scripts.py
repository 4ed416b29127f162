"""The benchmark scripts' own models and entry points (they are run on machines CI never sees)."""

import sys
from pathlib import Path

import torch
from torch.testing import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import overhead  # noqa: E402


def test_overhead_references_compute_mgtools_function() -> None:
    models, _, size, _ = overhead.build_models("resnet18-0.5")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = {name: model(x) for name, model in models.items()}
    assert set(logits) == {"plain", "mgtool", "einsum-before", "broadcast-ref"}
    for name in ("einsum-before", "broadcast-ref"):
        assert_close(logits[name], logits["mgtool"], rtol=1e-4, atol=1e-5)


def test_overhead_train_step_runs_for_every_model() -> None:
    models, _, size, _ = overhead.build_models("resnet18-0.5")
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
    for model in models.values():
        overhead.train_step(model, x, y, {})()
