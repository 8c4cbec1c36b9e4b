"""Tests for FactorGuide, init_to_factors and the factor initialisations (variance matching, SVD)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from pyro.poutine.subsample_messenger import _Subsample

from pyro_lowrank.guides import FactorGuide, FactorInit, init_to_factors, svd_init, variance_matching_init
from pyro_lowrank.nn import LowRankLinear


def _settings(max_examples: int):
    return settings(derandomize=True, deadline=None, max_examples=max_examples, database=None)


class TwoLayer(PyroModule):
    """Two low-rank layers with different shapes (so different initial scales); ``y=None`` means no likelihood."""

    def __init__(self, prior_scale=1.0):
        super().__init__()
        self.fc1 = LowRankLinear(5, 4, 2, prior_scale=prior_scale)
        self.fc2 = LowRankLinear(4, 3, 1, prior_scale=prior_scale, init_scale_factor=0.3)

    def forward(self, x, y=None):
        out = self.fc2(torch.tanh(self.fc1(x)))
        if y is not None:
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(out, 0.5).to_event(1), obs=y)
        return out


class WithNoise(PyroModule):
    """A low-rank layer plus a positive latent (HalfNormal noise scale)."""

    def __init__(self):
        super().__init__()
        self.fc = LowRankLinear(3, 2, 1)

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        out = self.fc(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(out, sigma).to_event(1), obs=y)
        return out


def data(num=8, in_features=5, out_features=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num, in_features, generator=gen), torch.randn(num, out_features, generator=gen)


FACTOR_SITES = ("fc1.A", "fc1.B", "fc1.bias", "fc2.A", "fc2.B", "fc2.bias")


def latent_sites(trace):
    return {
        name: site for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not isinstance(site["fn"], _Subsample)
    }


# ---------------------------------------------------------------------------------------------- sites and init
def test_factor_guide_emits_one_independent_normal_per_factor():
    model = TwoLayer()
    x, y = data()
    guide = FactorGuide(model)
    trace = poutine.trace(guide).get_trace(x, y)
    sites = latent_sites(trace)
    assert set(sites) == set(FACTOR_SITES)
    assert not any(name.endswith("_unconstrained") for name in trace.nodes)
    expected_event = {
        "fc1.A": (4, 2), "fc1.B": (5, 2), "fc1.bias": (4,), "fc2.A": (3, 1), "fc2.B": (4, 1), "fc2.bias": (3,)
    }
    for name, site in sites.items():
        fn = site["fn"]
        assert isinstance(fn, dist.Independent)
        assert isinstance(fn.base_dist, dist.Normal)
        assert fn.event_shape == expected_event[name]
        assert fn.batch_shape == ()
        assert site["value"].shape == expected_event[name]
    # the guide's sites match the model's sites one to one (same names and event shapes)
    model_sites = latent_sites(poutine.trace(model).get_trace(x, y))
    model_events = {n: s["fn"].event_shape for n, s in model_sites.items()}
    assert model_events == {n: s["fn"].event_shape for n, s in sites.items()}


def test_factor_guide_initial_locs_and_scales_come_from_the_layers():
    model = TwoLayer()
    x, y = data()
    guide = FactorGuide(model, init_scale=0.2)
    trace = poutine.trace(guide).get_trace(x, y)
    for layer, prefix in ((model.fc1, "fc1"), (model.fc2, "fc2")):
        for site, init in (("A", layer.a_init), ("B", layer.b_init), ("bias", layer.bias_init)):
            base = trace.nodes[f"{prefix}.{site}"]["fn"].base_dist
            torch.testing.assert_close(base.loc.detach(), init)
            torch.testing.assert_close(base.scale.detach(), torch.full_like(init, layer.init_scale))
    # the two layers have different initial scales: eta * (gain / (n r))^(1/4) with their own eta, n and r
    assert model.fc1.init_scale == pytest.approx(0.1 * (2.0 / 5 / 2) ** 0.25)
    assert model.fc2.init_scale == pytest.approx(0.3 * (2.0 / 4 / 1) ** 0.25)


def test_non_factor_sites_use_the_guide_init_scale():
    model = WithNoise()
    x, y = data(in_features=3, out_features=2)
    guide = FactorGuide(model, init_scale=0.2)
    guide(x, y)
    _, scale = guide._get_loc_and_scale("sigma")
    torch.testing.assert_close(scale.detach(), torch.tensor(0.2))
    _, scale = guide._get_loc_and_scale("fc.A")
    torch.testing.assert_close(scale.detach(), torch.full((2, 1), model.fc.init_scale))


@pytest.mark.parametrize("module_local_params", [False, True])
def test_init_to_factors_starts_autonormal_at_the_layer_init(module_local_params):
    with pyro.settings.context(module_local_params=module_local_params):
        model = TwoLayer()
        x, y = data()
        guide = AutoNormal(model, init_loc_fn=init_to_factors(model))
        guide(x, y)
        for layer, prefix in ((model.fc1, "fc1"), (model.fc2, "fc2")):
            for site, init in (("A", layer.a_init), ("B", layer.b_init), ("bias", layer.bias_init)):
                loc, _ = guide._get_loc_and_scale(f"{prefix}.{site}")
                torch.testing.assert_close(loc.detach(), init)
        # the init is not the saddle point A = B = 0
        assert model.fc1.a_init.abs().sum() > 0


def test_init_to_factors_falls_back_for_other_sites():
    model = WithNoise()
    x, y = data(in_features=3, out_features=2)
    init_fn = init_to_factors(model, fallback=lambda site: torch.tensor(0.7))
    guide = AutoNormal(model, init_loc_fn=init_fn)
    guide(x, y)
    loc, _ = guide._get_loc_and_scale("sigma")
    torch.testing.assert_close(loc.detach(), torch.tensor(0.7).log())  # AutoNormal's loc is unconstrained
    loc, _ = guide._get_loc_and_scale("fc.B")
    torch.testing.assert_close(loc.detach(), model.fc.b_init)


def test_init_to_factors_reads_the_current_init_at_setup():
    model = TwoLayer()
    init_fn = init_to_factors(model)
    model.fc1.set_factor_init(FactorInit(torch.ones(4, 2), 2 * torch.ones(5, 2), 0.5))
    guide = FactorGuide(model, init_loc_fn=init_fn)
    guide(*data())
    loc, scale = guide._get_loc_and_scale("fc1.B")
    torch.testing.assert_close(loc.detach(), 2 * torch.ones(5, 2))
    torch.testing.assert_close(scale.detach(), torch.full((5, 2), 0.1 * 0.5))


def test_factor_guide_argument_checks():
    with pytest.raises(ValueError, match="init_scale"):
        FactorGuide(TwoLayer(), init_scale=0.0)
    with pytest.raises(TypeError, match="init_loc_fn"):
        FactorGuide(lambda x: None)


# ---------------------------------------------------------------------------------------------- analytic KL
def gaussian_kl(mu_q, s_q, s_p):
    return (torch.log(s_p / s_q) + (s_q**2 + mu_q**2) / (2 * s_p**2) - 0.5).sum()


def test_mean_field_elbo_with_factor_guide_is_the_closed_form_kl_without_data():
    prior_scale = 0.8
    model = TwoLayer(prior_scale=prior_scale)
    x, _ = data()
    guide = FactorGuide(model)
    guide(x)
    elbo = TraceMeanField_ELBO()
    losses = [elbo.loss(model, guide, x) for _ in range(5)]
    assert len(set(losses)) == 1  # deterministic: no Monte Carlo term left
    expected = 0.0
    for name in FACTOR_SITES:
        loc, scale = guide._get_loc_and_scale(name)
        expected += gaussian_kl(loc.detach().double(), scale.detach().double(), torch.tensor(prior_scale).double())
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)
    # with AutoNormal (auxiliary unconstrained site + Delta) the same objective is a noisy Monte Carlo estimate
    auto = AutoNormal(model, init_loc_fn=init_to_factors(model))
    auto(x)
    auto_losses = torch.tensor([elbo.loss(model, auto, x) for _ in range(5)])
    assert auto_losses.std() > 0


def test_mean_field_elbo_variance_is_lower_with_factor_guide():
    """Same q (both guides start at the layer inits with the same scales): analytic KL removes the KL's MC noise."""
    model = TwoLayer()
    x, y = data()
    scale = model.fc1.init_scale
    model.fc2.init_scale_factor = 0.1
    model.fc2.set_factor_init(FactorInit(model.fc2.a_init, model.fc2.b_init, scale / 0.1))
    guide = FactorGuide(model)
    auto = AutoNormal(model, init_loc_fn=init_to_factors(model), init_scale=scale)
    guide(x, y)
    auto(x, y)
    for name in FACTOR_SITES:  # the two guides define the same distribution
        for a, b in zip(guide._get_loc_and_scale(name), auto._get_loc_and_scale(name)):
            torch.testing.assert_close(a, b)
    elbo = TraceMeanField_ELBO()
    num = 200
    factor_losses = torch.tensor([elbo.loss(model, guide, x, y) for _ in range(num)])
    auto_losses = torch.tensor([elbo.loss(model, auto, x, y) for _ in range(num)])
    # same expectation (both unbiased estimates of the same negative ELBO) ...
    se = (factor_losses.var() / num + auto_losses.var() / num).sqrt()
    assert abs(factor_losses.mean() - auto_losses.mean()) < 6 * se
    # ... but the KL's Monte Carlo noise is gone: the variance ratio is far beyond F-distribution noise at S=200
    assert auto_losses.var() > 2 * factor_losses.var()


