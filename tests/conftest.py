"""Shared fixtures: tiny plain checkpoints written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mgtool.archs import ArchSpec, build_plain, family_names, resolve_spec, tiny_spec

# Without CUDA, Triton kernels run in its interpreter on CPU tensors (tests/test_mixing_triton.py).
# Triton reads this when a kernel is defined, so it is set before anything imports mgtool.mixing_triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Every registered family's tiny instance (Family.tiny): a family is tested the day it is
# registered. Extra variants of a family are listed by hand.
TINY_SPECS = {name: tiny_spec(name) for name in family_names()} | {
    "wrn-block-input": ArchSpec("wrn", 0.5, 10, 3, {"depth": 10, "stem_width": 8, "norm": "block-input"}),
}


# Family-parametrised tests that do not apply to a family (yet), with the reason. An xfail is
# strict: when the feature lands the test passes, fails as XPASS, and its entry goes.
NOT_APPLICABLE: dict[str, pytest.MarkDecorator] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        mark = NOT_APPLICABLE.get(f"{item.path.name}::{item.name}")
        if mark is not None:
            item.add_marker(mark)


def randomised_plain(spec: ArchSpec, seed: int = 0) -> torch.nn.Module:
    """A plain model with non-trivial BN statistics and affine parameters, so that
    exactness tests exercise every tensor, not only freshly initialised ones."""
    torch.manual_seed(seed)
    net = build_plain(resolve_spec(spec))
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean") or (name.endswith("bias") and t.ndim == 1):
                t.normal_(0, 0.1)
            elif t.ndim == 1 and t.is_floating_point():
                t.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="session")
def plain_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``.pt`` state dicts of every tiny family, written once."""
    folder = tmp_path_factory.mktemp("plain")
    paths = {}
    for key, spec in TINY_SPECS.items():
        path = folder / f"{key}.pt"
        torch.save(randomised_plain(spec).state_dict(), path)
        paths[key] = path
    return paths


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny test models gain nothing from intra-op threads, and on a busy 2-core machine the
    hand-offs between threads cost far more than the arithmetic; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_debug_leak():
    """``mgtool --debug`` sets MGTOOL_DEBUG for the process; keep it from leaking across tests."""
    yield
    os.environ.pop("MGTOOL_DEBUG", None)


def one_line(result, code: int = 1) -> str:
    """The one error line of a CliRunner result that failed with ``code`` (and nothing on stdout)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def tm(plain_ckpts, tmp_path_factory) -> Path:
    """A converted tiny-cnn, one per test module (the hardening tests rewrite copies of it)."""
    import mgtool

    out = tmp_path_factory.mktemp("tm") / "tm.safetensors"
    mgtool.convert(plain_ckpts["tiny-cnn"], TINY_SPECS["tiny-cnn"], out=out)
    return out
