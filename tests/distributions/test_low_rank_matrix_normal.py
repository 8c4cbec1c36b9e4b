"""Tests for LowRankMatrixNormal, the pushforward of mean-field Gaussian factors through T(A, B) = A B^T.

Monte Carlo checks use the tolerance ``Z * SE + floor``: ``SE`` is the empirical standard error of the estimator
(estimated from the same draws) and ``floor`` absorbs floating-point round-off of the closed forms.
"""

from __future__ import annotations

import itertools

import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_lowrank.distributions import (
    GaussianPrior,
    LowRankMatrixNormal,
    ScaleMixturePrior,
    SingularDensityError,
)

Z = 6.0  # z-score of the Monte Carlo tolerances
NUM_DRAWS = 20_000
DTYPES = [torch.float32, torch.float64]


def _settings(max_examples: int):
    return settings(derandomize=True, deadline=None, max_examples=max_examples, database=None)


def _floor(dtype: torch.dtype, expected: torch.Tensor) -> torch.Tensor:
    """Absolute round-off allowance for closed forms evaluated in ``dtype``."""
    return 1000 * torch.finfo(dtype).eps * (1 + expected.abs())


@st.composite
def configs(draw, max_size: int = 6):
    m = draw(st.integers(1, max_size))
    n = draw(st.integers(1, max_size))
    r = draw(st.integers(1, min(m, n)))
    batch = draw(st.sampled_from([(), (2,)]))
    seed = draw(st.integers(0, 2**31 - 1))
    return m, n, r, batch, seed


def make_q(m, n, r, batch=(), dtype=torch.float64, seed=0, requires_grad=False) -> LowRankMatrixNormal:
    gen = torch.Generator().manual_seed(seed)
    a_loc = torch.randn(batch + (m, r), generator=gen, dtype=torch.float64)
    b_loc = torch.randn(batch + (n, r), generator=gen, dtype=torch.float64)
    a_scale = 0.2 + 1.3 * torch.rand(batch + (m, r), generator=gen, dtype=torch.float64)
    b_scale = 0.2 + 1.3 * torch.rand(batch + (n, r), generator=gen, dtype=torch.float64)
    params = [p.to(dtype).requires_grad_(requires_grad) for p in (a_loc, a_scale, b_loc, b_scale)]
    return LowRankMatrixNormal(*params)


def closed_form_cov(q: LowRankMatrixNormal) -> torch.Tensor:
    """``q.covariance`` evaluated on the full index grid, reshaped to ``batch + (m n, m n)`` (row-major vec)."""
    m, n = q.event_shape
    i = torch.arange(m).view(m, 1, 1, 1)
    j = torch.arange(n).view(1, n, 1, 1)
    i2 = torch.arange(m).view(1, 1, m, 1)
    j2 = torch.arange(n).view(1, 1, 1, n)
    return q.covariance(i, j, i2, j2).reshape(q.batch_shape + (m * n, m * n))


def empirical_cov_and_se(x: torch.Tensor):
    """Sample covariance of the last dimension over the first (draws) and the SE of every entry.

    The SE of ``mean_s(d_a d_b)`` is ``std_s(d_a d_b) / sqrt(S)`` with ``d`` the centred draws; it is computed for all
    pairs at once from ``E[(d_a d_b)^2] = ((d*d)^T (d*d))_ab / S``.
    """
    num = x.shape[0]
    d = x - x.mean(0)
    cov = torch.einsum("s...a,s...b->...ab", d, d) / num
    second = torch.einsum("s...a,s...b->...ab", d * d, d * d) / num
    se = ((second - cov.square()).clamp_min(0) / num).sqrt()
    return cov, se


def pair_masks(m: int, n: int):
    rows = torch.arange(m).repeat_interleave(n)
    cols = torch.arange(n).repeat(m)
    same_row = rows[:, None] == rows[None, :]
    same_col = cols[:, None] == cols[None, :]
    diagonal = same_row & same_col
    return {
        "same_row": same_row & ~diagonal,
        "same_col": same_col & ~diagonal,
        "neither": ~same_row & ~same_col,
        "diagonal": diagonal,
    }


