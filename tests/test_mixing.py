import pytest
import torch
from torch.testing import assert_close

from mgtool.mixing import decompose, mix, orthonormal_rows, reduce_product, row_templates


def _bank(sets: int, k: int, tile: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(sets, k, *tile, generator=torch.Generator().manual_seed(seed))


def test_mix_1x1_is_linear_combination():
    bank = _bank(1, 3, (4, 5, 3, 3))
    coefs = torch.tensor([[[0.5, -1.0, 2.0]]])
    expected = 0.5 * bank[0, 0] - bank[0, 1] + 2.0 * bank[0, 2]
    assert_close(mix(bank, coefs, ((0,),)), expected, rtol=1e-6, atol=1e-6)


def test_mix_grid_places_tiles_by_row_set():
    bank = _bank(2, 2, (3, 4))
    coefs = torch.randn(2, 2, 2)
    w = mix(bank, coefs, ((0,), (1,)))
    assert w.shape == (6, 8)
    for r in range(2):
        for c in range(2):
            tile = coefs[r, c, 0] * bank[r, 0] + coefs[r, c, 1] * bank[r, 1]
            assert_close(w[r * 3 : (r + 1) * 3, c * 4 : (c + 1) * 4], tile, rtol=1e-6, atol=1e-6)


def test_mix_single_row_over_all_sets_concatenates_sets():
    bank = _bank(2, 2, (3, 4))
    coefs = torch.randn(1, 2, 4)
    w = mix(bank, coefs, ((0, 1),))
    flat = bank.reshape(4, 3, 4)
    for c in range(2):
        tile = torch.einsum("k,kij->ij", coefs[0, c], flat)
        assert_close(w[:, c * 4 : (c + 1) * 4], tile, rtol=1e-6, atol=1e-6)


def test_row_templates_common_layouts_are_views():
    bank = _bank(2, 3, (4, 4))
    single = _bank(1, 3, (4, 4))
    for b, rows in [(bank, ((0,), (1,))), (bank, ((0, 1),)), (single, ((0,), (0,))), (single, ((0,),))]:
        view = row_templates(b, rows)
        assert view.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    gathered = row_templates(bank, ((1,), (0,)))
    assert torch.equal(gathered[0], bank[1]) and torch.equal(gathered[1], bank[0])


def test_mix_gradients_reach_templates_and_coefficients():
    bank = _bank(2, 2, (3, 3)).requires_grad_()
    coefs = torch.randn(2, 2, 2, requires_grad=True)
    mix(bank, coefs, ((0,), (1,))).square().sum().backward()
    assert bank.grad is not None and bank.grad.abs().sum() > 0
    assert coefs.grad is not None and coefs.grad.abs().sum() > 0


def test_orthonormal_rows():
    a = orthonormal_rows(3, 5, torch.Generator().manual_seed(1))
    assert_close(a @ a.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_decompose_is_exact_and_templates_are_diverse():
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)]
    templates, coefs = decompose(weights, 2, gen)
    assert templates.shape == (4, 8, 4, 3, 3) and coefs.shape == (2, 4)
    for w, a in zip(weights, coefs):
        assert_close(torch.einsum("k,k...->...", a, templates), w, rtol=1e-5, atol=1e-6)
    # templates span more than the two weights: rank 4, not 2
    assert torch.linalg.matrix_rank(templates.reshape(4, -1).double()) == 4


def test_mix_with_a_layer_dimension_equals_mixing_each_layer():
    bank = _bank(2, 3, (4, 5, 3, 3))
    coefs = torch.randn(3, 2, 2, 3)
    batched = mix(bank, coefs, ((0,), (1,)))
    assert batched.shape == (3, 8, 10, 3, 3)
    for layer in range(3):
        assert_close(batched[layer], mix(bank, coefs[layer], ((0,), (1,))), rtol=1e-6, atol=1e-6)


def _einsum_mix(bank: torch.Tensor, coefs: torch.Tensor, row_sets) -> torch.Tensor:
    """The defining formula, one einsum (mgtool's first implementation)."""
    t = row_templates(bank, row_sets)
    layers, rows, cols = coefs.shape[:3]
    out_t, in_t, *rest = t.shape[2:]
    return torch.einsum("lrck,rkoi...->lroci...", coefs, t).reshape(layers, rows * out_t, cols * in_t, *rest)


