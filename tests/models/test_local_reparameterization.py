"""The local reparameterisation handler: exact per-datum moments, lower gradient variance, guide (never prior)
statistics, fall-backs to the sampled weight, cleanup."""

import gc
import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.nn import PyroModule
from pyro_lowrank.models.local_reparameterization import (
    LocalReparameterization,
    active_handler,
    gaussian_stats,
)
from pyro_lowrank.models.mean_field import MeanFieldLinear, MeanFieldMLP

import pyro_lowrank  # noqa: F401  (module-local params)
from pyro_lowrank.distributions import ScaleMixturePrior
from pyro_lowrank.guides import FactorGuide, init_to_factors
from pyro_lowrank.predictive import predict

S = 20000  # Monte Carlo draws of the moment tests


class OneLayer(PyroModule):
    """f = x W^T + b with W, b ~ N(0, 1) a priori; y ~ N(f, 1)."""

    def __init__(self, n, m, prior=None, bias=True):
        super().__init__()
        self.linear = MeanFieldLinear(n, m, prior=prior, bias=bias)

    def forward(self, x, y=None):
        f = self.linear(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.deterministic("f", f, event_dim=1)
            pyro.sample("obs", dist.Normal(f, 1.0).to_event(1), obs=y)
        return f


def _normal_guide(w_loc, w_scale, b_loc, b_scale):
    """A hand-written guide emitting the Normal sites itself (as FactorGuide does)."""

    def guide(x, y=None):
        pyro.sample("linear.weight", dist.Normal(w_loc, w_scale).to_event(2))
        pyro.sample("linear.bias", dist.Normal(b_loc, b_scale).to_event(1))

    return guide


def _fixed_guide(n=4, m=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = (2 * torch.randn(m, n, generator=gen), 0.2 + torch.rand(m, n, generator=gen),
              torch.randn(m, generator=gen), 0.2 + torch.rand(m, generator=gen))
    return params, _normal_guide(*params)


def _exact_moments(x, w_loc, w_scale, b_loc, b_scale):
    return x @ w_loc.T + b_loc, x.square() @ w_scale.square().T + b_scale.square()


def _assert_moments(f, mean, var, k=4.0):
    """Sample mean and variance of S Gaussian draws within k standard errors (sqrt(var/S), var sqrt(2/(S-1)))."""
    num = f.shape[0]
    assert ((f.mean(0) - mean).abs() < k * (var / num).sqrt()).all()
    assert ((f.var(0) - var).abs() < k * var * math.sqrt(2 / (num - 1))).all()


def test_lrt_and_weight_sampling_give_the_same_per_datum_moments():
    params, guide = _fixed_guide()
    model = OneLayer(4, 3)
    x = torch.randn(5, 4)
    x[1] = 0.0  # a zero input row: the pre-activation is the bias alone
    mean, var = _exact_moments(x, *params)
    f_weight = predict(model, guide, x, num_samples=S)["f"]
    with LocalReparameterization():
        f_lrt = predict(model, guide, x, num_samples=S)["f"]
    assert f_lrt.shape == f_weight.shape == (S, 5, 3)
    _assert_moments(f_weight, mean, var)
    _assert_moments(f_lrt, mean, var)
    # and directly against each other: the difference of two independent means has variance 2 var / S
    assert ((f_lrt.mean(0) - f_weight.mean(0)).abs() < 4 * (2 * var / S).sqrt()).all()


def test_lrt_draws_are_independent_across_data_points():
    """The documented price: one weight draw couples all inputs, the local reparameterisation does not."""
    _, guide = _fixed_guide()
    model = OneLayer(4, 3)
    x = torch.randn(1, 4).expand(2, 4)  # the same input twice
    f_weight = predict(model, guide, x, num_samples=4000)["f"]
    with LocalReparameterization():
        f_lrt = predict(model, guide, x, num_samples=4000)["f"]
    torch.testing.assert_close(f_weight[:, 0], f_weight[:, 1])
    corr = torch.corrcoef(torch.stack([f_lrt[:, 0, 0], f_lrt[:, 1, 0]]))[0, 1]
    assert abs(corr) < 4 / math.sqrt(4000)


def _gradient_variance(lrt, repeats=150):
    torch.manual_seed(0)
    n, m, batch = 6, 2, 32
    w_loc = torch.randn(m, n, requires_grad=True)
    w_rho = torch.full((m, n), -1.0, requires_grad=True)
    b_loc = torch.zeros(m, requires_grad=True)
    b_rho = torch.full((m,), -1.0, requires_grad=True)
    softplus = torch.nn.functional.softplus

    def guide(x, y=None):
        pyro.sample("linear.weight", dist.Normal(w_loc, softplus(w_rho)).to_event(2))
        pyro.sample("linear.bias", dist.Normal(b_loc, softplus(b_rho)).to_event(1))

    model = OneLayer(n, m)
    x = torch.randn(batch, n)
    y = x @ torch.randn(n, m) + 0.1 * torch.randn(batch, m)
    elbo = TraceMeanField_ELBO(max_plate_nesting=1)
    grads = []
    for _ in range(repeats):
        if lrt:
            with LocalReparameterization():
                loss = elbo.differentiable_loss(model, guide, x, y)
        else:
            loss = elbo.differentiable_loss(model, guide, x, y)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, [w_loc, w_rho])]))
    grads = torch.stack(grads)
    return grads.mean(0), grads.var(0)


