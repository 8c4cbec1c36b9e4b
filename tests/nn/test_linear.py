"""Tests for LowRankLinear: the forward pass, particle dimensions, validation, initialisation and the posterior."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn

import pyro_lowrank.nn.linear as linear_module
from pyro_lowrank.distributions import GaussianPrior, LowRankMatrixNormal, ScaleMixturePrior
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.nn import LowRankLinear, factored_is_cheaper


def _settings(max_examples: int):
    return settings(derandomize=True, deadline=None, max_examples=max_examples, database=None)


def trace_layer(layer, x):
    trace = poutine.trace(layer).get_trace(x)
    values = {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}
    return values, trace.nodes["_RETURN"]["value"]


# ---------------------------------------------------------------------------------------------- forward
@_settings(max_examples=25)
@given(
    in_features=st.integers(1, 6),
    out_features=st.integers(1, 6),
    rank_fraction=st.floats(0, 1),
    x_batch=st.sampled_from([(), (1,), (7,), (2, 3)]),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_forward_equals_dense_formula(in_features, out_features, rank_fraction, x_batch, bias, seed):
    torch.manual_seed(seed)
    rank = 1 + int(rank_fraction * (min(in_features, out_features) - 1))
    layer = LowRankLinear(in_features, out_features, rank, bias=bias)
    x = torch.randn(x_batch + (in_features,))
    values, out = trace_layer(layer, x)
    assert set(values) == ({"A", "B", "bias"} if bias else {"A", "B"})
    a, b = values["A"], values["B"]
    assert a.shape == (out_features, rank) and b.shape == (in_features, rank)
    expected = x @ (a @ b.T).T + (values["bias"] if bias else 0)
    assert out.shape == x_batch + (out_features,)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "in_features, out_features, rank, batch", [(5, 4, 2, 3), (4, 4, 4, 20), (6, 3, 3, 50), (3, 6, 1, 1)]
)
def test_factored_and_dense_paths_agree(monkeypatch, in_features, out_features, rank, batch):
    torch.manual_seed(0)
    layer = LowRankLinear(in_features, out_features, rank)
    x = torch.randn(batch, in_features)
    values, _ = trace_layer(layer, x)
    calls = []

    def forced(choice):
        def fake(*args):
            calls.append(args)
            return choice
        return fake

    outputs = {}
    for choice in (True, False):
        monkeypatch.setattr(linear_module, "factored_is_cheaper", forced(choice))
        outputs[choice] = poutine.condition(layer, data=values)(x)
    torch.testing.assert_close(outputs[True], outputs[False], rtol=1e-5, atol=1e-5)
    expected = x @ (values["A"] @ values["B"].T).T + values["bias"]
    torch.testing.assert_close(outputs[True], expected, rtol=1e-5, atol=1e-5)
    # the layer asks about the number of input rows, in (batch, out, in, rank) order
    assert calls == [(batch, out_features, in_features, rank)] * 2


@pytest.mark.parametrize(
    "batch, m, n, r, expected",
    [
        (1, 4, 4, 4, True),  # 1*4*8 = 32 <= 16*5 = 80
        (100, 4, 4, 4, False),  # 100*4*8 = 3200 > 16*104 = 1664
        (10, 10, 10, 10, True),  # 2000 <= 2000 (tie goes to the factored path)
        (11, 10, 10, 10, False),  # 2200 > 2100
        (1000, 300, 200, 150, False),  # 1000*150*500 = 75e6 > 60000*1150 = 69e6
        (1000, 300, 200, 100, True),  # 50e6 <= 66e6
    ],
)
def test_factored_is_cheaper_cases(batch, m, n, r, expected):
    assert factored_is_cheaper(batch, m, n, r) is expected


@_settings(max_examples=200)
@given(
    batch=st.integers(1, 10**6),
    m=st.integers(2, 2000),
    n=st.integers(2, 2000),
    fraction=st.floats(0, 1, exclude_max=True),
)
def test_factored_path_always_chosen_below_half_rank(batch, m, n, fraction):
    """r < min(m, n)/2 implies r (m + n) < m n, so batch r (m + n) < batch m n <= m n (r + batch)."""
    limit = (min(m, n) - 1) // 2  # largest integer r with r < min(m, n) / 2
    if limit < 1:
        return
    rank = 1 + int(fraction * limit)
    assert rank < min(m, n) / 2
    assert factored_is_cheaper(batch, m, n, rank)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_full_square_rank_uses_dense_path_iff_batch_exceeds_n(n):
    for batch in range(1, 3 * n + 2):
        assert factored_is_cheaper(batch, n, n, n) is (batch <= n)


# ---------------------------------------------------------------------------------------------- particles
class Net(PyroModule):
    def __init__(self, in_features=3, out_features=4, rank=2):
        super().__init__()
        self.fc = LowRankLinear(in_features, out_features, rank)

    def forward(self, x, y=None):
        out = self.fc(x)
        if y is not None:
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(out, 1.0).to_event(1), obs=y)
        return out


@pytest.mark.parametrize("num_particles", [1, 5])
def test_leading_particle_dimensions(num_particles):
    torch.manual_seed(0)
    net = Net()
    guide = FactorGuide(net)
    x, y = torch.randn(6, 3), torch.randn(6, 4)
    guide(x, y)  # set up outside the particle plate
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        out = poutine.replay(net, trace=guide_trace)(x)
    a = guide_trace.nodes["fc.A"]["value"]
    b = guide_trace.nodes["fc.B"]["value"]
    bias = guide_trace.nodes["fc.bias"]["value"]
    assert a.shape == (num_particles, 1, 4, 2)
    assert b.shape == (num_particles, 1, 3, 2)
    assert bias.shape == (num_particles, 1, 4)
    # the factors' batch dimensions (P, 1) broadcast right-aligned against the input's (N,), as Pyro's plates expect
    assert out.shape == (num_particles, 6, 4)
    per_particle = out
    for p in range(num_particles):
        expected = x @ (a[p, 0] @ b[p, 0].T).T + bias[p, 0]
        torch.testing.assert_close(per_particle[p], expected, rtol=1e-5, atol=1e-5)
    if num_particles > 1:
        assert not torch.allclose(per_particle[0], per_particle[1])


def test_vectorised_elbo_counts_each_particle_once():
    """DESIGN 3: the layer accepts leading particle dimensions so that Trace_ELBO(vectorize_particles=True) works.

    With the particle plate at dim -2 and the data plate at dim -1, the likelihood's log_prob must have shape (P, N)
    (one term per particle and datum), and the vectorised P-particle loss must estimate the same -ELBO as the
    sequential one.
    """
    torch.manual_seed(0)
    net = Net()
    guide = FactorGuide(net)
    x, y = torch.randn(6, 3), 3.0 * torch.randn(6, 4)
    guide(x, y)
    num_particles = 5
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(net, trace=guide_trace)).get_trace(x, y)
    model_trace.compute_log_prob()
    assert model_trace.nodes["obs"]["log_prob"].shape == (num_particles, 6)

    vectorised = torch.tensor([
        Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1).loss(net, guide, x, y)
        for _ in range(10)
    ])
    sequential = torch.tensor([Trace_ELBO().loss(net, guide, x, y) for _ in range(50)])
    se = (vectorised.var() / len(vectorised) + sequential.var() / len(sequential)).sqrt()
    assert abs(vectorised.mean() - sequential.mean()) < 6 * se


@pytest.mark.parametrize("force_factored", [True, False])
def test_leading_particle_dimensions_unbatched_input(monkeypatch, force_factored):
    """An unbatched input ``x`` of shape ``(in_features,)`` with factors of shape ``(P, 1, m, r)`` must give one output
    per particle, ``(P, 1, out_features)``, whichever path (factored or dense W) the layer takes."""
    monkeypatch.setattr(linear_module, "factored_is_cheaper", lambda *args: force_factored)
    torch.manual_seed(0)
    layer = LowRankLinear(3, 4, 2)
    x = torch.randn(3)
    num_particles = 5
    with pyro.plate("particles", num_particles, dim=-2):
        values, out = trace_layer(layer, x)
    a, b, bias = values["A"], values["B"], values["bias"]
    assert a.shape == (num_particles, 1, 4, 2)
    assert out.shape == (num_particles, 1, 4)
    for p in range(num_particles):
        torch.testing.assert_close(out[p, 0], (a[p, 0] @ b[p, 0].T) @ x + bias[p, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_particles", [1, 4])
def test_sequence_dims_line_factors_up_with_per_datum_dimensions(num_particles):
    """With ``sequence_dims=1`` the factors' batch (P, 1) meets inputs (N, L, n) as (P, 1, 1): output (P, N, L, m),
    each particle applying its own W to every position of every datum."""
    torch.manual_seed(0)
    layer = LowRankLinear(3, 4, 2, sequence_dims=1)
    x = torch.randn(6, 5, 3)
    with pyro.plate("particles", num_particles, dim=-2):  # the data plate (dim -1) is entered after the network
        values, out = trace_layer(layer, x)
    assert values["A"].shape == (num_particles, 1, 4, 2)
    assert out.shape == (num_particles, 6, 5, 4)
    for p in range(num_particles):
        weight = values["A"][p, 0] @ values["B"][p, 0].T
        torch.testing.assert_close(out[p], x @ weight.T + values["bias"][p, 0], rtol=1e-5, atol=1e-5)
    # without particles the option changes nothing
    plain = LowRankLinear(3, 4, 2, sequence_dims=1)
    values, out = trace_layer(plain, x)
    torch.testing.assert_close(out, x @ (values["A"] @ values["B"].T).T + values["bias"])


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_sequence_dims_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=r"sequence_dims must be a non-negative integer"):
        LowRankLinear(3, 4, 2, sequence_dims=bad)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("shape", [(5, 4), (4,), (2, 3, 2)])
def test_wrong_input_size(shape):
    layer = LowRankLinear(3, 4, 2)
    with pytest.raises(ValueError) as info:
        layer(torch.randn(shape))
    message = str(info.value)
    assert "3" in message
    assert str(tuple(shape)) in message


def test_scalar_input_rejected():
    with pytest.raises(ValueError, match="last dimension 3"):
        LowRankLinear(3, 4, 2)(torch.tensor(1.0))


@pytest.mark.parametrize("rank", [0, -1, 4, 2.5, True, "2", None])
def test_bad_rank(rank):
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(3, 5, rank)  # min(m, n) = 3


@pytest.mark.parametrize("kwargs, name", [
    ({"in_features": 0}, "in_features"),
    ({"out_features": 2.0}, "out_features"),
    ({"init_scale_factor": 0.0}, "init_scale_factor"),
    ({"prior_scale": -1.0}, "scale"),
])
def test_bad_constructor_arguments(kwargs, name):
    args = {"in_features": 3, "out_features": 4, "rank": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        LowRankLinear(**args)


def test_prior_must_be_a_module():
    with pytest.raises(TypeError, match="prior"):
        LowRankLinear(3, 4, 1, prior=lambda shape: dist.Normal(0.0, 1.0).expand(shape).to_event(len(shape)))


# ---------------------------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_variance_matching_init(gain):
    m, n, r = 600, 800, 200
    torch.manual_seed(int(gain))
    layer = LowRankLinear(n, m, r, gain=gain, init_scale_factor=0.05)
    w = layer.a_init @ layer.b_init.T
    target = gain / n
    # Var of the empirical second moment is dominated by the r diagonal terms (sum_i a_ik^2)(sum_j b_jk^2) / (m n):
    # relative standard deviation about sqrt((2/m + 2/n) / r)
    rel_sd = ((2 / m + 2 / n) / r) ** 0.5
    assert abs(w.square().mean().item() / target - 1) < 6 * rel_sd
    assert 6 * rel_sd < 0.04
    entry_scale = (gain / n / r) ** 0.25
    assert layer.init_scale == pytest.approx(0.05 * entry_scale)
    assert layer.a_init.std().item() == pytest.approx(entry_scale, rel=0.05)
    assert layer.b_init.std().item() == pytest.approx(entry_scale, rel=0.05)
    assert torch.equal(layer.bias_init, torch.zeros(m))


def truncated_svd(weight, rank):
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank], s


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_from_linear_svd_init_is_best_rank_r_approximation(rank):
    torch.manual_seed(0)
    linear = nn.Linear(6, 5).double()
    layer = LowRankLinear.from_linear(linear, rank)
    assert layer.rank == rank
    approx = layer.a_init @ layer.b_init.T
    expected, s = truncated_svd(linear.weight.detach(), rank)
    torch.testing.assert_close(approx, expected)
    # Eckart-Young: the Frobenius error is the norm of the discarded singular values
    error = torch.linalg.matrix_norm(linear.weight.detach() - approx)
    torch.testing.assert_close(error, s[rank:].square().sum().sqrt())
    torch.testing.assert_close(layer.bias_init, linear.bias.detach())
    assert layer.a_init.dtype == torch.float64 and layer.prior.scale.dtype == torch.float64


@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_full_rank_reproduces_the_linear_layer(bias):
    torch.manual_seed(0)
    linear = nn.Linear(4, 3, bias=bias)
    layer = LowRankLinear.from_linear(linear, 3)
    torch.testing.assert_close(layer.a_init @ layer.b_init.T, linear.weight.detach(), rtol=1e-5, atol=1e-5)
    x = torch.randn(10, 4)
    init = {"A": layer.a_init, "B": layer.b_init}
    if bias:
        init["bias"] = layer.bias_init
    out = poutine.condition(layer, data=init)(x)
    torch.testing.assert_close(out, linear(x).detach(), rtol=1e-5, atol=1e-5)
    assert (layer.bias is None) == (not bias)


def test_from_linear_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Linear"):
        LowRankLinear.from_linear(nn.Conv1d(2, 3, 1), 1)


def test_from_linear_passes_kwargs():
    prior = ScaleMixturePrior()
    layer = LowRankLinear.from_linear(nn.Linear(4, 3), 2, prior=prior, init_scale_factor=0.01)
    assert layer.prior is prior
    assert layer.init_scale_factor == 0.01


# ---------------------------------------------------------------------------------------------- parameters and dtype
@pytest.mark.parametrize("in_features, out_features, rank, bias", [(3, 4, 2, True), (5, 2, 1, False), (4, 4, 4, True)])
def test_num_variational_parameters(in_features, out_features, rank, bias):
    layer = LowRankLinear(in_features, out_features, rank, bias=bias)
    expected = 2 * rank * (in_features + out_features) + (2 * out_features if bias else 0)
    assert layer.num_variational_parameters() == expected
    # and it is what a mean-field guide over the layer actually learns
    with pyro.settings.context(module_local_params=True):
        guide = FactorGuide(layer)
        guide(torch.randn(2, in_features))
        assert sum(p.numel() for p in guide.parameters()) == expected
    assert list(layer.parameters()) == []  # the layer itself has no learnable parameters, only sample sites


@pytest.mark.parametrize("prior", [None, ScaleMixturePrior()], ids=["gauss", "mix"])
def test_to_float64_moves_buffers_and_prior(prior):
    layer = LowRankLinear(3, 4, 2, prior=prior).to(torch.float64)
    for name in ("a_init", "b_init", "bias_init"):
        assert getattr(layer, name).dtype == torch.float64
    assert all(buf.dtype == torch.float64 for buf in layer.prior.buffers())
    assert len(list(layer.prior.buffers())) >= 2
    values, out = trace_layer(layer, torch.randn(5, 3, dtype=torch.float64))
    assert all(v.dtype == torch.float64 for v in values.values())
    assert out.dtype == torch.float64
    state = layer.state_dict()
    assert {"a_init", "b_init", "bias_init"} <= set(state)
    assert any(key.startswith("prior.") for key in state)


def test_prior_is_used_for_every_site():
    layer = LowRankLinear(3, 4, 2, prior=GaussianPrior(0.3))
    trace = poutine.trace(layer).get_trace(torch.randn(2, 3))
    for name, shape in (("A", (4, 2)), ("B", (3, 2)), ("bias", (4,))):
        fn = trace.nodes[name]["fn"]
        assert fn.event_shape == shape and fn.batch_shape == ()
        value = trace.nodes[name]["value"]
        torch.testing.assert_close(fn.log_prob(value), dist.Normal(0.0, 0.3).log_prob(value).sum())


# ---------------------------------------------------------------------------------------------- posterior and names
class Container(PyroModule):
    def __init__(self):
        super().__init__()
        self.fc = LowRankLinear(5, 3, 2)
        self.layers = PyroModule[nn.ModuleList]([LowRankLinear(3, 3, 1), LowRankLinear(3, 2, 1)])

    def forward(self, x, y=None):
        h = torch.relu(self.fc(x))
        for layer in self.layers:
            h = layer(h)
        if y is not None:
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(h, 1.0).to_event(1), obs=y)
        return h


def test_site_names_of_nested_layers():
    model = Container()
    x, y = torch.randn(4, 5), torch.randn(4, 2)
    trace = poutine.trace(model).get_trace(x, y)
    plates = {
        name for name, site in trace.nodes.items() if site["type"] == "sample" and isinstance(site["fn"], _Subsample)
    }
    assert plates == {"data"}
    latent = {
        name for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name not in plates
    }
    assert latent == {
        "fc.A", "fc.B", "fc.bias",
        "layers.0.A", "layers.0.B", "layers.0.bias",
        "layers.1.A", "layers.1.B", "layers.1.bias",
    }
    assert model.fc.site_name("A") == "fc.A"
    assert model.layers[1].site_name("bias") == "layers.1.bias"
    assert set(model.fc.initial_values()) == {"fc.A", "fc.B", "fc.bias"}


def test_weight_posterior_nested():
    model = Container()
    x, y = torch.randn(4, 5), torch.randn(4, 2)
    guide = FactorGuide(model)
    guide(x, y)
    q = model.fc.weight_posterior(guide)
    assert isinstance(q, LowRankMatrixNormal)
    assert q.event_shape == (3, 5) and q.rank == 2
    trace = poutine.trace(guide).get_trace(x, y)
    torch.testing.assert_close(q.a_loc, trace.nodes["fc.A"]["fn"].base_dist.loc.detach())
    torch.testing.assert_close(q.b_scale, trace.nodes["fc.B"]["fn"].base_dist.scale.detach())
    torch.testing.assert_close(q.a_loc, model.fc.a_init)
    q1 = model.layers[1].weight_posterior(guide)
    assert q1.event_shape == (2, 3) and q1.rank == 1
    torch.testing.assert_close(q1.b_loc, model.layers[1].b_init)


def test_weight_posterior_top_level_layer():
    layer = LowRankLinear(4, 3, 2)
    guide = FactorGuide(layer)
    guide(torch.randn(2, 4))
    q = layer.weight_posterior(guide)
    assert q.event_shape == (3, 4)
    torch.testing.assert_close(q.mean, layer.a_init @ layer.b_init.T)
    torch.testing.assert_close(q.a_scale, torch.full((3, 2), layer.init_scale))


@pytest.mark.parametrize("in_features, rank", [(32, 15), (128, 4), (7, 1)])
def test_matched_prior_gives_w_the_he_variance(in_features, rank):
    """prior_scale='matched': s = (gain / (n r))^(1/4), so the implied prior on W = A B^T has Var W_ij = r s^4 =
    gain / n at any width and rank; its draws confirm it."""
    layer = LowRankLinear(in_features, 64, rank, prior_scale="matched")
    scale = float(layer.prior.scale)
    assert scale == pytest.approx((2.0 / (in_features * rank)) ** 0.25)
    assert rank * scale**4 == pytest.approx(2.0 / in_features)
    torch.manual_seed(0)
    a = layer.prior((64, rank)).sample((200,))
    b = layer.prior((in_features, rank)).sample((200,))
    w = a @ b.transpose(-1, -2)
    assert float(w.var()) == pytest.approx(2.0 / in_features, rel=0.1)
    with pytest.raises(ValueError, match=r"prior_scale must be a positive float or 'matched', got 'he'"):
        LowRankLinear(in_features, 64, rank, prior_scale="he")
