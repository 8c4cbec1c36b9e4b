"""Predictive intervals (Gaussian and exact mixture), PICP, MPIW and coverage calibration."""

import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from pyro_lowrank.metrics import (
    coverage_calibration_area,
    coverage_curve,
    mpiw,
    picp,
    predictive_interval,
    regression_predictive_moments,
)

Z95 = float(norm.ppf(0.975))


def _random_predictive(num_draws, num, seed):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num, generator=gen, dtype=torch.float64) + 0.7 * torch.randn(
        num_draws, num, generator=gen, dtype=torch.float64
    )
    scales = 0.3 + torch.rand(num_draws, num, generator=gen, dtype=torch.float64)
    return means, scales, gen


def _sample_mixture(means, scales, gen):
    """One target per example from the equal-weight mixture of the draws."""
    component = torch.randint(0, means.shape[0], (1, means.shape[1]), generator=gen)
    noise = torch.randn(means.shape[1], generator=gen, dtype=torch.float64)
    return (means.gather(0, component) + scales.gather(0, component) * noise).squeeze(0)


def test_picp_and_mpiw_by_hand():
    means = torch.zeros(1, 4)
    scales = torch.tensor([[1.0, 1.0, 1.0, 2.0]])
    y = torch.tensor([0.0, 1.9, 2.0, -3.0])  # +-1.96: in, in, out; +-3.92: in
    assert picp(means, scales, y) == 0.75
    assert mpiw(means, scales) == pytest.approx(2 * Z95 * 1.25)
    lower, upper = predictive_interval(means, scales)
    assert torch.allclose(upper, Z95 * scales[0].double()) and torch.allclose(lower, -upper)
    # the mixture interval of a single Gaussian draw is the same interval
    assert picp(means, scales, y, method="mixture") == 0.75
    assert mpiw(means, scales, method="mixture") == pytest.approx(2 * Z95 * 1.25)


def test_gaussian_interval_uses_the_moment_matched_std():
    means = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    scales = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    lower, upper = predictive_interval(means, scales, level=0.9)
    mean, std = regression_predictive_moments(means, scales)
    z = float(norm.ppf(0.95))
    assert torch.allclose(lower, mean - z * std) and torch.allclose(upper, mean + z * std)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95, 0.99])
def test_mixture_interval_of_one_draw_is_the_normal_quantile(level):
    means = torch.tensor([[-1.0, 0.0, 3.5]])
    scales = torch.tensor([[0.1, 1.0, 4.0]])
    lower, upper = predictive_interval(means, scales, level=level, method="mixture")
    expected_upper = norm.ppf(0.5 * (1 + level), loc=means[0].numpy(), scale=scales[0].numpy())
    expected_lower = norm.ppf(0.5 * (1 - level), loc=means[0].numpy(), scale=scales[0].numpy())
    assert torch.allclose(upper, torch.from_numpy(expected_upper).double(), rtol=0, atol=1e-6)
    assert torch.allclose(lower, torch.from_numpy(expected_lower).double(), rtol=0, atol=1e-6)


def test_mixture_interval_solves_the_mixture_cdf():
    means, scales, _ = _random_predictive(3, 6, seed=0)
    means[:, 0] = torch.tensor([-4.0, 0.0, 4.0], dtype=torch.float64)  # a trimodal example
    level = 0.9
    lower, upper = predictive_interval(means, scales, level=level, method="mixture")
    for i in range(6):
        mu, sigma = means[:, i].numpy(), scales[:, i].numpy()

        def cdf(t, q, mu=mu, sigma=sigma):
            return norm.cdf(t, mu, sigma).mean() - q

        q_lo, q_hi = 0.5 * (1 - level), 0.5 * (1 + level)
        assert lower[i].item() == pytest.approx(brentq(cdf, -50, 50, args=(q_lo,), xtol=1e-13), abs=1e-8)
        assert upper[i].item() == pytest.approx(brentq(cdf, -50, 50, args=(q_hi,), xtol=1e-13), abs=1e-8)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_gaussian_picp_is_nominal_for_gaussian_targets(level):
    means, scales, gen = _random_predictive(8, 20000, seed=1)
    mean, std = regression_predictive_moments(means, scales)
    y = mean + std * torch.randn(20000, generator=gen, dtype=torch.float64)
    assert abs(picp(means, scales, y, level=level) - level) < 0.02


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_mixture_picp_is_nominal_for_mixture_targets(level):
    means, scales, gen = _random_predictive(8, 20000, seed=2)
    y = _sample_mixture(means, scales, gen)
    assert abs(picp(means, scales, y, level=level, method="mixture") - level) < 0.02


