"""Factor-space Laplace: exact covariances of every structure, the linearised predictive, tuning, the MAP fit."""

import math

import pyro
import pytest
import torch

from pyro_lowrank.inference import FactorGGN
from pyro_lowrank.inference.factor_laplace import (FactorLaplace, fit_map, lowrank_scale_noise,
                                                   predictive_log_density)
from pyro_lowrank.models import LowRankMLP
from toy_data import latent_site_values


@pytest.fixture
def regression():
    torch.manual_seed(0)
    model = LowRankMLP(2, [6], rank=[2], output_rank=1, likelihood="gaussian", noise_scale=0.3).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    return model, latent_site_values(model, x), x


@pytest.fixture
def classification():
    torch.manual_seed(1)
    model = LowRankMLP(3, [5], rank=[2], output_rank=3, likelihood="categorical", num_classes=3).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    return model, latent_site_values(model, x), x


def _covariance(laplace):
    """Sigma from the sampler's linear map: delta = eps @ R, so Cov = R^T R."""
    size = laplace.layout.num_parameters
    root = laplace.scale_noise(torch.eye(size, dtype=torch.float64))
    return root.T @ root


@pytest.mark.parametrize("case", ["regression", "classification"])
def test_full_structure_is_the_inverse_posterior_precision(case, request):
    model, values, x = request.getfixturevalue(case)
    likelihood = "gaussian" if case == "regression" else "categorical"
    laplace = FactorLaplace(model, values, x, likelihood=likelihood, noise_scale=0.3, structure="full",
                            prior_precision=2.5)
    dense = FactorGGN(model, values, x, likelihood=likelihood, noise_scale=0.3).dense()
    expected = torch.linalg.inv(dense + 2.5 * torch.eye(dense.shape[0], dtype=torch.float64))
    torch.testing.assert_close(_covariance(laplace), expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(laplace.posterior_variance(), expected.diagonal(), rtol=1e-9, atol=1e-11)


def test_lowrank_structure_matches_its_closed_form_and_full_when_k_covers_the_rank(regression):
    model, values, x = regression
    dense = FactorGGN(model, values, x, noise_scale=0.3).dense()
    spectrum = torch.linalg.eigvalsh(dense)
    rank = int((spectrum > 1e-9 * spectrum.max()).sum())
    assert rank <= x.shape[0] < dense.shape[0] - 1  # N·O = 8 bounds the GGN's rank: a large kernel
    alpha = 0.7
    full = FactorLaplace(model, values, x, noise_scale=0.3, structure="full", prior_precision=alpha)
    covering = FactorLaplace(model, values, x, noise_scale=0.3, structure="lowrank", rank=rank, prior_precision=alpha)
    torch.testing.assert_close(_covariance(covering), _covariance(full), rtol=1e-6, atol=1e-8)
    k = 3
    lowrank = FactorLaplace(model, values, x, noise_scale=0.3, structure="lowrank", rank=k, prior_precision=alpha)
    u, lam = lowrank.eigenvectors, lowrank.eigenvalues
    torch.testing.assert_close(lam, spectrum.flip(0)[:k], rtol=1e-8, atol=1e-10)
    eye = torch.eye(u.shape[0], dtype=torch.float64)
    expected = u @ torch.diag(1 / (lam + alpha)) @ u.T + (eye - u @ u.T) / alpha
    torch.testing.assert_close(_covariance(lowrank), expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(lowrank.posterior_variance(), expected.diagonal(), rtol=1e-9, atol=1e-11)
    image = FactorLaplace(model, values, x, noise_scale=0.3, structure="lowrank", rank=k, prior_precision=alpha,
                          complement="none")
    torch.testing.assert_close(_covariance(image), u @ torch.diag(1 / (lam + alpha)) @ u.T, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", ["regression", "classification"])
def test_diag_structure_uses_the_exact_ggn_diagonal(case, request):
    model, values, x = request.getfixturevalue(case)
    likelihood = "gaussian" if case == "regression" else "categorical"
    ggn = FactorGGN(model, values, x, likelihood=likelihood, noise_scale=0.3)
    dense = ggn.dense()
    torch.testing.assert_close(ggn.sqrt_rows(chunk_size=5).T @ ggn.sqrt_rows(chunk_size=5), dense,
                               rtol=1e-9, atol=1e-11)
    laplace = FactorLaplace(model, values, x, likelihood=likelihood, noise_scale=0.3, structure="diag",
                            prior_precision=1.5, chunk_size=4)
    torch.testing.assert_close(laplace.ggn_diagonal, dense.diagonal(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(_covariance(laplace), torch.diag(1 / (dense.diagonal() + 1.5)), rtol=1e-9, atol=1e-11)


def test_samples_have_the_posterior_moments(regression):
    model, values, x = regression
    laplace = FactorLaplace(model, values, x, noise_scale=0.3, structure="lowrank", rank=4, prior_precision=3.0)
    draws = laplace.sample(20000, generator=torch.Generator().manual_seed(0))
    standard_error = (laplace.posterior_variance() / 20000).sqrt()
    assert ((draws.mean(0) - laplace.mean).abs() < 5 * standard_error).all()
    ratio = draws.var(0) / laplace.posterior_variance()
    assert ((ratio - 1).abs() < 0.06).all()
    values_draw = laplace.sample_values(3)
    assert {k: v.shape[1:] for k, v in values_draw.items()} == {k: v.shape for k, v in values.items()}


@pytest.mark.parametrize("case", ["regression", "classification"])
def test_linearised_outputs_are_the_first_order_taylor_model(case, request):
    model, values, x = request.getfixturevalue(case)
    likelihood = "gaussian" if case == "regression" else "categorical"
    laplace = FactorLaplace(model, values, x, likelihood=likelihood, noise_scale=0.3, structure="diag")
    x_new = torch.randn(5, x.shape[1], dtype=torch.float64)
    ggn_new = FactorGGN(model, values, x_new, likelihood=likelihood)
    directions = torch.randn(3, laplace.layout.num_parameters, dtype=torch.float64)
    linear = laplace.outputs(x_new, laplace.mean + directions, linearised=True)
    for s in range(3):
        expected = ggn_new.outputs + ggn_new.jvp(directions[s])
        torch.testing.assert_close(linear[s].reshape(expected.shape), expected, rtol=1e-10, atol=1e-10)
    # the sampled network agrees to second order: the gap shrinks like |delta|^2
    gaps = []
    for size in (1e-2, 1e-3):
        step = laplace.mean + size * directions
        gaps.append((laplace.outputs(x_new, step) - laplace.outputs(x_new, step, linearised=True)).abs().max())
    assert 50 < gaps[0] / gaps[1] < 200


def test_predictive_log_density_is_the_mixture_density():
    f = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0.5, 0.0], dtype=torch.float64)
    normal = torch.distributions.Normal(f, 0.5)
    expected = normal.log_prob(y).exp().mean(0).log()
    torch.testing.assert_close(predictive_log_density(f, y, "gaussian", 0.5), expected)
    logits = torch.randn(4, 3, 5, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2])
    expected = logits.softmax(-1).mean(0)[torch.arange(3), labels].log()
    torch.testing.assert_close(predictive_log_density(logits, labels, "categorical"), expected)


def test_tuning_picks_the_grid_minimum_and_reproduces(regression):
    model, values, x = regression
    y = torch.randn(x.shape[0], dtype=torch.float64)
    laplace = FactorLaplace(model, values, x, noise_scale=0.3, structure="full")
    grid = [0.1, 1.0, 10.0, 100.0]
    curve = laplace.tune_prior_precision(x, y, grid=grid, num_samples=16)
    assert list(curve) == grid and laplace.prior_precision == min(curve, key=curve.get)
    assert curve == laplace.tune_prior_precision(x, y, grid=grid, num_samples=16)
    assert len(set(curve.values())) == len(grid)


def test_errors_name_the_argument(regression):
    model, values, x = regression
    with pytest.raises(ValueError, match="structure"):
        FactorLaplace(model, values, x, structure="kron")
    with pytest.raises(ValueError, match="rank must be below"):
        FactorLaplace(model, values, x, structure="lowrank", rank=10_000)
    with pytest.raises(ValueError, match="prior_precision"):
        FactorLaplace(model, values, x, structure="diag", prior_precision=0.0)
    laplace = FactorLaplace(model, values, x, structure="diag")
    with pytest.raises(ValueError, match="prior_precision"):
        laplace.prior_precision = math.nan
    with pytest.raises(ValueError, match="grid"):
        laplace.tune_prior_precision(x, torch.zeros(x.shape[0], dtype=torch.float64), grid=[])
    with pytest.raises(ValueError, match="grid must hold finite prior precisions > 0, got \\[-1.0\\]"):
        laplace.tune_prior_precision(x, torch.zeros(x.shape[0], dtype=torch.float64), grid=[1.0, -1.0])
    assert laplace.prior_precision == 1.0


def test_tuning_warns_at_the_grid_edge(regression):
    model, values, x = regression
    laplace = FactorLaplace(model, values, x, noise_scale=0.3, structure="full")
    exact = laplace.ggn.outputs[:, 0]  # targets on the MAP's outputs: the less spread, the better
    with pytest.warns(RuntimeWarning, match="edge of the grid"):
        curve = laplace.tune_prior_precision(x, exact, grid=[0.1, 1.0, 10.0], num_samples=8)
    assert laplace.prior_precision == 10.0 and curve[10.0] < curve[1.0] < curve[0.1]


def test_lowrank_scale_noise_weights():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))
    lam = torch.tensor([4.0, 1.0], dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.float64)
    kernel_only = lowrank_scale_noise(eye, lam, u, 2.0, image=0.0, kernel=1.0)
    torch.testing.assert_close(kernel_only.T @ kernel_only, (eye - u @ u.T) / 2.0)
    assert (kernel_only @ u).abs().max() < 1e-12


