"""Tests for canonicalize: the gauge-fixed representative of (A, B) under (A, B) -> (A G, B G^-T)."""

import pytest
import torch

from pyro_lowrank.diagnostics import CanonicalFactors, canonicalize

TOL = {"atol": 1e-10, "rtol": 1e-10}


def _factors(*batch, m=7, n=5, r=3, dtype=torch.float64):
    return torch.randn(*batch, m, r, dtype=dtype), torch.randn(*batch, n, r, dtype=dtype)


def _well_conditioned(*batch, r=3):
    """Random G = Q diag(d) with Q orthogonal and d in [0.5, 2] (condition number <= 4), possibly batched."""
    q, _ = torch.linalg.qr(torch.randn(*batch, r, r, dtype=torch.float64))
    d = 0.5 + 1.5 * torch.rand(*batch, 1, r, dtype=torch.float64)
    return q * d @ torch.linalg.qr(torch.randn(*batch, r, r, dtype=torch.float64))[0]


def test_reconstructs_w_and_returns_named_tuple():
    a, b = _factors()
    result = canonicalize(a, b)
    assert isinstance(result, CanonicalFactors)
    assert result.A.shape == (7, 3) and result.B.shape == (5, 3) and result.singular_values.shape == (3,)
    torch.testing.assert_close(result.A @ result.B.T, a @ b.T, **TOL)


def test_gauge_invariance():
    a, b = _factors()
    g = _well_conditioned()
    expected = canonicalize(a, b)
    moved = canonicalize(a @ g, b @ torch.linalg.inv(g).T)
    for x, y in zip(moved, expected):
        torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-9)


def test_gauge_invariance_batched_and_broadcast():
    a, b = _factors(4, 2)
    g = _well_conditioned(4, 2)
    expected = canonicalize(a, b)
    moved = canonicalize(a @ g, b @ torch.linalg.inv(g).transpose(-1, -2))
    for x, y in zip(moved, expected):
        torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-9)
    # B shared across the batch of A: broadcast batch dims
    b0 = b[0, 0]
    result = canonicalize(a, b0)
    assert result.A.shape == (4, 2, 7, 3) and result.B.shape == (4, 2, 5, 3) and result.singular_values.shape == (4, 2, 3)
    torch.testing.assert_close(result.A @ result.B.transpose(-1, -2), a @ b0.T, **TOL)


def test_singular_values_orthogonality_and_signs():
    a, b = _factors(3, m=9, n=6, r=4)
    result = canonicalize(a, b)
    s = result.singular_values
    assert bool((s[..., 1:] <= s[..., :-1]).all())
    torch.testing.assert_close(s, torch.linalg.svdvals(a @ b.transpose(-1, -2))[..., :4], **TOL)
    for f in (result.A, result.B):
        gram = f.transpose(-1, -2) @ f
        torch.testing.assert_close(gram, torch.diag_embed(s), **TOL)
    # sign rule: the entry of largest absolute value in each column of A' is positive
    idx = result.A.abs().argmax(-2, keepdim=True)
    assert bool((result.A.gather(-2, idx) > 0).all())


def test_idempotent():
    a, b = _factors(2)
    once = canonicalize(a, b)
    twice = canonicalize(once.A, once.B)
    for x, y in zip(twice, once):
        torch.testing.assert_close(x, y, **TOL)


@pytest.mark.parametrize("m, n", [(3, 6), (6, 2)])
def test_rank_above_min_dimension_is_zero_padded(m, n):
    a, b = _factors(m=m, n=n, r=5)
    result = canonicalize(a, b)
    p = min(m, n)
    assert result.A.shape == (m, 5) and result.B.shape == (n, 5) and result.singular_values.shape == (5,)
    assert bool((result.A[:, p:] == 0).all()) and bool((result.B[:, p:] == 0).all())
    assert bool((result.singular_values[p:] == 0).all())
    torch.testing.assert_close(result.singular_values[:p], torch.linalg.svdvals(a @ b.T), **TOL)
    torch.testing.assert_close(result.A @ result.B.T, a @ b.T, **TOL)


def test_float32_follows_input_dtype():
    a, b = _factors(dtype=torch.float32)
    result = canonicalize(a, b)
    assert result.A.dtype == result.B.dtype == result.singular_values.dtype == torch.float32
    torch.testing.assert_close(result.A @ result.B.T, a @ b.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "a, b, error, match",
    [
        (torch.randn(4, 2), torch.randn(3, 3), ValueError, r"share the rank r .* A \(4, 2\) \(r=2\) and B \(3, 3\) \(r=3\)"),
        (torch.randn(4), torch.randn(3, 1), ValueError, r"A must have at least 2 dimensions .* got shape \(4,\)"),
        (torch.randn(2, 4, 2), torch.randn(3, 3, 2), ValueError, r"batch shapes of A \(2,\) and B \(3,\) do not broadcast"),
        (torch.tensor([[1.0, float("nan")]]), torch.randn(3, 2), ValueError, "A must contain only finite values, got 1 NaN"),
        (torch.ones(4, 2, dtype=torch.long), torch.randn(3, 2), TypeError, "A must have a real floating dtype, got torch.int64"),
        ([[1.0]], torch.randn(3, 1), TypeError, "A must be a torch.Tensor, got list"),
    ],
)
def test_errors(a, b, error, match):
    with pytest.raises(error, match=match):
        canonicalize(a, b)
