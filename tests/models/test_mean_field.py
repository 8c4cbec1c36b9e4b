"""MeanFieldLinear / MeanFieldMLP: exact Bayesian linear regression, FactorGuide + fit + predict, counts, errors."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import PyroModule
from pyro_lowrank.inference import fit
from pyro_lowrank.models import mean_field as mean_field_module
from pyro_lowrank.models.local_reparameterization import LocalReparameterization
from pyro_lowrank.models.mean_field import MeanFieldLinear, MeanFieldMLP
from torch import nn

import pyro_lowrank  # noqa: F401  (module-local params)
from pyro_lowrank.distributions import ScaleMixturePrior
from pyro_lowrank.guides import FactorGuide, init_to_factors
from pyro_lowrank.predictive import predict

SIGMA, PRIOR_SCALE = 0.5, 1.0


class BayesLinReg(PyroModule):
    """y ~ N(x w, SIGMA^2), w ~ N(0, PRIOR_SCALE^2 I): one MeanFieldLinear(d, 1, bias=False)."""

    def __init__(self, d):
        super().__init__()
        self.linear = MeanFieldLinear(d, 1, bias=False, prior_scale=PRIOR_SCALE, init_scale_factor=0.2)

    def forward(self, x, y=None):
        f = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.deterministic("f", f, event_dim=0)
            pyro.sample("obs", dist.Normal(f, SIGMA), obs=y)
        return f


def _exact_posterior(x, y):
    precision = x.T @ x / SIGMA**2 + torch.eye(x.shape[1], dtype=x.dtype) / PRIOR_SCALE**2
    return torch.linalg.solve(precision, x.T @ y / SIGMA**2), precision


def _train_blr(x, y, steps=450):
    """Full-batch SVI (ELBOModule route, analytic KL, LRT, 32 vectorised particles), Adam with lr decaying
    geometrically from 0.1 to 0.005; returns the guide's mean and standard deviation averaged (Polyak-Ruppert: means
    and variances) over the last third of the steps."""
    model = BayesLinReg(x.shape[1]).double()
    guide = FactorGuide(model)
    loss_fn = TraceMeanField_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=1)(model, guide)
    loss_fn(x, y)  # set the guide up
    opt = torch.optim.Adam(loss_fn.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.05 ** (t / steps))
    locs, variances = [], []
    with LocalReparameterization():
        for step in range(steps):
            opt.zero_grad()
            loss_fn(x, y).backward()
            opt.step()
            sched.step()
            if step >= 2 * steps // 3:
                loc, scale = (t.detach().squeeze(0) for t in guide._get_loc_and_scale("linear.weight"))
                locs.append(loc)
                variances.append(scale.square())
    return model, guide, torch.stack(locs).mean(0), torch.stack(variances).mean(0).sqrt()


# Tolerances of the two regression tests: the target is exact (a Gaussian posterior restricted to diagonal
# Gaussians has its optimum at the exact mean with variances 1/Lambda_ii), so the only error is the SGD noise left
# after averaging the iterates. Over 12 runs (6 seeds x both designs) it stayed below 0.045 posterior standard
# deviations for the means and 2.3 % for the variances; the bounds are 0.15 sd and 6 %.
MEAN_TOL_SD, VAR_RTOL = 0.15, 0.06


def test_bayesian_linear_regression_orthogonal_design_recovers_the_exact_posterior_and_predictive():
    torch.manual_seed(1)
    n, d = 40, 3
    q, _ = torch.linalg.qr(torch.randn(n, d, dtype=torch.float64))
    x = q * torch.tensor([3.0, 5.0, 8.0], dtype=torch.float64)  # X^T X = diag(9, 25, 64)
    y = x @ torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64) + SIGMA * torch.randn(n, dtype=torch.float64)
    exact_mean, precision = _exact_posterior(x, y)
    assert torch.allclose(precision, torch.diag(precision.diagonal()))  # the exact posterior factorises
    model, guide, loc, scale = _train_blr(x, y)
    sd = precision.diagonal().rsqrt()
    assert ((loc - exact_mean).abs() / sd).max() < MEAN_TOL_SD
    torch.testing.assert_close(scale.square(), 1 / precision.diagonal(), rtol=VAR_RTOL, atol=0)

    x_test = torch.randn(5, d, dtype=torch.float64)
    exact_f_var = (x_test @ torch.linalg.solve(precision, x_test.T)).diagonal()
    fitted_f_var = x_test.square() @ scale.square()
    torch.testing.assert_close(fitted_f_var + SIGMA**2, exact_f_var + SIGMA**2, rtol=VAR_RTOL, atol=0)
    # |x (mu - m)| <= sum_i |x_i| tol sd_i <= tol sqrt(d) sqrt(x Lambda^-1 x^T) for a diagonal Lambda
    assert ((x_test @ (loc - exact_mean)).abs() < MEAN_TOL_SD * math.sqrt(d) * exact_f_var.sqrt()).all()
    # Monte Carlo through predict, with and without the local reparameterisation: the draws of f follow the
    # trained guide's predictive N(x mu, x^2 sigma^2) (within 4 standard errors of 20000 draws).
    final_loc, final_scale = (t.detach().squeeze(0) for t in guide._get_loc_and_scale("linear.weight"))
    mean, var = x_test @ final_loc, x_test.square() @ final_scale.square()
    for lrt in (False, True):
        if lrt:
            with LocalReparameterization():
                f = predict(model, guide, x_test, num_samples=20000)["f"]
        else:
            f = predict(model, guide, x_test, num_samples=20000)["f"]
        assert f.shape == (20000, 5)
        assert ((f.mean(0) - mean).abs() < 4 * (var / 20000).sqrt()).all()
        assert ((f.var(0) - var).abs() < 4 * var * math.sqrt(2 / 19999)).all()


def test_bayesian_linear_regression_correlated_design_gives_the_mean_field_optimum():
    torch.manual_seed(3)
    n, d = 40, 3
    mix = torch.tensor([[1.0, 0.6, 0.0], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    x = torch.randn(n, d, dtype=torch.float64) @ mix
    y = x @ torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64) + SIGMA * torch.randn(n, dtype=torch.float64)
    exact_mean, precision = _exact_posterior(x, y)
    assert (precision - torch.diag(precision.diagonal())).abs().max() > 10  # strongly correlated posterior
    _, _, loc, scale = _train_blr(x, y)
    # KL(q || p) over diagonal Gaussians: mean = exact mean, variance = 1 / Lambda_ii (< the exact marginal)
    sd = precision.diagonal().rsqrt()
    assert ((loc - exact_mean).abs() / sd).max() < MEAN_TOL_SD
    torch.testing.assert_close(scale.square(), 1 / precision.diagonal(), rtol=VAR_RTOL, atol=0)
    assert (scale.square() < torch.linalg.inv(precision).diagonal()).all()


# ---------------------------------------------------------------------------------------------- the layer


def test_layer_sites_init_and_guide_initialisation():
    layer = MeanFieldLinear(4, 3)
    trace = poutine.trace(layer).get_trace(torch.randn(5, 4))
    assert trace.nodes["weight"]["fn"].event_shape == (3, 4) and trace.nodes["weight"]["fn"].event_dim == 2
    assert trace.nodes["bias"]["fn"].event_shape == (3,)
    assert dict(layer.named_buffers()).keys() >= {"weight_init", "bias_init", "prior.loc", "prior.scale"}
    # He init: weight means ~ N(0, 2 / n); guide scales eta * sqrt(2 / n)
    big = MeanFieldLinear(400, 300)
    assert abs(big.weight_init.var().item() - 2 / 400) < 0.05 * 2 / 400
    assert big.init_scale == pytest.approx(0.1 * math.sqrt(2 / 400))
    guide = FactorGuide(layer)
    guide(torch.randn(5, 4))
    loc, scale = guide._get_loc_and_scale("weight")
    torch.testing.assert_close(loc, layer.weight_init)
    torch.testing.assert_close(scale, torch.full((3, 4), layer.init_scale))
    assert init_to_factors(layer)({"name": "bias"}).equal(layer.bias_init)
    assert layer.num_variational_parameters() == 2 * 3 * 4 + 2 * 3 == sum(p.numel() for p in guide.parameters())
    assert MeanFieldLinear(4, 3, bias=False).num_variational_parameters() == 2 * 3 * 4
    q_w = layer.weight_posterior(guide)
    assert q_w.event_shape == (3, 4) and torch.equal(q_w.mean, layer.weight_init)


def test_layer_forward_with_particle_dims_uses_the_sampled_weight():
    layer = MeanFieldLinear(4, 3)
    x = torch.randn(6, 4)
    with pyro.plate("particles", 5, dim=-2):
        trace = poutine.trace(layer).get_trace(x)
    w, b = trace.nodes["weight"]["value"], trace.nodes["bias"]["value"]
    assert w.shape == (5, 1, 3, 4)
    out = trace.nodes["_RETURN"]["value"]
    assert out.shape == (5, 6, 3)
    torch.testing.assert_close(out[2], x @ w[2, 0].T + b[2, 0])
    # Predictive-style values (S, m, n) without the singleton plate dim are aligned to the plates
    values = {"weight": torch.randn(5, 3, 4), "bias": torch.randn(5, 3)}
    with pyro.plate("particles", 5, dim=-2):
        out = poutine.condition(layer, values)(x)
    torch.testing.assert_close(out[4], x @ values["weight"][4].T + values["bias"][4])


def test_from_linear_and_set_init():
    linear = nn.Linear(4, 3).double()
    layer = MeanFieldLinear.from_linear(linear, init_scale_factor=0.5)
    assert layer.weight_init.dtype == torch.float64 and torch.equal(layer.weight_init, linear.weight.detach())
    assert torch.equal(layer.bias_init, linear.bias.detach())
    assert layer.init_scale == pytest.approx(0.5 * linear.weight.detach().square().mean().sqrt().item())
    with pytest.raises(ValueError, match="weight must have shape \\(3, 4\\), got \\(4, 3\\)"):
        layer.set_init(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear"):
        MeanFieldLinear.from_linear(nn.Conv1d(1, 1, 1))


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="in_features must be a positive integer, got 0"):
        MeanFieldLinear(0, 3)
    with pytest.raises(ValueError, match="init_scale_factor must be finite and > 0"):
        MeanFieldLinear(2, 3, init_scale_factor=0.0)
    with pytest.raises(TypeError, match="prior must be a FactorPrior module"):
        MeanFieldLinear(2, 3, prior=dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="MeanFieldLinear\\(in_features=2\\) expected x with last dimension 2"):
        MeanFieldLinear(2, 3)(torch.randn(4, 5))


# ---------------------------------------------------------------------------------------------- the MLP


def _moons(n, seed):
    gen = torch.Generator().manual_seed(seed)
    t = math.pi * torch.rand(n, generator=gen)
    y = torch.arange(n) % 2
    x = torch.stack([torch.cos(t) + y, torch.sin(t) * (1 - 2 * y) + 0.5 * y], -1)
    return x + 0.1 * torch.randn(n, 2, generator=gen), y


def test_mlp_with_factor_guide_and_fit_learns_moons():
    x, y = _moons(200, 0)
    x_test, y_test = _moons(200, 1)
    model = MeanFieldMLP(2, [24], num_classes=2, init_scale_factor=0.05)
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), num_epochs=10, batch_size=50, lr=0.08, seed=0, progress=False)
    assert result.train_loss[-1] < 0.5 * result.train_loss[0]
    f = predict(model, guide, x_test, num_samples=16)["f"]
    assert f.shape == (16, 200, 2)
    probs = f.softmax(-1).mean(0)
    accuracy = (probs.argmax(-1) == y_test).float().mean()
    nll = -probs[torch.arange(200), y_test].log().mean()
    assert accuracy > 0.8  # the majority class scores 0.5
    assert nll < 0.6 * math.log(2)  # the uniform predictor's NLL is log 2


@pytest.mark.parametrize("flag", [True, False])
def test_fit_uses_the_local_reparameterisation_exactly_when_the_flag_is_on(monkeypatch, flag):
    calls = []
    original = mean_field_module.local_reparameterized_linear

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(mean_field_module, "local_reparameterized_linear", counting)
    x, y = _moons(40, 0)
    model = MeanFieldMLP(2, [8], num_classes=2, local_reparameterization=flag)
    fit(model, FactorGuide(model), (x, y), num_epochs=1, batch_size=20, progress=False)
    assert bool(calls) is flag


@pytest.mark.parametrize(
    "likelihood, kwargs, shape",
    [("categorical", {"num_classes": 3}, (7, 5, 3)), ("gaussian", {}, (7, 5)), ("bernoulli", {}, (7, 5))],
)
def test_predict_shapes_and_parameter_count(likelihood, kwargs, shape):
    model = MeanFieldMLP(4, [6, 5], likelihood=likelihood, **kwargs)
    guide = FactorGuide(model)
    x = torch.randn(5, 4)
    y = {"categorical": torch.tensor([0, 1, 2, 0, 1]), "gaussian": torch.randn(5)}.get(likelihood, torch.ones(5))
    guide(x, y)  # set the guide up with y observed (as fit does), so obs is not a latent
    f = predict(model, guide, x, num_samples=7)["f"]
    assert f.shape == shape
    widths = [4, 6, 5, shape[-1] if likelihood == "categorical" else 1]
    expected = 2 * sum(m * n + m for n, m in itertools.pairwise(widths))
    assert model.num_variational_parameters() == expected == sum(p.numel() for p in guide.parameters())


def test_vectorised_particles_and_a_non_gaussian_prior():
    x, y = _moons(30, 0)
    prior = ScaleMixturePrior(0.5, 1.0, math.exp(-6))
    model = MeanFieldMLP(2, [8], num_classes=2, prior=prior)
    assert model.layers[0].prior is not model.layers[1].prior and model.layers[0].prior is not prior
    guide = FactorGuide(model)
    loss = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)(model, guide)
    value = loss(x, y)  # Monte Carlo KL: no closed form against the mixture prior
    assert torch.isfinite(value)
    value.backward()


def test_mlp_configuration_errors_and_messages():
    with pytest.raises(ValueError, match="hidden_features\\[1\\] must be a positive integer, got 0"):
        MeanFieldMLP(3, [4, 0], likelihood="gaussian")
    with pytest.raises(ValueError, match="hidden_features\\[0\\] must be a positive integer, got -2"):
        MeanFieldMLP(3, [-2], likelihood="gaussian")
    with pytest.raises(ValueError, match="hidden_features\\[0\\] must be a positive integer, got 2.5"):
        MeanFieldMLP(3, [2.5], likelihood="gaussian")
    with pytest.raises(TypeError, match="hidden_features must be a sequence of positive ints"):
        MeanFieldMLP(3, 8, likelihood="gaussian")
    with pytest.raises(ValueError, match="in_features must be a positive integer, got 0"):
        MeanFieldMLP(0, [4], likelihood="gaussian")
    with pytest.raises(ValueError, match="needs num_classes"):
        MeanFieldMLP(3, [4])
    with pytest.raises(ValueError, match="num_classes is only used with likelihood='categorical'"):
        MeanFieldMLP(3, [4], likelihood="gaussian", num_classes=2)
    with pytest.raises(ValueError, match="out_features must be 1 for this likelihood, got 2"):
        MeanFieldMLP(3, [4], 2, likelihood="bernoulli")
    model = MeanFieldMLP(3, [4], likelihood="gaussian")
    with pytest.raises(ValueError, match="MeanFieldMLP\\(in_features=3\\) expected x with last dimension 3"):
        model(torch.randn(5, 2))
    with pytest.raises(ValueError, match="MeanFieldMLP\\(in_features=3\\) expected x with last dimension 3"):
        model.check_data(torch.randn(5, 2))
    with pytest.raises(ValueError, match="y must have shape \\(5,\\) to match x, got \\(4,\\)"):
        model(torch.randn(5, 3), torch.randn(4))
    with pytest.raises(ValueError, match="not both"):
        model(torch.randn(5, 3), num_data=10, subsample_size=2)


def test_mlp_plate_conventions_match_the_low_rank_mlp():
    model = MeanFieldMLP(3, [4], likelihood="gaussian")
    x, y = torch.randn(8, 3), torch.randn(8)
    trace = poutine.trace(model).get_trace(x[:4], y[:4], num_data=8)
    assert trace.nodes["data"]["fn"].size == 8 and trace.nodes["f"]["value"].shape == (4,)
    trace.compute_log_prob()
    assert trace.nodes["obs"]["scale"] == 2.0  # N / B likelihood scaling
    trace = poutine.trace(model).get_trace(x, y, subsample_size=3)
    assert trace.nodes["obs"]["value"].shape == (3,)