def test_factor_guide_with_mean_field_elbo_module_route():
    """DESIGN 4: loss = TraceMeanField_ELBO()(model, guide) is an nn.Module whose parameters are the guide's."""
    with pyro.settings.context(module_local_params=True):
        model = TwoLayer()
        x, _ = data()
        guide = FactorGuide(model)
        guide(x)
        loss_fn = TraceMeanField_ELBO()(model, guide)
        params = list(loss_fn.parameters())
        expected = model.fc1.num_variational_parameters() + model.fc2.num_variational_parameters()
        assert sum(p.numel() for p in params) == expected
        optim = torch.optim.Adam(params, lr=0.05)
        before = loss_fn(x).item()
        assert loss_fn(x).item() == before  # without data the loss is the analytic KL: deterministic
        for _ in range(20):
            optim.zero_grad()
            loss_fn(x).backward()
            optim.step()
        after = loss_fn(x).item()
    assert after < before - 1.0


# ---------------------------------------------------------------------------------------------- constrained latents
def test_constrained_latent_gets_a_transformed_normal():
    model = WithNoise()
    x, y = data(in_features=3, out_features=2)
    guide = FactorGuide(model)
    guide(x, y)
    sigmas = []
    for _ in range(200):
        trace = poutine.trace(guide).get_trace(x, y)
        site = trace.nodes["sigma"]
        sigmas.append(site["value"])
    fn = site["fn"]
    assert isinstance(fn, dist.TransformedDistribution)
    sigmas = torch.stack(sigmas)
    assert (sigmas > 0).all()
    # q(sigma) is the pushforward of N(loc, scale) through exp: log q(s) = log N(log s) - log s
    loc, scale = guide._get_loc_and_scale("sigma")
    value = site["value"]
    expected = dist.Normal(loc, scale).log_prob(value.log()) - value.log()
    torch.testing.assert_close(fn.log_prob(value), expected)
    # the factor sites stay plain Normals
    assert isinstance(trace.nodes["fc.A"]["fn"], dist.Independent)