def test_lrt_lowers_the_elbo_gradient_variance():
    mean_w, var_w = _gradient_variance(lrt=False)
    mean_l, var_l = _gradient_variance(lrt=True)
    # same expected gradient (both unbiased): the difference of means within 5 standard errors
    assert ((mean_w - mean_l).abs() < 5 * ((var_w + var_l) / 150).sqrt()).all()
    # and a much smaller variance: a minibatch of 32 shares one weight draw without the trick
    assert var_l.sum() < 0.5 * var_w.sum()


def test_statistics_are_the_guides_even_when_the_handler_is_entered_inside_the_model():
    """MeanFieldMLP enters the handler in its forward, after the guide ran: the replayed weight must resolve to
    the guide's Normal, not to the prior's (which would silently give prior-predictive pre-activations)."""
    model = MeanFieldMLP(4, [], likelihood="gaussian", init_scale_factor=1.0)
    layer = model.layers[0]
    w_loc = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    layer.set_init(w_loc, torch.tensor([0.7]), entry_scale=0.5)  # guide: N(w_loc, 0.25), far from the N(0, 1) prior
    guide = FactorGuide(model)
    x = torch.randn(6, 4)
    guide(x, torch.zeros(6))
    f = predict(model, guide, x, num_samples=S)["f"]
    mean = x @ w_loc[0] + 0.7
    var = 0.25 * (x.square().sum(-1) + 1)
    _assert_moments(f, mean, var)
    # the trick was used: identical inputs get independent draws; with the flag off they coincide
    twice = x[:1].expand(2, 4)
    f = predict(model, guide, twice, num_samples=4000)["f"]
    assert abs(torch.corrcoef(f.T)[0, 1]) < 4 / math.sqrt(4000)
    model.local_reparameterization = False
    f = predict(model, guide, twice, num_samples=100)["f"]
    torch.testing.assert_close(f[:, 0], f[:, 1])


def test_prior_predictive_under_the_handler_uses_the_prior_statistics():
    model = OneLayer(3, 2)
    x = torch.randn(4, 3)
    with LocalReparameterization(), pyro.plate("draws", S, dim=-2):
        f = model(x)
    _assert_moments(f, torch.zeros(4, 2), (x.square().sum(-1, keepdim=True) + 1).expand(4, 2))


def test_fall_back_to_the_sampled_weight_when_no_gaussian_is_known():
    x = torch.randn(5, 4)
    w, b = torch.randn(3, 4), torch.randn(3)
    with LocalReparameterization():
        # conditioned (observed) weights are used as given
        f = poutine.condition(OneLayer(4, 3), {"linear.weight": w, "linear.bias": b})(x)
        torch.testing.assert_close(f, x @ w.T + b)
        # a Delta guide
        def delta_guide(x, y=None):
            pyro.sample("linear.weight", dist.Delta(w).to_event(2))
            pyro.sample("linear.bias", dist.Delta(b).to_event(1))

        trace = poutine.trace(delta_guide).get_trace(x)
        f = poutine.replay(OneLayer(4, 3), trace=trace)(x)
        torch.testing.assert_close(f, x @ w.T + b)
        # a non-Gaussian prior, run without a guide
        model = OneLayer(4, 3, prior=ScaleMixturePrior())
        trace = poutine.trace(model).get_trace(x)
        w_s, b_s = trace.nodes["linear.weight"]["value"], trace.nodes["linear.bias"]["value"]
        torch.testing.assert_close(trace.nodes["_RETURN"]["value"], x @ w_s.T + b_s)
        # an autoguide's initialisation trace: the init values are used, not the prior's statistics
        model = OneLayer(4, 3)
        f = InitMessenger(init_to_factors(model))(model)(x)
        torch.testing.assert_close(f, x @ model.linear.weight_init.T + model.linear.bias_init)


