"""Tests for the scale-mixture distribution and the factor priors (GaussianPrior, ScaleMixturePrior)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_lowrank.distributions import FactorPrior, GaussianPrior, ScaleMixtureNormal, ScaleMixturePrior

Z = 6.0


def _settings(max_examples: int):
    return settings(derandomize=True, deadline=None, max_examples=max_examples, database=None)


def normal_density(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.exp(-0.5 * (x / scale) ** 2) / (scale * math.sqrt(2 * math.pi))


# ---------------------------------------------------------------------------------------------- ScaleMixtureNormal
@_settings(max_examples=25)
@given(
    pi=st.floats(0.01, 0.99),
    scale1=st.floats(0.05, 5.0),
    scale2=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_scale_mixture_log_prob_matches_direct_formula(pi, scale1, scale2, seed):
    torch.manual_seed(seed)
    x = 3 * torch.randn(50, dtype=torch.float64) * max(scale1, scale2)
    d = ScaleMixtureNormal(torch.tensor(pi, dtype=torch.float64), scale1, scale2)
    direct = torch.log(pi * normal_density(x, scale1) + (1 - pi) * normal_density(x, scale2))
    finite = torch.isfinite(direct)  # the direct formula underflows far in the tails
    assert finite.sum() > 25
    torch.testing.assert_close(d.log_prob(x)[finite], direct[finite], rtol=1e-10, atol=1e-10)
    assert torch.isfinite(d.log_prob(x)).all()


def test_scale_mixture_log_prob_is_stable_far_in_the_tails():
    """Where pi N1 + (1 - pi) N2 underflows, the log density is the wide component's log density plus log pi."""
    d = ScaleMixtureNormal(0.5, 1.0, math.exp(-6))
    x = torch.tensor([40.0, -60.0], dtype=torch.float64)
    expected = math.log(0.5) + dist.Normal(0.0, 1.0).log_prob(x)
    torch.testing.assert_close(d.log_prob(x), expected)


def test_scale_mixture_log_prob_reduces_to_normal_with_equal_scales():
    d = ScaleMixtureNormal(0.3, 1.7, 1.7)
    x = torch.linspace(-5, 5, 21)
    torch.testing.assert_close(d.log_prob(x), dist.Normal(0.0, 1.7).log_prob(x))


@pytest.mark.parametrize("pi, scale1, scale2", [(0.5, 1.0, math.exp(-6)), (0.3, 2.0, 0.5), (0.9, 0.1, 3.0)])
def test_scale_mixture_sample_moments(pi, scale1, scale2):
    num = 200_000
    d = ScaleMixtureNormal(pi, scale1, scale2)
    expected_var = pi * scale1**2 + (1 - pi) * scale2**2
    assert d.variance.item() == pytest.approx(expected_var, rel=1e-6)
    assert d.mean.item() == 0.0
    torch.manual_seed(0)
    x = d.sample((num,)).double()
    assert x.shape == (num,)
    assert abs(x.mean()) <= Z * x.std() / num**0.5
    sq = x.square()
    assert abs(sq.mean() - expected_var) <= Z * sq.std() / num**0.5
    # the component indicator: P(|x| > t) = pi P(|N1| > t) + (1 - pi) P(|N2| > t)
    t = math.sqrt(scale1 * scale2)
    tail = lambda s: math.erfc(t / (s * math.sqrt(2)))  # noqa: E731
    p_tail = pi * tail(scale1) + (1 - pi) * tail(scale2)
    frac = (x.abs() > t).double().mean()
    assert abs(frac - p_tail) <= Z * math.sqrt(p_tail * (1 - p_tail) / num)


