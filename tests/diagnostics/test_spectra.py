"""Tests for the spectral diagnostics: singular spectra, Eckart-Young-Mirsky tail energies, suggested rank, EYM bound."""

import pytest
import torch
from torch import nn

from pyro_lowrank.diagnostics import (
    energy_fraction,
    eym_bound,
    singular_spectrum,
    suggest_rank,
    tail_energy,
)
from pyro_lowrank.distributions import LowRankMatrixNormal
from pyro_lowrank.nn import LowRankLinear


def _matrix_with_spectrum(values, m=8, n=6):
    """W = U diag(values) V^T with random orthonormal U (m x p) and V (n x p)."""
    p = len(values)
    u = torch.linalg.qr(torch.randn(m, p, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, p, dtype=torch.float64))[0]
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


def _truncate(w, k):
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u[:, :k] @ torch.diag(s[:k]) @ vh[:k]


def test_singular_spectrum_of_tensor_linear_and_batch():
    w = torch.randn(3, 7, 4, dtype=torch.float64)
    torch.testing.assert_close(singular_spectrum(w), torch.linalg.svdvals(w))
    linear = nn.Linear(5, 3)
    values = singular_spectrum(linear)
    assert values.shape == (3,) and not values.requires_grad
    torch.testing.assert_close(values, torch.linalg.svdvals(linear.weight.detach()))


@pytest.mark.parametrize("m, n, r", [(9, 6, 3), (3, 5, 4)])
def test_singular_spectrum_of_low_rank_matrix_normal_matches_dense_mean(m, n, r):
    a, b = torch.randn(2, m, r, dtype=torch.float64), torch.randn(2, n, r, dtype=torch.float64)
    q = LowRankMatrixNormal(a, 0.1, b, 0.2)
    values = singular_spectrum(q)
    p = min(m, n, r)
    assert values.shape == (2, r)
    torch.testing.assert_close(values[..., :p], torch.linalg.svdvals(q.mean)[..., :p], atol=1e-10, rtol=1e-10)
    assert bool((values[..., p:] == 0).all())


def test_tail_energy_is_the_best_rank_k_error():
    w = torch.randn(8, 6, dtype=torch.float64)
    tail = tail_energy(singular_spectrum(w))
    assert tail.shape == (7,)
    for k in range(7):
        best = torch.linalg.matrix_norm(w - _truncate(w, k))
        torch.testing.assert_close(tail[k], best, atol=1e-10, rtol=1e-10)
        if 0 < k < 6:  # Eckart-Young-Mirsky: no rank-k matrix does better, random or near the optimum
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            left, right = u[:, :k] * s[:k].sqrt(), vh[:k].T * s[:k].sqrt()
            for _ in range(5):
                other = torch.randn(8, k, dtype=torch.float64) @ torch.randn(k, 6, dtype=torch.float64)
                near = (left + 1e-3 * torch.randn(8, k, dtype=torch.float64)) @ (
                    right + 1e-3 * torch.randn(6, k, dtype=torch.float64)).T
                assert torch.linalg.matrix_norm(w - other) >= tail[k]
                assert torch.linalg.matrix_norm(w - near) >= tail[k] - 1e-12
    torch.testing.assert_close(tail[0], torch.linalg.matrix_norm(w))
    assert tail[-1] == 0
    relative = tail_energy(singular_spectrum(w), relative=True)
    torch.testing.assert_close(relative, tail / torch.linalg.matrix_norm(w))


def test_tail_energy_and_energy_fraction_batched_and_zero_matrix():
    values = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    tail = tail_energy(values)
    torch.testing.assert_close(tail[0], torch.tensor([14.0, 5.0, 1.0, 0.0]).sqrt())
    assert bool((tail[1] == 0).all()) and bool((tail_energy(values, relative=True)[1] == 0).all())
    fraction = energy_fraction(values)
    torch.testing.assert_close(fraction[0], torch.tensor([0.0, 9.0, 13.0, 14.0]) / 14)
    assert bool((fraction[1] == 1).all())


def test_energy_fraction_monotone_and_ends_at_one():
    values = singular_spectrum(torch.randn(4, 30, 20, dtype=torch.float64))
    fraction = energy_fraction(values)
    assert fraction.shape == (4, 21)
    assert bool((fraction[..., 1:] >= fraction[..., :-1]).all())
    assert bool((fraction[..., 0] == 0).all()) and bool((fraction[..., -1] == 1).all())
    torch.testing.assert_close(fraction, 1 - tail_energy(values, relative=True).square())


