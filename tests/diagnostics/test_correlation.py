"""Tests for weight_correlation (covariance lemma vs Monte Carlo) and random_entries."""

import pytest
import torch

from pyro_lowrank.diagnostics import random_entries, weight_correlation
from pyro_lowrank.distributions import LowRankMatrixNormal

M, N, R = 6, 5, 3


def _posterior(dtype=torch.float64):
    a_loc, b_loc = torch.randn(M, R, dtype=dtype), torch.randn(N, R, dtype=dtype)
    a_scale = 0.2 + 0.8 * torch.rand(M, R, dtype=dtype)
    b_scale = 0.2 + 0.8 * torch.rand(N, R, dtype=dtype)
    return LowRankMatrixNormal(a_loc, a_scale, b_loc, b_scale)


def _entries():
    # (0, 0)-(0, 3) share a row, (0, 0)-(4, 0) share a column, (2, 1) and (5, 4) share nothing with (0, 0)
    return torch.tensor([[0, 0], [0, 3], [4, 0], [2, 1], [5, 4], [2, 4], [1, 1]])


def test_closed_form_is_a_correlation_matrix():
    q = _posterior()
    corr = weight_correlation(q, _entries())["closed_form"]
    assert corr.shape == (7, 7) and corr.dtype == torch.float64
    assert bool((corr.diagonal() == 1).all())
    assert torch.equal(corr, corr.T)
    assert torch.linalg.eigvalsh(corr).min() > -1e-12
    assert bool((corr.abs() <= 1 + 1e-12).all())
    # agrees with the dense covariance of vec(W)
    cov = q.covariance_matrix()
    flat = _entries()[:, 0] * N + _entries()[:, 1]
    sub = cov[flat][:, flat]
    std = sub.diagonal().sqrt()
    torch.testing.assert_close(corr, sub / std[:, None] / std[None, :])


def test_entries_sharing_neither_row_nor_column_are_exactly_uncorrelated():
    entries = _entries()
    corr = weight_correlation(_posterior(), entries)["closed_form"]
    for a in range(len(entries)):
        for b in range(len(entries)):
            share = entries[a, 0] == entries[b, 0] or entries[a, 1] == entries[b, 1]
            if not share:
                assert corr[a, b] == 0
            elif a != b:
                assert corr[a, b] != 0


def test_monte_carlo_agrees_with_closed_form():
    num_samples = 20_000
    result = weight_correlation(_posterior(), _entries(), num_samples=num_samples)
    closed, mc = result["closed_form"], result["monte_carlo"]
    assert mc.shape == closed.shape and mc.dtype == closed.dtype
    assert bool((mc.diagonal() == 1).all())
    # standard error of a sample correlation ~ (1 - rho^2) / sqrt(S); products of Gaussians have heavier tails, so
    # use the looser 1 / sqrt(S) scale
    assert ((mc - closed).abs() < 4 / num_samples**0.5).all()


def test_monte_carlo_key_only_when_requested_and_float32():
    result = weight_correlation(_posterior(torch.float32), _entries())
    assert set(result) == {"closed_form"} and result["closed_form"].dtype == torch.float32


def test_random_entries_structure():
    generator = torch.Generator().manual_seed(1)
    entries = random_entries(20, 15, 12, generator=generator)
    assert entries.shape == (12, 2) and entries.dtype == torch.long
    assert len({tuple(e) for e in entries.tolist()}) == 12
    assert bool((entries[:, 0] < 20).all()) and bool((entries[:, 1] < 15).all()) and bool((entries >= 0).all())
    i0, j0 = entries[0].tolist()
    assert (entries[:4, 0] == i0).all() and (entries[4:8, 1] == j0).all()
    same = random_entries(20, 15, 12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(entries, same)
    plain = random_entries(20, 15, 12, generator=generator, shared=False)
    assert len({tuple(e) for e in plain.tolist()}) == 12
    everything = random_entries(3, 4, 12, shared=True)
    assert len({tuple(e) for e in everything.tolist()}) == 12
    assert random_entries(1, 1, 1).tolist() == [[0, 0]]
    big = random_entries(3000, 2000, 9)  # rejection-sampling path
    assert len({tuple(e) for e in big.tolist()}) == 9


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"entries": torch.tensor([0, 1])}, ValueError, r"entries must have shape \(K, 2\) .* got \(2,\)"),
        ({"entries": torch.zeros(3, 3, dtype=torch.long)}, ValueError, r"shape \(K, 2\) .* got \(3, 3\)"),
        ({"entries": torch.zeros(0, 2, dtype=torch.long)}, ValueError, r"K >= 1 .* got \(0, 2\)"),
        ({"entries": torch.tensor([[6, 0]])}, ValueError, r"row indices in \[0, 6\) for a 6x5 weight, got \[6\]"),
        ({"entries": torch.tensor([[0, -1]])}, ValueError, r"column indices in \[0, 5\) for a 6x5 weight, got \[-1\]"),
        ({"entries": torch.zeros(2, 2)}, TypeError, "integer .* got dtype torch.float32"),
        ({"entries": [[0, 0]]}, TypeError, "entries must be a torch.LongTensor of shape \\(K, 2\\), got list"),
        ({"entries": torch.zeros(2, 2, dtype=torch.long), "num_samples": 1}, ValueError, "num_samples must be >= 2"),
        ({"entries": torch.zeros(2, 2, dtype=torch.long), "num_samples": 0}, ValueError, "positive integer, got 0"),
    ],
)
def test_weight_correlation_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        weight_correlation(_posterior(), **kwargs)


def test_batched_or_wrong_distribution_is_refused():
    batched = LowRankMatrixNormal(torch.randn(2, M, R), 0.1, torch.randn(N, R), 0.1)
    with pytest.raises(ValueError, match=r"empty batch shape .* got batch_shape \(2,\)"):
        weight_correlation(batched, _entries())
    with pytest.raises(TypeError, match="dist must be a LowRankMatrixNormal, got Normal"):
        weight_correlation(torch.distributions.Normal(0.0, 1.0), _entries())


@pytest.mark.parametrize(
    "args, match",
    [
        ((3, 4, 13), r"num_entries must be <= rows \* cols = 12, got 13"),
        ((0, 4, 1), "rows must be a positive integer, got 0"),
        ((3, 4, 0), "num_entries must be a positive integer, got 0"),
    ],
)
def test_random_entries_errors(args, match):
    with pytest.raises(ValueError, match=match):
        random_entries(*args)