def test_bimodal_mixture_needs_the_mixture_interval():
    gen = torch.Generator().manual_seed(3)
    num = 20000
    means = torch.tensor([[-3.0], [3.0]], dtype=torch.float64).expand(2, num)
    scales = torch.ones(2, num, dtype=torch.float64)
    y = _sample_mixture(means, scales, gen)
    for level in (0.5, 0.8, 0.95):
        assert abs(picp(means, scales, y, level=level, method="mixture") - level) < 0.02
    # the moment-matched Gaussian (std sqrt 10) puts its central half in the gap between the modes
    assert picp(means, scales, y, level=0.5, method="gaussian") < 0.3
    # and the exact interval is the shorter one at high levels
    assert mpiw(means, scales, 0.95, "mixture") < mpiw(means, scales, 0.95, "gaussian")


@pytest.mark.parametrize("method", ["gaussian", "mixture"])
def test_coverage_curve_and_area_calibrated_vs_overconfident(method):
    means, scales, gen = _random_predictive(4, 20000, seed=4)
    if method == "mixture":
        y = _sample_mixture(means, scales, gen)
    else:
        mean, std = regression_predictive_moments(means, scales)
        y = mean + std * torch.randn(20000, generator=gen, dtype=torch.float64)
    curve = coverage_curve(means, scales, y, method=method)
    assert curve["levels"].shape == (19,) and curve["levels"][0] == 0.05 and curve["levels"][-1] == 0.95
    assert (curve["observed"] - curve["levels"]).abs().max() < 0.02
    assert (curve["observed"].diff() >= 0).all()
    assert coverage_calibration_area(means, scales, y, method=method) < 0.01
    over = coverage_calibration_area(means, 0.5 * scales, y, method=method)
    assert over > 0.1
    # over-confident intervals cover less than nominal at every level
    shrunk = coverage_curve(means, 0.5 * scales, y, method=method)
    assert (shrunk["observed"] < shrunk["levels"]).all()


def test_coverage_area_by_hand():
    means = torch.zeros(1, 10)
    y = torch.linspace(-1, 1, 10)
    # huge scales: everything covered at every level; trapezoid of |1 - gamma| with (0, 0) and (1, 1) added
    wide = coverage_calibration_area(means, torch.full((1, 10), 1e6), y)
    assert wide == pytest.approx(0.05 * 0.95 / 2 + 0.95**2 / 2)
    # tiny scales: nothing covered, the mirror image
    narrow = coverage_calibration_area(means, torch.full((1, 10), 1e-6), y)
    assert narrow == pytest.approx(0.05 * 0.95 / 2 + 0.95**2 / 2)
    # custom levels in any order; duplicates are harmless
    area = coverage_calibration_area(means, torch.full((1, 10), 1e6), y, levels=[0.5, 0.25, 0.5])
    # points (0,0), (.25,1), (.5,1), (1,1): |g| = 0, .75, .5, 0
    assert area == pytest.approx(0.25 * 0.75 / 2 + 0.25 * (0.75 + 0.5) / 2 + 0.5 * 0.5 / 2)
    curve = coverage_curve(means, torch.full((1, 10), 1e6), y, levels=torch.tensor([0.9, 0.1]))
    assert curve["levels"].tolist() == pytest.approx([0.9, 0.1]) and curve["observed"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("method", ["gaussian", "mixture"])
@pytest.mark.parametrize("level", [0.3, 0.9])
def test_picp_agrees_with_the_interval_bounds(method, level):
    means, scales, gen = _random_predictive(3, 5000, seed=5)
    y = _sample_mixture(means, scales, gen)
    lower, upper = predictive_interval(means, scales, level, method)
    inside = float(((lower <= y) & (y <= upper)).double().mean())
    assert abs(picp(means, scales, y, level, method) - inside) <= 1 / 5000
    assert mpiw(means, scales, level, method) == pytest.approx(float((upper - lower).mean()))
    curve = coverage_curve(means, scales, y, levels=[level], method=method)
    assert curve["observed"].item() == picp(means, scales, y, level, method)


def test_level_may_be_a_numpy_or_tensor_scalar():
    means, scales = torch.zeros(1, 3), torch.ones(1, 3)
    expected = mpiw(means, scales, 0.9)
    assert mpiw(means, scales, torch.tensor(0.9, dtype=torch.float64)) == pytest.approx(expected)
    assert mpiw(means, scales, norm.cdf(1.2815515655446004)) == pytest.approx(expected)