def draws(q: LowRankMatrixNormal, seed: int, num: int = NUM_DRAWS) -> torch.Tensor:
    torch.manual_seed(seed)
    return q.sample((num,))


# ---------------------------------------------------------------------------------------------- Monte Carlo moments
@pytest.mark.parametrize("dtype", DTYPES)
@_settings(max_examples=10)
@given(config=configs())
def test_sample_mean_and_variance_match_closed_form(dtype, config):
    m, n, r, batch, seed = config
    q = make_q(m, n, r, batch, dtype, seed)
    w = draws(q, seed + 1)
    assert w.dtype == dtype
    w = w.double()

    mean_hat = w.mean(0)
    mean_se = w.std(0) / NUM_DRAWS**0.5
    mean = q.mean.double()
    assert (mean_hat - mean).abs().le(Z * mean_se + _floor(dtype, mean)).all()

    centred_sq = (w - mean_hat).square()
    var_hat = centred_sq.mean(0)
    var_se = centred_sq.std(0) / NUM_DRAWS**0.5
    variance = q.variance.double()
    assert variance.shape == batch + (m, n)
    assert (var_hat - variance).abs().le(Z * var_se + _floor(dtype, variance)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@_settings(max_examples=10)
@given(config=configs())
def test_sample_cross_covariances_match_covariance_lemma(dtype, config):
    """All pairs of entries: sharing a row, sharing a column, sharing neither (and the diagonal)."""
    m, n, r, batch, seed = config
    q = make_q(m, n, r, batch, dtype, seed)
    w = draws(q, seed + 1).double().reshape((NUM_DRAWS,) + batch + (m * n,))
    cov_hat, se = empirical_cov_and_se(w)
    expected = closed_form_cov(q).double()
    ok = (cov_hat - expected).abs() <= Z * se + _floor(dtype, expected)
    masks = pair_masks(m, n)
    for kind, mask in masks.items():
        assert ok[..., mask].all(), f"{kind} covariances disagree with the covariance lemma"
    # the closed form of entries sharing neither row nor column is exactly zero
    assert (expected[..., masks["neither"]] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@_settings(max_examples=6)
@given(config=configs())
def test_entries_sharing_no_row_or_column_are_independent(dtype, config):
    """Uncorrelated is not enough: the squares of such entries are uncorrelated too (they are independent)."""
    m, n, r, batch, seed = config
    q = make_q(m, n, r, batch, dtype, seed)
    w = draws(q, seed + 1).double()
    sq = (w - w.mean(0)).square().reshape((NUM_DRAWS,) + batch + (m * n,))
    cov_sq, se = empirical_cov_and_se(sq)
    neither = pair_masks(m, n)["neither"]
    assert (cov_sq[..., neither].abs() <= Z * se[..., neither] + 1e-4).all()


def test_independence_check_detects_dependence():
    """Sanity check of the estimator used above: entries sharing a row do have correlated squares."""
    q = LowRankMatrixNormal(torch.zeros(1, 1, dtype=torch.float64), 1.0, torch.zeros(2, 1, dtype=torch.float64), 1.0)
    w = draws(q, 0).double()
    sq = (w - w.mean(0)).square().reshape(NUM_DRAWS, 2)
    cov_sq, se = empirical_cov_and_se(sq)
    # W_00 = a b_0, W_01 = a b_1 with standard normals: Cov(W_00^2, W_01^2) = E a^4 - (E a^2)^2 = 2
    assert cov_sq[0, 1].item() > Z * se[0, 1].item()
    assert abs(cov_sq[0, 1].item() - 2.0) < Z * se[0, 1].item()


def test_covariance_lemma_hand_computed_example():
    a_loc = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    a_scale = torch.tensor([[0.5, 1.0], [2.0, 0.1]], dtype=torch.float64)
    b_loc = torch.tensor([[3.0, -1.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    b_scale = torch.tensor([[1.0, 0.5], [0.3, 0.2], [1.5, 1.0]], dtype=torch.float64)
    q = LowRankMatrixNormal(a_loc, a_scale, b_loc, b_scale)
    sa2, sb2 = a_scale.square(), b_scale.square()
    # same row (0, 1) vs (0, 2): sum_k s_A,0k^2 mu_B,1k mu_B,2k
    assert torch.allclose(q.covariance(0, 1, 0, 2), (sa2[0] * b_loc[1] * b_loc[2]).sum())
    # same column (0, 2) vs (1, 2): sum_k s_B,2k^2 mu_A,0k mu_A,1k
    assert torch.allclose(q.covariance(0, 2, 1, 2), (sb2[2] * a_loc[0] * a_loc[1]).sum())
    # variance of (1, 0)
    var = (sa2[1] * b_loc[0] ** 2 + sb2[0] * a_loc[1] ** 2 + sa2[1] * sb2[0]).sum()
    assert torch.allclose(q.covariance(1, 0, 1, 0), var)
    assert torch.allclose(q.variance[1, 0], var)
    assert q.covariance(0, 0, 1, 1).item() == 0.0
    # tensor indices broadcast: shape batch + I
    out = q.covariance(torch.tensor([0, 1]), 0, torch.tensor([[0], [1]]), 0)
    assert out.shape == (2, 2)
    assert torch.allclose(out[1, 0], q.covariance(0, 0, 1, 0))


# ---------------------------------------------------------------------------------------------- covariance_matrix
@pytest.mark.parametrize("dtype", DTYPES)
@_settings(max_examples=15)
@given(config=configs())
def test_covariance_matrix_agrees_with_covariance_and_is_psd(dtype, config):
    m, n, r, batch, seed = config
    q = make_q(m, n, r, batch, dtype, seed)
    cov = q.covariance_matrix()
    assert cov.shape == batch + (m * n, m * n)
    assert cov.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, closed_form_cov(q), **tol)
    torch.testing.assert_close(torch.diagonal(cov, dim1=-2, dim2=-1), q.variance.reshape(batch + (m * n,)), **tol)
    torch.testing.assert_close(cov, cov.transpose(-1, -2), **tol)
    eigenvalues = torch.linalg.eigvalsh(cov.double())
    assert (eigenvalues >= -1e-4 * eigenvalues.abs().max()).all()
    # a genuine covariance is positive definite here: the diagonal term s_A^2 s_B^2 > 0 is a diagonal PD part
    assert eigenvalues.min() > 0


def test_covariance_matrix_refuses_too_many_entries():
    q = make_q(3, 3, 2)
    with pytest.raises(ValueError, match="max_entries"):
        q.covariance_matrix(max_entries=8)
    assert q.covariance_matrix(max_entries=9).shape == (9, 9)
    big = make_q(65, 64, 1)  # m n = 4160 > 4096 (the default)
    with pytest.raises(ValueError, match="4160"):
        big.covariance_matrix()


# ---------------------------------------------------------------------------------------------- support and rank
@pytest.mark.parametrize("dtype", DTYPES)
@_settings(max_examples=15)
@given(config=configs())
def test_draws_have_rank_at_most_r_and_lie_in_support(dtype, config):
    m, n, r, batch, seed = config
    q = make_q(m, n, r, batch, dtype, seed)
    torch.manual_seed(seed)
    w = q.sample((50,))
    assert q.support.check(w).all()
    if dtype == torch.float64:
        ranks = torch.linalg.matrix_rank(w)
        assert (ranks <= r).all()
        assert (ranks == r).all()  # generic factors have full column rank, so the rank is exactly r
    full = torch.randn(m, n, dtype=dtype)  # full rank min(m, n) almost surely
    assert bool(q.support.check(full)) == (r >= min(m, n))
    assert q.rank == r
    assert q.is_singular == (r < min(m, n))
    assert q.support_dimension == r * (m + n - r)


def test_support_rejects_rank_r_plus_one():
    q = make_q(5, 4, 2, dtype=torch.float32)
    torch.manual_seed(0)
    a, b = torch.randn(5, 3), torch.randn(4, 3)
    assert not q.support.check(a @ b.T)
    assert q.support.check(a[:, :2] @ b[:, :2].T)
    assert q.support_dimension == 2 * (5 + 4 - 2)
    assert make_q(3, 4, 3).support_dimension == 12 and not make_q(3, 4, 3).is_singular


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("batch", [(), (2,), (3, 1)])
@pytest.mark.parametrize("sample_shape", [(), (4,), (2, 3)])
def test_shapes(batch, sample_shape):
    m, n, r = 4, 3, 2
    q = make_q(m, n, r, batch)
    assert q.batch_shape == batch and q.event_shape == (m, n)
    assert q.sample(sample_shape).shape == sample_shape + batch + (m, n)
    assert q.rsample(sample_shape).shape == sample_shape + batch + (m, n)
    a, b = q.sample_factors(sample_shape)
    assert a.shape == sample_shape + batch + (m, r)
    assert b.shape == sample_shape + batch + (n, r)
    assert q.mean.shape == q.variance.shape == batch + (m, n)
    assert q.covariance(0, 0, 1, 1).shape == batch
    assert q.factor_kl(GaussianPrior()).shape == batch

    expanded = q.expand((5,) + batch)
    assert expanded.batch_shape == (5,) + batch and expanded.event_shape == (m, n)
    assert expanded.sample(sample_shape).shape == sample_shape + (5,) + batch + (m, n)
    torch.testing.assert_close(expanded.mean, q.mean.expand((5,) + batch + (m, n)))
    torch.testing.assert_close(expanded.variance, q.variance.expand((5,) + batch + (m, n)))


def test_batch_shape_broadcasts_and_scalar_scales():
    a_loc = torch.randn(3, 1, 4, 2)
    b_loc = torch.randn(5, 3, 2)
    q = LowRankMatrixNormal(a_loc, 0.5, b_loc, torch.full((2,), 0.3))
    assert q.batch_shape == (3, 5) and q.event_shape == (4, 3)
    torch.testing.assert_close(q.mean, a_loc @ b_loc.transpose(-1, -2))
    # sum_k s_A^2 mu_B,jk^2 + s_B^2 mu_A,ik^2 + s_A^2 s_B^2 with r = 2 constant scales
    expected_var = (0.25 * b_loc.square().sum(-1).unsqueeze(-2) + 0.09 * a_loc.square().sum(-1).unsqueeze(-1)
                    + 2 * 0.25 * 0.09)
    torch.testing.assert_close(q.variance, expected_var)


def test_sample_factors_product_is_the_sample():
    q = make_q(4, 3, 2)
    torch.manual_seed(7)
    w = q.rsample((6,))
    torch.manual_seed(7)
    a, b = q.sample_factors((6,))
    torch.testing.assert_close(w, a @ b.transpose(-1, -2))


# ---------------------------------------------------------------------------------------------- reparameterisation
def test_rsample_is_reparameterised_with_exact_gradients():
    gen = torch.Generator().manual_seed(0)
    leaves = {
        "a_loc": torch.randn(4, 2, generator=gen, dtype=torch.float64),
        "a_scale": 0.5 + torch.rand(4, 2, generator=gen, dtype=torch.float64),
        "b_loc": torch.randn(3, 2, generator=gen, dtype=torch.float64),
        "b_scale": 0.5 + torch.rand(3, 2, generator=gen, dtype=torch.float64),
    }
    for leaf in leaves.values():
        leaf.requires_grad_(True)
    q = LowRankMatrixNormal(**leaves)
    assert q.has_rsample
    weights = torch.randn(4, 3, dtype=torch.float64)
    torch.manual_seed(11)
    w = q.rsample()
    torch.manual_seed(11)
    a, b = (t.detach() for t in q.sample_factors())
    (w * weights).sum().backward()
    eps_a = (a - leaves["a_loc"].detach()) / leaves["a_scale"].detach()
    eps_b = (b - leaves["b_loc"].detach()) / leaves["b_scale"].detach()
    # L = sum_ij C_ij (A B^T)_ij: dL/dA = C B, dL/dB = C^T A, and A = mu_A + s_A eps_A, B = mu_B + s_B eps_B
    assert all(leaf.grad is not None for leaf in leaves.values())
    torch.testing.assert_close(leaves["a_loc"].grad, weights @ b)
    torch.testing.assert_close(leaves["a_scale"].grad, eps_a * (weights @ b))
    torch.testing.assert_close(leaves["b_loc"].grad, weights.T @ a)
    torch.testing.assert_close(leaves["b_scale"].grad, eps_b * (weights.T @ a))


# ---------------------------------------------------------------------------------------------- log_prob
def test_log_prob_raises_singular_density_error():
    q = make_q(4, 3, 2)
    value = q.sample()
    with pytest.raises(SingularDensityError) as info:
        q.log_prob(value)
    assert isinstance(info.value, NotImplementedError)
    message = str(info.value)
    assert "singular" in message
    assert "Lebesgue" in message
    assert "factor_kl" in message
    assert str(q.support_dimension) in message


def test_log_prob_full_rank_raises_gauge_message():
    q = make_q(3, 4, 3)
    assert not q.is_singular
    with pytest.raises(NotImplementedError) as info:
        q.log_prob(q.sample())
    assert isinstance(info.value, SingularDensityError)
    message = str(info.value)
    assert "gauge" in message
    assert "Lebesgue" not in message
    assert "factor_kl" in message


# ---------------------------------------------------------------------------------------------- factor_kl
def gaussian_kl(mu_q, s_q, mu_p, s_p):
    """Elementwise KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)), written out by hand."""
    args = (torch.as_tensor(t, dtype=torch.float64) for t in (mu_q, s_q, mu_p, s_p))
    mu_q, s_q, mu_p, s_p = torch.broadcast_tensors(*args)
    return torch.log(s_p / s_q) + (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2) - 0.5


@pytest.mark.parametrize("batch", [(), (2,)])
def test_factor_kl_against_low_rank_matrix_normal_prior(batch):
    q = make_q(4, 3, 2, batch, seed=1)
    p = make_q(4, 3, 2, batch, seed=2)
    expected = (gaussian_kl(q.a_loc, q.a_scale, p.a_loc, p.a_scale).sum((-1, -2))
                + gaussian_kl(q.b_loc, q.b_scale, p.b_loc, p.b_scale).sum((-1, -2)))
    torch.testing.assert_close(q.factor_kl(p), expected)
    assert (q.factor_kl(p) > 0).all()


@pytest.mark.parametrize("batch", [(), (2,)])
def test_factor_kl_against_gaussian_prior(batch):
    q = make_q(5, 3, 2, batch, seed=3)
    prior = GaussianPrior(scale=0.7, loc=0.2).double()
    expected = (gaussian_kl(q.a_loc, q.a_scale, 0.2, 0.7).sum((-1, -2))
                + gaussian_kl(q.b_loc, q.b_scale, 0.2, 0.7).sum((-1, -2)))
    torch.testing.assert_close(q.factor_kl(prior), expected)
    # a tuple of scalar-event distributions is broadcast to every entry
    loc = torch.tensor(0.2, dtype=torch.float64)
    tup = (dist.Normal(loc, 0.7), dist.Normal(loc, 0.7))
    torch.testing.assert_close(q.factor_kl(tup), expected)


def test_factor_kl_of_q_with_itself_is_zero():
    q = make_q(4, 3, 2, (2,), seed=4)
    torch.testing.assert_close(q.factor_kl(q), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)


def test_factor_kl_scale_mixture_prior_monte_carlo():
    """No closed form: the library's MC estimate agrees with a large-sample estimate computed by hand."""
    pi, s1, s2 = 0.5, 1.0, 0.05
    q = make_q(3, 2, 2, seed=5)
    prior = ScaleMixturePrior(pi, s1, s2).double()

    def log_mixture(x):
        n1 = torch.distributions.Normal(0.0, s1).log_prob(x)
        n2 = torch.distributions.Normal(0.0, s2).log_prob(x)
        return torch.log(pi * n1.exp() + (1 - pi) * n2.exp())

    def per_draw_log_ratio(loc, scale, num):
        x = loc + scale * torch.randn((num,) + loc.shape, dtype=torch.float64)
        log_q = torch.distributions.Normal(loc, scale).log_prob(x).sum((-1, -2))
        return log_q - log_mixture(x).sum((-1, -2))

    torch.manual_seed(100)
    ref_num = 400_000
    ratio_a = per_draw_log_ratio(q.a_loc, q.a_scale, ref_num)
    ratio_b = per_draw_log_ratio(q.b_loc, q.b_scale, ref_num)
    reference = ratio_a.mean() + ratio_b.mean()
    ref_var = (ratio_a.var() + ratio_b.var()) / ref_num

    num_samples = 4000
    torch.manual_seed(200)
    estimate = q.factor_kl(prior, num_samples=num_samples)
    est_var = (ratio_a.var() + ratio_b.var()) / num_samples
    assert abs(estimate - reference) <= Z * (est_var + ref_var).sqrt()
    # and it is far from the KL against the wide component alone (the mixture matters)
    wide = q.factor_kl(GaussianPrior(s1).double())
    assert abs(wide - reference) > Z * (est_var + ref_var).sqrt()


def test_factor_kl_monte_carlo_is_reparameterised():
    leaves = [torch.randn(3, 2), torch.rand(3, 2) + 0.5, torch.randn(2, 2), torch.rand(2, 2) + 0.5]
    for leaf in leaves:
        leaf.requires_grad_(True)
    LowRankMatrixNormal(*leaves).factor_kl(ScaleMixturePrior(), num_samples=16).backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


@pytest.mark.parametrize("prior", [3.0, "gaussian", None, [dist.Normal(0.0, 1.0)]])
def test_factor_kl_bad_prior_type(prior):
    with pytest.raises(TypeError, match="prior"):
        make_q(3, 2, 1).factor_kl(prior)


def test_factor_kl_prior_with_wrong_event_shape():
    q = make_q(3, 2, 1)
    bad = (dist.Normal(torch.zeros(4, 4), 1.0).to_event(2), dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="event shape"):
        q.factor_kl(bad)


# ---------------------------------------------------------------------------------------------- argument validation
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([[1.0], [0.0], [1.0]])])
def test_bad_a_scale(bad):
    with pytest.raises(ValueError, match="a_scale"):
        LowRankMatrixNormal(torch.zeros(3, 1), bad, torch.zeros(2, 1), 1.0)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), torch.tensor([[1.0], [-2.0]])])
