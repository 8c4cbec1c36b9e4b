"""Tests for posterior_kl (factor KL of a guide from the prior) and McAllester's PAC-Bayes bound."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro_lowrank.models import LowRankMLP

from pyro_lowrank.diagnostics import mcallester_bound, posterior_kl
from pyro_lowrank.distributions import ScaleMixturePrior
from pyro_lowrank.guides import FactorGuide, init_to_factors


def _data(n=20):
    return torch.randn(n, 3), torch.randn(n)


def _model_and_guide(guide_type="factor", prior=None):
    model = LowRankMLP(3, [4], rank=2, likelihood="gaussian", prior=prior, prior_scale=0.8)
    if guide_type == "factor":
        guide = FactorGuide(model)
    else:
        guide = AutoNormal(model, init_loc_fn=init_to_factors(model), init_scale=0.3)
    x, y = _data()
    guide(x, y)  # set up the guide's parameters
    return model, guide, x, y


def _site_loc_scales(model, guide):
    sites = {}
    for layer in model.layers:
        for name in ("A", "B", "bias"):
            loc, scale = guide._get_loc_and_scale(layer.site_name(name))
            sites[layer.site_name(name)] = (loc.detach(), scale.detach())
    return sites


@pytest.mark.parametrize("guide_type", ["factor", "autonormal"])
def test_gaussian_prior_equals_closed_form_by_hand(guide_type):
    model, guide, x, y = _model_and_guide(guide_type)
    expected = 0.0
    for loc, scale in _site_loc_scales(model, guide).values():
        prior_scale = 0.8  # KL(N(mu, s^2) || N(0, p^2)) = log(p/s) + (s^2 + mu^2) / (2 p^2) - 1/2
        expected += (math.log(prior_scale) - scale.log() + (scale**2 + loc**2) / (2 * prior_scale**2) - 0.5).sum()
    kl = posterior_kl(model, guide, x, y)
    assert kl.dim() == 0 and not kl.requires_grad
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-5)
    assert kl.item() > 0
    # without targets 'obs' is latent in the model but absent from the guide: it contributes nothing
    torch.testing.assert_close(posterior_kl(model, guide, x), kl)


def test_scale_mixture_prior_monte_carlo_agrees_with_high_sample_estimate():
    prior = ScaleMixturePrior(0.5, 1.0, 0.05)
    model, guide, x, y = _model_and_guide("factor", prior=prior)
    entry_prior = prior.entry_distribution()
    num_direct, num_samples = 100_000, 2048
    per_draw = 0.0
    for loc, scale in _site_loc_scales(model, guide).values():
        q = dist.Normal(loc, scale)
        draws = q.sample((num_direct,))
        per_draw = per_draw + (q.log_prob(draws) - entry_prior.log_prob(draws)).reshape(num_direct, -1).sum(-1)
    direct, std = per_draw.mean(), per_draw.std()
    kl = posterior_kl(model, guide, x, y, num_samples=num_samples)
    standard_error = std * math.sqrt(1 / num_samples + 1 / num_direct)
    assert abs(kl - direct) < 4 * standard_error
    assert kl.item() > 0 and direct.item() > 0


def test_constrained_site_through_autonormal_transform():
    """AutoNormal's q for a positive site is exp of a Normal: KL(LogNormal(a, b) || LogNormal(0, 1)) = KL of the Normals."""

    def model():
        pyro.sample("sigma", dist.LogNormal(0.0, 1.0))

    guide = AutoNormal(model, init_scale=0.4)
    guide()
    loc, scale = (t.detach() for t in guide._get_loc_and_scale("sigma"))
    expected = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0))
    kl = posterior_kl(model, guide, num_samples=200_000)  # no closed form for the transformed q: Monte Carlo
    torch.testing.assert_close(kl, expected, atol=0.01, rtol=0)


