import torch
from torch.testing import assert_close

from mgtool.mixing import decompose, mix, orthonormal_rows, row_templates


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