@pytest.mark.parametrize("sets,row_sets,cols", [
    (1, ((0,),), 1), (2, ((0,), (1,)), 2), (2, ((0, 1),), 2), (1, ((0,), (0,)), 3), (2, ((1,), (0,)), 1),
])
def test_mix_forward_and_gradients_equal_the_einsum(sets, row_sets, cols):
    bank = _bank(sets, 2, (3, 4, 3, 3)).double()
    per_row = len(row_sets[0]) * 2
    coefs = torch.randn(3, len(row_sets), cols, per_row, dtype=torch.float64)
    grad = torch.randn(3, len(row_sets) * 3, cols * 4, 3, 3, dtype=torch.float64)
    results = []
    for fn in (mix, _einsum_mix):
        b, c = bank.clone().requires_grad_(), coefs.clone().requires_grad_()
        w = fn(b, c, row_sets)
        w.backward(grad)
        results.append((w.detach(), b.grad, c.grad))
    for got, want in zip(*results):
        assert_close(got, want, rtol=1e-12, atol=1e-12)
    b, c = bank.clone().requires_grad_(), coefs.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda b, c: mix(b, c, row_sets), (b, c))


def test_mix_runs_in_fp32_under_autocast_and_skips_unneeded_gradients():
    bank = _bank(1, 4, (6, 5)).requires_grad_()
    coefs = torch.randn(2, 1, 1, 4)  # frozen coefficients
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = mix(bank, coefs, ((0,),))
    assert w.dtype == torch.float32
    assert_close(w, _einsum_mix(bank.detach(), coefs, ((0,),)), rtol=1e-6, atol=1e-6)
    w.sum().backward()
    assert bank.grad is not None and coefs.grad is None


@pytest.mark.parametrize("n", [4 * 16, 4 * 16 + 5, 40])
def test_reduce_product_in_chunks_equals_one_product(n):
    a, b = torch.randn(2, 3, n, dtype=torch.float64), torch.randn(2, 4, n, dtype=torch.float64)
    want = a @ b.transpose(1, 2)
    assert_close(reduce_product(a, b, chunk=16), want, rtol=1e-12, atol=1e-12)
    assert_close(reduce_product(a, b), want, rtol=1e-12, atol=1e-12)


def test_a_template_mixing_net_traces_under_torch_compile():
    """``--compile`` traces the generation's autograd Function (one output per layer of a bank
    group); aot_eager checks the tracing without a C++ compiler."""
    from mgtool.archs import ArchSpec, resolve_spec
    from mgtool.templates import fresh_template_mixing

    model = fresh_template_mixing(resolve_spec(ArchSpec("resnet18", 0.125, 10, 3, {})), seed=0).train()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    eager = model(x)
    eager.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager")(x)
    compiled.square().sum().backward()
    assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-5)


def _generate(model) -> list[torch.Tensor]:
    model.generate_weights()
    return [m.weight for m, _, _ in model._mixed]


def check_compiled_generation(backend: str, device: str = "cpu", kernel: str = "torch") -> None:
    """The whole generation of a model (every bank group, forward and backward) captured as one
    graph (``fullgraph=True``: no graph break, no Python-side work left per step) equals eager."""
    from mgtool.archs import ArchSpec
    from mgtool.templates import fresh_template_mixing

    model = fresh_template_mixing(ArchSpec("tiny-cnn", 1.0, 5, 3, {}), seed=0).to(device).train()
    assert model.set_mixing_kernel(kernel, device) == kernel
    eager = _generate(model)
    grads = [torch.randn(w.shape, generator=torch.Generator().manual_seed(i)).to(device)
             for i, w in enumerate(eager)]
    torch.autograd.backward(eager, grads)
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(_generate, backend=backend, fullgraph=True)(model)
    torch.autograd.backward(compiled, grads)
    for got, ref in zip(compiled, eager, strict=True):
        assert_close(got, ref.detach(), rtol=1e-5, atol=1e-6)
    assert set(want) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if name in want:
            assert_close(p.grad, want[name], rtol=1e-5, atol=1e-6)


def test_generation_compiles_as_one_graph_aot_eager():
    check_compiled_generation("aot_eager")


@pytest.mark.slow  # inductor's C++ compile: about a minute on the 2-core CI machine
def test_generation_compiles_as_one_graph_inductor():
    check_compiled_generation("inductor")