def test_param_store_guide_and_outer_handlers_are_untouched():
    model, guide, x, y = _model_and_guide("factor")
    store_before = dict(pyro.get_param_store().items())
    state_before = {k: v.clone() for k, v in guide.state_dict().items()}
    with poutine.trace() as outer:
        posterior_kl(model, guide, x, y)
    assert dict(pyro.get_param_store().items()).keys() == store_before.keys()
    state_after = guide.state_dict()
    assert state_after.keys() == state_before.keys()
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value)
    assert not [n for n, s in outer.trace.nodes.items() if s["type"] in ("sample", "param")]


def test_point_mass_guide_is_refused():
    model = LowRankMLP(3, [4], rank=2, likelihood="gaussian")
    guide = AutoDelta(model)
    x, y = _data()
    guide(x, y)
    with pytest.raises(ValueError, match=r"guide site 'layers.0.A' is a point mass \(Delta\)"):
        posterior_kl(model, guide, x, y)


def test_posterior_kl_argument_errors():
    model, guide, x, y = _model_and_guide("factor")
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        posterior_kl(model, guide, x, y, num_samples=0)
    with pytest.raises(TypeError, match="model and guide must be callable, got int and FactorGuide"):
        posterior_kl(3, guide, x, y)


def test_mcallester_bound_by_hand():
    risk, kl, n, delta = 0.1, 25.0, 1000, 0.05
    expected = risk + math.sqrt((kl + math.log(2 * math.sqrt(n) / delta)) / (2 * n))
    assert mcallester_bound(risk, kl, n, delta) == pytest.approx(expected, rel=1e-12)
    assert mcallester_bound(torch.tensor(risk), torch.tensor(kl), n, delta) == pytest.approx(expected, rel=1e-6)
    assert isinstance(mcallester_bound(risk, kl, n), float)


def test_mcallester_bound_monotonicity():
    kls = [0.0, 1.0, 10.0, 100.0, 1e4]
    bounds = [mcallester_bound(0.2, kl, 500) for kl in kls]
    assert all(a < b for a, b in itertools.pairwise(bounds))
    sizes = [10, 100, 1000, 10_000, 100_000]
    bounds = [mcallester_bound(0.2, 50.0, n) for n in sizes]
    assert all(a > b for a, b in itertools.pairwise(bounds))
    assert mcallester_bound(0.2, 50.0, 500, delta=0.01) > mcallester_bound(0.2, 50.0, 500, delta=0.1)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((1.5, 1.0, 10), ValueError, r"empirical_risk must lie in \[0, 1\] .* got 1.5"),
        ((-0.1, 1.0, 10), ValueError, r"empirical_risk must lie in \[0, 1\]"),
        ((0.1, float("inf"), 10), ValueError, "kl must be a finite number >= 0, got inf"),
        ((0.1, 1.0, 0), ValueError, "num_data must be a positive integer, got 0"),
        ((0.1, 1.0, 10.5), ValueError, "num_data must be a positive integer, got 10.5"),
        ((0.1, 1.0, 10, 1.0), ValueError, r"delta must lie in \(0, 1\), got 1.0"),
        ((0.1, 1.0, 10, 0.0), ValueError, r"delta must lie in \(0, 1\), got 0.0"),
        ((0.1, torch.ones(2), 10), ValueError, r"kl must be a scalar, got a tensor of shape \(2,\)"),
        (("0.1", 1.0, 10), TypeError, "empirical_risk must be a real number or a 1-element tensor, got str"),
    ],
)
def test_mcallester_bound_errors(args, error, match):
    with pytest.raises(error, match=match):
        mcallester_bound(*args)


def test_negative_monte_carlo_kl_is_clamped_with_a_warning():
    with pytest.warns(RuntimeWarning, match="kl=-0.01 is negative"):
        bound = mcallester_bound(0.1, -0.01, 100)
    assert bound == pytest.approx(mcallester_bound(0.1, 0.0, 100))