def test_fit_map_lowers_the_negative_log_joint():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0])
    model = LowRankMLP(1, [10], rank=[1], output_rank=1, likelihood="gaussian", noise_scale=0.1)

    def neg_log_joint(v):
        with pyro.poutine.block():
            trace = pyro.poutine.trace(pyro.poutine.condition(model, data=v)).get_trace(x, y)
        return -float(trace.log_prob_sum())

    from pyro_lowrank.guides import factor_initial_values
    start = {k: v for k, v in factor_initial_values(model).items()}
    start.update({k: v for k, v in latent_site_values(model, x).items() if k not in start})
    values, guide, result = fit_map(model, (x, y), num_epochs=60, batch_size=40, lr=2e-2, progress=False)
    assert set(values) == set(latent_site_values(model, x))
    assert neg_log_joint(values) < 0.5 * neg_log_joint({k: v.detach() for k, v in start.items()})
    assert result.epochs_run == 60


def test_joint_noise_tuning_finds_the_residual_scale(regression):
    model, values, x = regression
    laplace = FactorLaplace(model, values, x, noise_scale=1.0, structure="full")
    y = laplace.ggn.outputs[:, 0] + 0.05 * torch.randn(x.shape[0], generator=torch.Generator().manual_seed(0),
                                                        dtype=torch.float64)
    noise_grid = torch.logspace(-3, 1, 41).tolist()
    joint = laplace.tune_prior_precision(x, y, grid=[1.0, 1e4], noise_grid=noise_grid, num_samples=8)
    fixed = laplace.tune_prior_precision(x, y, grid=[1.0, 1e4], num_samples=8)
    assert all(joint[a] < fixed[a] for a in joint)  # a fitted noise beats the unit training noise at every alpha
    assert laplace.tuned_noise_scale == 1.0  # without a grid the noise is the fixed training noise
    laplace.tune_prior_precision(x, y, grid=[1.0, 1e4], noise_grid=noise_grid, num_samples=8)
    assert 0.01 < laplace.tuned_noise_scale < 0.2
    with pytest.raises(ValueError, match="noise_grid must hold finite noise scales > 0"):
        laplace.tune_prior_precision(x, y, noise_grid=[0.0])


def test_joint_noise_at_the_grid_edge_warns(regression):
    model, values, x = regression
    laplace = FactorLaplace(model, values, x, noise_scale=1.0, structure="full")
    unstandardised = laplace.ggn.outputs[:, 0] + 100.0 * torch.randn(x.shape[0], dtype=torch.float64,
                                                                       generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="edge of noise_grid"):
        laplace.tune_prior_precision(x, unstandardised, grid=[1.0], noise_grid=[0.01, 0.1, 1.0], num_samples=4)
    assert laplace.tuned_noise_scale == 1.0 and laplace.noise_curve == {1.0: 1.0}