def test_constrained_latent_model_trains():
    model = WithNoise()
    x, _ = data(num=64, in_features=3, out_features=2)
    y = 3.0 * torch.randn(64, 2)  # noise far larger than the prior predictive's: sigma must grow
    guide = FactorGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
    losses = [svi.step(x, y) for _ in range(100)]
    assert all(torch.isfinite(torch.tensor(losses)))
    loc, _ = guide._get_loc_and_scale("sigma")
    assert loc.exp().item() > 1.5  # the posterior median of sigma moved towards the data's noise level (~3)


# ------------------------------------------------------------------------------------------ initialisation functions
@_settings(max_examples=20)
@given(
    out_features=st.integers(1, 8),
    in_features=st.integers(1, 8),
    rank_fraction=st.floats(0, 1),
    gain=st.floats(0.1, 4.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_variance_matching_init_shapes_and_scale(out_features, in_features, rank_fraction, gain, seed):
    rank = 1 + int(rank_fraction * (min(out_features, in_features) - 1))
    init = variance_matching_init(out_features, in_features, rank, gain, generator=torch.Generator().manual_seed(seed))
    assert isinstance(init, FactorInit)
    assert init.a_loc.shape == (out_features, rank)
    assert init.b_loc.shape == (in_features, rank)
    assert init.entry_scale == pytest.approx((gain / (in_features * rank)) ** 0.25)
    again = variance_matching_init(out_features, in_features, rank, gain, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(init.a_loc, again.a_loc) and torch.equal(init.b_loc, again.b_loc)


def test_variance_matching_init_entry_distribution():
    init = variance_matching_init(2000, 1000, 50, 2.0, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert init.a_loc.dtype == torch.float64
    s = (2.0 / 1000 / 50) ** 0.25
    entries = torch.cat([init.a_loc.flatten(), init.b_loc.flatten()])
    num = entries.numel()
    assert abs(entries.mean()) < 6 * s / num**0.5
    # Var of the sample second moment of N(0, s^2) entries is 2 s^4 / num
    assert abs(entries.square().mean() - s**2) < 6 * (2 / num) ** 0.5 * s**2


@pytest.mark.parametrize("rank", [0, 4, 1.5, True, -2])
def test_init_rank_validation(rank):
    with pytest.raises(ValueError, match="rank"):
        variance_matching_init(3, 5, rank)
    with pytest.raises(ValueError, match="rank"):
        svd_init(torch.randn(3, 5), rank)


def test_init_other_validation():
    with pytest.raises(ValueError, match="gain"):
        variance_matching_init(3, 5, 1, gain=0.0)
    with pytest.raises(ValueError, match="weight"):
        svd_init(torch.randn(3), 1)
    with pytest.raises(ValueError, match="weight"):
        svd_init(torch.randn(2, 3, 4), 1)


@_settings(max_examples=20)
@given(
    out_features=st.integers(1, 7),
    in_features=st.integers(1, 7),
    rank_fraction=st.floats(0, 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_svd_init_is_balanced_truncated_svd(out_features, in_features, rank_fraction, seed):
    torch.manual_seed(seed)
    rank = 1 + int(rank_fraction * (min(out_features, in_features) - 1))
    weight = torch.randn(out_features, in_features, dtype=torch.float64)
    init = svd_init(weight, rank)
    assert init.a_loc.shape == (out_features, rank) and init.b_loc.shape == (in_features, rank)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    truncated = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
    torch.testing.assert_close(init.a_loc @ init.b_loc.T, truncated)
    # balanced: column k of both factors has norm sqrt(sigma_k)
    torch.testing.assert_close(torch.linalg.vector_norm(init.a_loc, dim=0), torch.linalg.vector_norm(init.b_loc, dim=0))
    torch.testing.assert_close(torch.linalg.vector_norm(init.a_loc, dim=0), s[:rank].sqrt())
    # orthogonal columns (they are scaled singular vectors)
    gram = init.a_loc.T @ init.a_loc
    torch.testing.assert_close(gram, torch.diag(s[:rank]), atol=1e-10, rtol=1e-10)
    assert init.entry_scale == pytest.approx((weight.square().mean().item() / rank) ** 0.25)
    if rank == min(out_features, in_features):
        torch.testing.assert_close(init.a_loc @ init.b_loc.T, weight)


def test_svd_init_of_zero_weight_is_finite():
    init = svd_init(torch.zeros(3, 4), 2)
    assert torch.isfinite(init.a_loc).all() and torch.isfinite(init.b_loc).all()
    assert init.entry_scale > 0