def test_suggest_rank_on_a_known_spectrum():
    spectrum = [4.0, 2.0, 1.0, 0.5, 0.25]  # squares 16, 4, 1, .25, .0625: fractions .754, .942, .989, .997, 1
    w = _matrix_with_spectrum(spectrum)
    assert suggest_rank(w, energy=0.5) == 1
    assert suggest_rank(w, energy=0.9) == 2
    assert suggest_rank(w, energy=0.95) == 3
    assert suggest_rank(w, energy=0.995) == 4
    assert suggest_rank(w, energy=1.0) in (5, 6)  # the sixth singular value is zero up to round-off
    assert suggest_rank(torch.tensor(spectrum), energy=0.9) == 2
    assert suggest_rank(nn.Linear(4, 3)) in (1, 2, 3)
    mean_rank2 = LowRankMatrixNormal(torch.randn(6, 4), 0.1, torch.randn(5, 4) * torch.tensor([1.0, 1.0, 0.0, 0.0]), 0.1)
    assert suggest_rank(mean_rank2, energy=0.999) == 2


def test_eym_bound_bounds_a_lipschitz_loss():
    w = torch.randn(10, 8, dtype=torch.float64) @ torch.diag(torch.logspace(0, -2, 8, dtype=torch.float64))
    values = singular_spectrum(w)
    radius = 2.5
    x = torch.randn(500, 8, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True) * radius * torch.rand(500, 1, dtype=torch.float64)
    for k in range(9):
        w_k = _truncate(w, k)
        gap = ((x @ w.T).norm(dim=-1) - (x @ w_k.T).norm(dim=-1)).abs()  # l(y) = ||y||, 1-Lipschitz
        bound = eym_bound(values, k, lipschitz=1.0, input_norm=radius)
        assert isinstance(bound, float)
        assert gap.max().item() <= bound + 1e-12
        assert eym_bound(values, k, lipschitz=3.0, input_norm=radius) == pytest.approx(3 * bound)
    assert eym_bound(values, 8) == 0.0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: singular_spectrum(LowRankLinear(4, 3, 2)), TypeError,
         r"\(for a LowRankLinear pass layer.weight_posterior\(guide\)\), got LowRankLinear"),
        (lambda: singular_spectrum([[1.0]]), TypeError, "a torch.nn.Linear or a LowRankMatrixNormal, got list"),
        (lambda: singular_spectrum(torch.ones(3)), ValueError, r"at least 2 dimensions, got \(3,\)"),
        (lambda: singular_spectrum(torch.ones(3, 3, dtype=torch.long)), TypeError, "floating-point tensor, got dtype torch.int64"),
        (lambda: tail_energy(torch.tensor([1.0, 2.0])), ValueError, r"descending order .* got \[1.0, 2.0\]"),
        (lambda: tail_energy(torch.tensor([1.0, -2.0])), ValueError, "must be >= 0, got minimum -2"),
        (lambda: energy_fraction(torch.tensor([float("inf")])), ValueError, "only finite values, got 0 NaN and 1 Inf"),
        (lambda: energy_fraction(torch.tensor(1.0)), ValueError, r"shape \(..., p\) with p >= 1, got \(\)"),
        (lambda: suggest_rank(torch.tensor([2.0, 1.0]), energy=0.0), ValueError, r"energy must be a number in \(0, 1\], got 0.0"),
        (lambda: suggest_rank(torch.tensor([2.0, 1.0]), energy=1.5), ValueError, r"energy must be a number in \(0, 1\], got 1.5"),
        (lambda: suggest_rank(torch.randn(2, 4, 3)), ValueError, r"single matrix .* shape \(2, 3\)"),
        (lambda: eym_bound(torch.tensor([2.0, 1.0]), 3), ValueError, r"rank must be an integer in \[0, p\] = \[0, 2\], got 3"),
        (lambda: eym_bound(torch.tensor([2.0, 1.0]), 1.0), ValueError, r"rank must be an integer .* got 1.0"),
        (lambda: eym_bound(torch.tensor([2.0, 1.0]), 1, lipschitz=-1.0), ValueError, "lipschitz must be a finite number >= 0, got -1.0"),
        (lambda: eym_bound(torch.tensor([2.0, 1.0]), 1, input_norm=float("nan")), ValueError, "input_norm must be a finite number >= 0"),
        (lambda: eym_bound(torch.ones(2, 2), 1), ValueError, r"singular_values must have shape \(p,\), got \(2, 2\)"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_bayesian_pyro_linear_is_refused():
    import pyro.distributions as dist
    from pyro.nn import PyroModule, PyroSample

    layer = PyroModule[torch.nn.Linear](4, 3)
    layer.weight = PyroSample(dist.Normal(0.0, 1.0).expand([3, 4]).to_event(2))
    with pytest.raises(TypeError, match="PyroSample"):
        singular_spectrum(layer)


# ---------------------------------------------------------------- principal angles and subspace alignment
def test_principal_angle_cosines_of_a_hand_built_pair():
    """span{e1, e2} against span{cos t e1 + sin t e3, (e2 + e4)/sqrt 2}: the two directions are orthogonal and each
    meets span{e1, e2} at a known angle, so the cosines are cos t and 1/sqrt(2), whatever the scaling or mixing of
    the given columns."""
    import math

    from pyro_lowrank.diagnostics import principal_angle_cosines

    t = 0.4
    e = torch.eye(5, dtype=torch.float64)
    first = torch.stack([e[0], e[1]], dim=1)
    second = torch.stack([math.cos(t) * e[0] + math.sin(t) * e[2], (e[1] + e[3]) / math.sqrt(2.0)], dim=1)
    expected = torch.tensor(sorted([math.cos(t), 1.0 / math.sqrt(2.0)], reverse=True), dtype=torch.float64)
    torch.testing.assert_close(principal_angle_cosines(first, second), expected)
    mixed = second @ torch.tensor([[2.0, 1.0], [0.5, -3.0]], dtype=torch.float64)  # same span, other basis
    torch.testing.assert_close(principal_angle_cosines(3.0 * first, mixed), expected)
    torch.testing.assert_close(principal_angle_cosines(second, first), expected)  # symmetric


def test_principal_angle_cosines_edge_cases_and_numerical_rank():
    from pyro_lowrank.diagnostics import principal_angle_cosines

    e = torch.eye(4, dtype=torch.float64)
    assert torch.equal(principal_angle_cosines(e[:, :2], e[:, 2:]), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(principal_angle_cosines(e[:, :1], e[:, :3]), torch.ones(1, dtype=torch.float64))
    dependent = torch.stack([e[0], 2.0 * e[0], e[1]], dim=1)  # rank 2: two cosines, not three
    assert principal_angle_cosines(dependent, e).shape == (2,)
    g = torch.Generator().manual_seed(0)
    values = principal_angle_cosines(torch.randn(30, 5, generator=g), torch.randn(30, 7, generator=g))
    assert values.shape == (5,) and bool((values >= 0).all() and (values <= 1).all())
    assert bool((values[1:] <= values[:-1]).all())
    with pytest.raises(ValueError, match="same space R\\^d, got d = 4 and 3"):
        principal_angle_cosines(e, torch.ones(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="basis1 must have shape \\(d, k\\)"):
        principal_angle_cosines(torch.ones(4), e)
    with pytest.raises(ValueError, match="zero subspace"):
        principal_angle_cosines(torch.zeros(4, 2), e)
    with pytest.raises(TypeError, match="basis2 must be a real floating-point"):
        principal_angle_cosines(e, torch.ones(4, 2, dtype=torch.long))


def test_principal_angles_chance_level_of_random_subspaces():
    """E sum cos^2 = p q / d for independent uniformly random subspaces."""
    from pyro_lowrank.diagnostics import principal_angle_cosines

    g = torch.Generator().manual_seed(1)
    d, p, q = 40, 4, 6
    sums = [float(principal_angle_cosines(torch.randn(d, p, generator=g, dtype=torch.float64),
                                          torch.randn(d, q, generator=g, dtype=torch.float64)).square().sum())
            for _ in range(400)]
    assert sum(sums) / len(sums) == pytest.approx(p * q / d, rel=0.08)


def test_singular_subspace_alignment_identical_rotated_and_orthogonal():
    from pyro_lowrank.diagnostics import singular_subspace_alignment

    torch.manual_seed(0)
    w = _matrix_with_spectrum([5.0, 3.0, 1.0, 0.5], m=8, n=6)
    same = singular_subspace_alignment(w, 2.0 * w, 2)
    torch.testing.assert_close(same.left_cosines, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(same.right_cosines, torch.ones(2, dtype=torch.float64))
    best = float(energy_fraction(singular_spectrum(w))[2])
    for value in (same.captured_energy, same.left_captured_energy, same.right_captured_energy):
        assert value == pytest.approx(best)
    # W2 whose top-2 subspaces are the bottom of W: orthogonal top subspaces, little captured energy
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    flipped = u @ torch.diag(s.flip(0)) @ vh
    other = singular_subspace_alignment(w, flipped, 2)
    assert float(other.left_cosines.max()) < 1e-10 and float(other.right_cosines.max()) < 1e-10
    expected = float((s.flip(0)[:2].square().sum()) / s.square().sum())  # flipped's energy on W's top pair
    assert other.captured_energy == pytest.approx(expected)
    for k in range(1, 5):  # Eckart-Young-Mirsky: never above the best rank-k energy
        result = singular_subspace_alignment(torch.randn(8, 6, dtype=torch.float64), w, k)
        best_k = float(energy_fraction(singular_spectrum(w))[k])
        assert 0.0 <= result.captured_energy <= min(result.left_captured_energy, result.right_captured_energy) + 1e-12
        assert max(result.left_captured_energy, result.right_captured_energy) <= best_k + 1e-12  # Ky Fan
    # one side shared, the other orthogonal: the one-sided energy is the best one, the two-sided one is 0
    half = u @ torch.diag(s) @ torch.cat([vh[2:], vh[:2]])  # W's left singular vectors, its right ones rotated
    mixed = singular_subspace_alignment(w, half, 2)
    assert mixed.left_captured_energy == pytest.approx(best) and mixed.captured_energy == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(mixed.left_cosines, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="rank must be an integer in \\[1, min\\(m, n\\)\\] = \\[1, 6\\], got 7"):
        singular_subspace_alignment(w, w, 7)
    with pytest.raises(ValueError, match="same shape"):
        singular_subspace_alignment(w, w.T, 2)