def test_bad_b_scale(bad):
    with pytest.raises(ValueError, match="b_scale"):
        LowRankMatrixNormal(torch.zeros(3, 1), 1.0, torch.zeros(2, 1), bad)


def test_mismatched_ranks():
    with pytest.raises(ValueError) as info:
        LowRankMatrixNormal(torch.zeros(3, 2), 1.0, torch.zeros(4, 3), 1.0)
    message = str(info.value)
    assert "a_loc" in message and "b_loc" in message
    assert "r=2" in message and "r=3" in message


def test_factors_must_be_matrices():
    with pytest.raises(ValueError, match="a_loc"):
        LowRankMatrixNormal(torch.zeros(3), 1.0, torch.zeros(4, 1), 1.0)


def test_batch_shapes_must_broadcast():
    with pytest.raises(ValueError, match="broadcast"):
        LowRankMatrixNormal(torch.zeros(2, 3, 1), 1.0, torch.zeros(3, 4, 1), 1.0)


@pytest.mark.parametrize("index", [(3, 0, 0, 0), (0, 2, 0, 0), (0, 0, -1, 0), (0, 0, 0, torch.tensor([0, 5]))])
def test_covariance_index_out_of_range(index):
    q = make_q(3, 2, 1)
    with pytest.raises(ValueError, match="must index into"):
        q.covariance(*index)


def test_combinatorics_of_pair_masks():
    """The pair classification used by the Monte Carlo tests partitions all ordered pairs of entries."""
    m, n = 3, 4
    masks = pair_masks(m, n)
    total = sum(mask.sum().item() for mask in masks.values())
    assert total == (m * n) ** 2
    assert masks["same_row"].sum() == m * n * (n - 1)
    assert masks["same_col"].sum() == m * n * (m - 1)
    assert masks["neither"].sum() == m * n * (m - 1) * (n - 1)
    for (k1, v1), (k2, v2) in itertools.combinations(masks.items(), 2):
        assert not (v1 & v2).any(), (k1, k2)
