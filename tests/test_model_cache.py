"""Generated weights are cached outside training and never stale (issue 13)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import mgtool.model
from mgtool.archs import ArchSpec
from mgtool.model import TemplateMixingNet
from mgtool.templates import fresh_template_mixing

SPEC = ArchSpec("tiny-cnn", 1.0, 5, 3, {})
X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts weight generations (one ``mix_group`` call per bank group)."""
    count = [0]
    real = mgtool.model.mix_group

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(mgtool.model, "mix_group", counting)
    return count


def _model(seed: int = 0) -> TemplateMixingNet:
    return fresh_template_mixing(SPEC, seed=seed).eval()


def _fresh_output(tm: TemplateMixingNet, x: torch.Tensor = X) -> torch.Tensor:
    """The output with weights generated now, bypassing the cache."""
    with torch.no_grad():
        tm.generate_weights()
        return tm.net(x)


def test_evaluation_does_not_regenerate(calls):
    tm = _model()
    with torch.no_grad():
        first = tm(X)
        n = calls[0]
        assert n == len(tm._groups)
        for _ in range(3):
            assert torch.equal(tm(X), first)
    with torch.inference_mode():
        tm(X)
        n = calls[0]
        tm(X)
    assert calls[0] == n
    assert_close(first, _fresh_output(tm), rtol=0, atol=0)


def test_no_grad_in_train_mode_is_cached_and_training_regenerates(calls):
    tm = _model().train()
    with torch.no_grad():
        tm(X)
        n = calls[0]
        tm(X)
    assert calls[0] == n
    tm(X).sum().backward()  # a training forward generates with a graph
    tm(X)
    assert calls[0] == n + 2 * len(tm._groups)
    assert all(p.grad is not None for p in tm.banks.values())


@pytest.mark.parametrize("flags", [{}, {"foreach": True}, {"fused": True}])
def test_an_optimizer_step_invalidates(calls, flags):
    tm = _model()
    opt = torch.optim.SGD(tm.parameters(), lr=0.5, momentum=0.9, **flags)
    with torch.no_grad():
        before = tm(X)
    for p in tm.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # the module stays in eval mode
    with torch.no_grad():
        after = tm(X)
    assert not torch.allclose(after, before)
    assert_close(after, _fresh_output(tm), rtol=0, atol=0)


def test_load_state_dict_invalidates():
    tm, other = _model(0), _model(1)
    with torch.no_grad():
        tm(X)
        tm.load_state_dict(other.state_dict())
        assert_close(tm(X), other(X), rtol=0, atol=0)


def test_train_invalidates(calls):
    tm = _model()
    with torch.no_grad():
        tm(X)
        n = calls[0]
        tm.train()
        tm.eval()
        tm(X)
    assert calls[0] == n + len(tm._groups)


def test_in_place_edit_and_to_dtype_invalidate():
    tm = _model()
    with torch.no_grad():
        tm(X)
        next(iter(tm.banks.values())).mul_(2.0)
        assert_close(tm(X), _fresh_output(tm), rtol=0, atol=0)
        tm.double()
        out = tm(X.double())
    assert out.dtype == torch.float64
    assert all(m.weight.dtype == torch.float64 for m, _, _ in tm._mixed)


def test_eval_mode_with_gradients_generates_a_graph():
    tm = _model()
    with torch.no_grad():
        tm(X)  # cached weights, no graph
    tm(X).sum().backward()  # eval mode, but templates and coefficients want gradients
    assert all(p.grad is not None for p in tm.banks.values())
    assert all(m.coefficients.grad is not None for m, _, _ in tm._mixed)


def test_frozen_model_in_eval_mode_reuses_weights_made_in_inference_mode(calls):
    tm = _model().requires_grad_(False)
    with torch.inference_mode():
        tm(X)
    x = X.clone().requires_grad_()
    tm(x).sum().backward()  # weights from inference mode cannot be saved for backward: regenerated
    n = calls[0]
    tm(x).sum().backward()
    assert calls[0] == n and x.grad is not None


def test_materialised_state_dict_matches_generation():
    tm = _model()
    with torch.no_grad():
        tm(X)
    sd = tm.materialised_state_dict()
    tm.generate_weights()
    for module, _, _ in tm._mixed:
        name = next(n for n, m in tm.net.named_modules() if m is module)
        assert torch.equal(sd[f"{name}.weight"], module.weight.detach())


def test_a_flop_count_after_cached_evaluation_still_counts_the_generation():
    pytest.importorskip("fvcore")
    from mgtool.flops import forward_flops

    tm = _model()
    before = forward_flops(tm, (3, 16, 16), 1)
    with torch.no_grad():
        tm(X)  # weights now cached
        assert forward_flops(tm, (3, 16, 16), 1) == before
    generation = sum(m.coefficients.shape[-1] * m.weight.numel() for m, _, _ in tm._mixed)
    assert before - forward_flops(tm, (3, 16, 16), 2) == pytest.approx(generation / 2, rel=0.01)