def test_first_writer_wins_and_entries_are_cleared():
    (w_loc, w_scale, *_), guide = _fixed_guide()
    model = OneLayer(4, 3)
    x = torch.randn(5, 4)
    with LocalReparameterization() as handler:
        assert active_handler() is handler
        guide_trace = poutine.trace(guide).get_trace(x)
        value = guide_trace.nodes["linear.weight"]["value"]
        assert gaussian_stats(value).loc is w_loc
        poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        assert gaussian_stats(value).loc is w_loc and gaussian_stats(value).scale is w_scale
        assert gaussian_stats(value.clone()) is None  # keyed by identity
        assert len(handler) >= 2
    assert active_handler() is None and len(handler) == 0
    assert gaussian_stats(value) is None


def test_a_handler_around_many_steps_does_not_grow():
    model = MeanFieldMLP(3, [5], likelihood="gaussian")
    guide = FactorGuide(model)
    x, y = torch.randn(16, 3), torch.randn(16)
    loss_fn = TraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    with LocalReparameterization() as handler:
        for _ in range(20):
            loss_fn(x, y).backward()
        gc.collect()
        assert len(handler) == 0  # every recorded tensor died with its trace


def test_gradients_stay_finite_for_all_zero_inputs():
    """An all-zero input row (dead ReLUs) without a bias has pre-activation variance 0, where d sqrt / d var is
    infinite; the gradient must stay finite."""
    w_loc = torch.randn(3, 4, requires_grad=True)
    w_rho = torch.zeros(3, 4, requires_grad=True)

    def guide(x, y=None):
        pyro.sample("linear.weight", dist.Normal(w_loc, torch.nn.functional.softplus(w_rho)).to_event(2))

    model = OneLayer(4, 3, bias=False)
    x = torch.zeros(3, 4)
    x[0, 0] = 1.0
    with LocalReparameterization():
        loss = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x, torch.zeros(3, 3))
    grads = torch.autograd.grad(loss, [w_loc, w_rho])
    assert all(torch.isfinite(g).all() for g in grads)


def test_plain_svi_with_vectorised_particles():
    """Plain Pyro SVI and vectorised ELBO particles with the automatic handler of MeanFieldMLP."""
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = x[:, 0] - 2 * x[:, 1]
    model = MeanFieldMLP(2, [8], likelihood="gaussian", noise_scale=0.3, init_scale_factor=0.05)
    guide = FactorGuide(model)
    elbo = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.03}), elbo)
    losses = [svi.step(x, y) for _ in range(40)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    f = predict(model, guide, x, num_samples=5)["f"]
    assert f.shape == (5, 64)


def test_pyro_predictive_and_autonormal_fall_back_to_weight_sampling(monkeypatch):
    """Pyro's Predictive conditions the model on guide samples and AutoNormal emits a Delta at the weight site: in
    both cases no Gaussian is known for the weight tensor, so the sampled weights are used (and shapes hold)."""
    from pyro.infer import Predictive, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_lowrank.models import mean_field as mean_field_module

    calls = []
    original = mean_field_module.local_reparameterized_linear
    monkeypatch.setattr(mean_field_module, "local_reparameterized_linear",
                        lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    x, y = torch.randn(10, 3), torch.randn(10)
    model = MeanFieldMLP(3, [5], likelihood="gaussian")
    guide = FactorGuide(model)
    guide(x, y)
    samples = Predictive(model, guide=guide, num_samples=7, parallel=True, return_sites=["f"])(x)
    assert samples["f"].shape == (7, 10) and not calls
    auto = AutoNormal(model, init_loc_fn=init_to_factors(model))
    assert math.isfinite(SVI(model, auto, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(x, y)) and not calls
    predict(model, guide, x, num_samples=3)  # while the FactorGuide path does use the trick
    assert calls