def test_scale_mixture_shapes_and_expand():
    d = ScaleMixtureNormal(torch.tensor([0.2, 0.8]), 1.0, 0.1)
    assert d.batch_shape == (2,) and d.event_shape == ()
    assert d.sample((3,)).shape == (3, 2)
    e = d.expand((4, 2))
    assert e.batch_shape == (4, 2)
    assert e.sample((5,)).shape == (5, 4, 2)
    torch.testing.assert_close(e.variance, d.variance.expand(4, 2))
    assert not d.has_rsample


# ---------------------------------------------------------------------------------------------- factor priors
@pytest.mark.parametrize("shape", [(3, 2), (5,), (1, 1)])
@pytest.mark.parametrize("prior", [GaussianPrior(0.7, loc=0.1), ScaleMixturePrior(0.4, 1.5, 0.2)], ids=["gauss", "mix"])
def test_prior_distribution_shapes_and_log_prob(prior, shape):
    assert isinstance(prior, FactorPrior)
    d = prior(shape)
    assert d.event_shape == shape
    assert d.batch_shape == ()
    value = torch.randn(shape)
    if isinstance(prior, GaussianPrior):
        per_entry = dist.Normal(0.1, 0.7).log_prob(value)
    else:
        per_entry = torch.log(0.4 * normal_density(value, 1.5) + 0.6 * normal_density(value, 0.2))
    torch.testing.assert_close(d.log_prob(value), per_entry.sum(), rtol=1e-5, atol=1e-5)
    assert d.sample().shape == shape
    assert d.sample((4,)).shape == (4,) + shape


def test_prior_entry_second_moment():
    assert GaussianPrior(0.5).entry_second_moment == pytest.approx(0.25)
    assert GaussianPrior(0.5, loc=2.0).entry_second_moment == pytest.approx(0.25 + 4.0)
    assert ScaleMixturePrior(0.3, 2.0, 0.5).entry_second_moment == pytest.approx(0.3 * 4 + 0.7 * 0.25)


def test_default_scale_mixture_is_the_papers():
    prior = ScaleMixturePrior()
    assert prior.mixture_weight.item() == pytest.approx(0.5)
    assert prior.scale1.item() == pytest.approx(1.0)
    assert prior.scale2.item() == pytest.approx(math.exp(-6), rel=1e-6)


@pytest.mark.parametrize(
    "prior, names",
    [(GaussianPrior(0.5), {"loc", "scale"}), (ScaleMixturePrior(), {"mixture_weight", "scale1", "scale2"})],
    ids=["gauss", "mix"],
)
def test_prior_constants_are_buffers_and_follow_dtype(prior, names):
    assert {name for name, _ in prior.named_buffers()} == names
    assert list(prior.parameters()) == []
    assert set(prior.state_dict()) == names
    prior = prior.to(torch.float64)
    assert all(buf.dtype == torch.float64 for buf in prior.buffers())
    d = prior((3, 2))
    assert d.sample().dtype == torch.float64
    assert d.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("prior", [GaussianPrior(0.5), ScaleMixturePrior()], ids=["gauss", "mix"])
def test_prior_constants_follow_device(prior):
    prior = prior.to("cuda")
    assert all(buf.device.type == "cuda" for buf in prior.buffers())
    d = prior((3, 2))
    assert d.sample().device.type == "cuda"
    assert d.log_prob(torch.zeros(3, 2, device="cuda")).device.type == "cuda"


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_gaussian_prior_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        GaussianPrior(scale)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"mixture_weight": 0.0}, "mixture_weight"),
        ({"mixture_weight": 1.0}, "mixture_weight"),
        ({"mixture_weight": -0.2}, "mixture_weight"),
        ({"mixture_weight": 1.5}, "mixture_weight"),
        ({"mixture_weight": float("nan")}, "mixture_weight"),
        ({"scale1": 0.0}, "scale1"),
        ({"scale1": -2.0}, "scale1"),
        ({"scale2": 0.0}, "scale2"),
        ({"scale2": float("nan")}, "scale2"),
    ],
)
def test_scale_mixture_prior_bad_constants(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ScaleMixturePrior(**kwargs)
