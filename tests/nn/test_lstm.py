"""Tests for LowRankLSTM: exactness against torch.nn.LSTM, sampling once per sequence, particle dimensions,
initialisation, gradients, validation and dtype/device."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import PyroModule
from torch import nn

import pyro_lowrank  # noqa: F401  (module-local params)
import pyro_lowrank.nn.linear as linear_module
import pyro_lowrank.nn.lstm as lstm_module
from pyro_lowrank.distributions import GaussianPrior, ScaleMixturePrior
from pyro_lowrank.guides import FactorGuide, factor_initial_values
from pyro_lowrank.nn.lstm import LowRankLSTM

D64 = torch.float64


def sample_values(trace) -> dict[str, torch.Tensor]:
    return {name: site["value"] for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]}


def manual_lstm(x, weights, h0=None, c0=None):
    """Reference LSTM, batch-first ``x`` (N, L, n); ``weights`` = [(W_ih, W_hh, b)] per layer (b may be None)."""
    num_layers, hidden = len(weights), weights[0][1].shape[1]
    n = x.shape[0]
    h0 = x.new_zeros(num_layers, n, hidden) if h0 is None else h0
    c0 = x.new_zeros(num_layers, n, hidden) if c0 is None else c0
    h_n, c_n = [], []
    for layer, (w_ih, w_hh, b) in enumerate(weights):
        h, c, outs = h0[layer], c0[layer], []
        for t in range(x.shape[1]):
            gates = x[:, t] @ w_ih.T + h @ w_hh.T + (0 if b is None else b)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        x = torch.stack(outs, dim=1)
        h_n.append(h)
        c_n.append(c)
    return x, torch.stack(h_n), torch.stack(c_n)


def weights_from(values, prefix="", num_layers=2, particle=None, bias=True):
    pick = (lambda t: t) if particle is None else (lambda t: t[particle].reshape(t.shape[-2:] if t.dim() > 2 else
                                                                                  t.shape[-1:]))
    out = []
    for l in range(num_layers):
        w_ih = pick(values[f"{prefix}ih.{l}.A"]) @ pick(values[f"{prefix}ih.{l}.B"]).T
        w_hh = pick(values[f"{prefix}hh.{l}.A"]) @ pick(values[f"{prefix}hh.{l}.B"]).T
        b = pick(values[f"{prefix}ih.{l}.bias"]) if bias else None
        out.append((w_ih, w_hh, b))
    return out


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("given_state", [False, True])
def test_full_rank_from_lstm_reproduces_nn_lstm(batch_first, bias, unbatched, given_state):
    torch.manual_seed(1)
    lstm = nn.LSTM(5, 8, num_layers=2, batch_first=batch_first, bias=bias).to(D64)
    model = LowRankLSTM.from_lstm(lstm, rank_ih=[5, 8], rank_hh=8)  # min(4H, n_l) and min(4H, H)
    assert model.rank_ih == (5, 8) and model.rank_hh == (8, 8)
    assert model.batch_first is batch_first and model.bias is bias and model.ih[1].a_init.dtype == D64
    conditioned = poutine.condition(model, data=factor_initial_values(model))
    shape = (7, 5) if unbatched else ((3, 7, 5) if batch_first else (7, 3, 5))
    x = torch.randn(shape, dtype=D64)
    args = (x,)
    if given_state:
        state_shape = (2, 8) if unbatched else (2, 3, 8)
        args = (x, (torch.randn(state_shape, dtype=D64), torch.randn(state_shape, dtype=D64)))
    expected, (h_ref, c_ref) = lstm(*args)
    output, (h_n, c_n) = conditioned(*args)
    assert output.dtype == D64 and output.shape == expected.shape and h_n.shape == h_ref.shape
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_n, h_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(c_n, c_ref, rtol=0, atol=1e-10)


def test_truncated_svd_gives_best_rank_r_approximation():
    torch.manual_seed(2)
    lstm = nn.LSTM(6, 5, num_layers=2).to(D64)
    model = LowRankLSTM.from_lstm(lstm, rank_ih=[3, 2], rank_hh=[4, 1])
    for layer, name, rank in [(model.ih[0], "weight_ih_l0", 3), (model.ih[1], "weight_ih_l1", 2),
                              (model.hh[0], "weight_hh_l0", 4), (model.hh[1], "weight_hh_l1", 1)]:
        weight = getattr(lstm, name).detach()
        mean = layer.a_init @ layer.b_init.T
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        torch.testing.assert_close(torch.linalg.svdvals(mean)[:rank], s[:rank], rtol=1e-10, atol=1e-12)
        assert torch.linalg.matrix_rank(mean) == rank
        torch.testing.assert_close(mean, (u[:, :rank] * s[:rank]) @ vh[:rank], rtol=1e-10, atol=1e-12)
        # Eckart-Young-Mirsky: the Frobenius error is the norm of the discarded singular values
        torch.testing.assert_close(torch.linalg.norm(weight - mean), s[rank:].norm(), rtol=1e-10, atol=1e-12)
    # bias mean is bias_ih + bias_hh
    torch.testing.assert_close(model.ih[1].bias_init, (lstm.bias_ih_l1 + lstm.bias_hh_l1).detach())


# ---------------------------------------------------------------------------------------------- sampling once
def test_factors_sampled_once_per_sequence_and_reused_at_every_step(monkeypatch):
    torch.manual_seed(3)
    model = LowRankLSTM(4, 6, num_layers=2, rank_ih=2, rank_hh=3, batch_first=True).to(D64)
    fetches = []
    original = lstm_module.align_to_plates
    monkeypatch.setattr(lstm_module, "align_to_plates", lambda *a, **k: fetches.append(1) or original(*a, **k))
    names = {}
    for length in (1, 12):
        fetches.clear()
        trace = poutine.trace(model).get_trace(torch.randn(5, length, 4, dtype=D64))
        names[length] = sorted(sample_values(trace))
        assert len(fetches) == 2 * 2  # A_hh and B_hh once per layer, whatever L
    assert names[1] == names[12] and len(names[12]) == 10  # 2 x (A, B, bias) + 2 x (A, B)
    assert names[12] == sorted(f"{kind}.{l}.{s}" for l in range(2) for kind, sites in
                               (("ih", ("A", "B", "bias")), ("hh", ("A", "B"))) for s in sites)
    # the L = 12 outputs are those of one fixed W per matrix applied at every step
    x = torch.randn(5, 12, 4, dtype=D64)
    trace = poutine.trace(model).get_trace(x)
    output, (h_n, c_n) = trace.nodes["_RETURN"]["value"]
    expected, h_ref, c_ref = manual_lstm(x, weights_from(sample_values(trace)))
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_n, h_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(c_n, c_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("rank_hh", [1, 6])
def test_factored_and_dense_recurrence_agree(monkeypatch, rank_hh):
    torch.manual_seed(4)
    model = LowRankLSTM(3, 6, num_layers=1, rank_ih=2, rank_hh=rank_hh, batch_first=True).to(D64)
    x = torch.randn(4, 5, 3, dtype=D64)
    values = sample_values(poutine.trace(model).get_trace(x))
    calls, outputs = [], {}
    for choice in (True, False):
        monkeypatch.setattr(linear_module, "factored_is_cheaper", lambda *a, c=choice: calls.append(a) or c)
        outputs[choice] = poutine.condition(model, data=values)(x)[0]
    torch.testing.assert_close(outputs[True], outputs[False], rtol=0, atol=1e-12)
    # the recurrence decides once per sequence, over all N L rows: (N L, 4H, H, r)
    assert (20, 24, 6, rank_hh) in calls


@pytest.mark.parametrize("rank_hh, num_data, dense", [(1, 8, False), (6, 4, False), (6, 8, True)])
def test_w_hh_is_formed_only_when_cheaper_over_the_sequence(monkeypatch, rank_hh, num_data, dense):
    """Full rank r = H = 6, m = 24: forming W once (m n (r + N L)) beats N L r (m + n) iff N L > 24."""
    model = LowRankLSTM(3, 6, num_layers=1, rank_ih=2, rank_hh=rank_hh, batch_first=True)
    calls = []
    original = lstm_module._dense_matmul
    monkeypatch.setattr(lstm_module, "_dense_matmul", lambda *a: calls.append(1) or original(*a))
    model(torch.randn(num_data, 5, 3))
    assert len(calls) == (5 if dense else 0)


# ---------------------------------------------------------------------------------------------- particles
class Stacked(PyroModule):
    def __init__(self, batch_first=True):
        super().__init__()
        self.first = LowRankLSTM(3, 5, num_layers=2, rank_ih=2, rank_hh=3, batch_first=batch_first)
        self.second = LowRankLSTM(5, 4, num_layers=1, rank_ih=2, rank_hh=2, batch_first=batch_first)

    def forward(self, x):
        out, _ = self.first(x)
        return self.first(x), self.second(out)


@pytest.mark.parametrize("batch_first", [True, False])
def test_particle_dimensions_match_per_particle_lstms(batch_first):
    torch.manual_seed(5)
    num_particles, n, length = 3, 4, 6
    model = Stacked(batch_first).to(D64)
    x_bf = torch.randn(n, length, 3, dtype=D64)
    x = x_bf if batch_first else x_bf.transpose(0, 1)
    with pyro.plate("particles", num_particles, dim=-2):
        trace = poutine.trace(model).get_trace(x)
    values = sample_values(trace)
    assert values["first.ih.0.A"].shape == (num_particles, 1, 20, 2)
    (out1, (h1, c1)), (out2, (h2, c2)) = trace.nodes["_RETURN"]["value"]
    expected_shape = (num_particles, n, length) if batch_first else (num_particles, length, n)
    assert out1.shape == expected_shape + (5,) and out2.shape == expected_shape + (4,)
    assert h1.shape == c1.shape == (num_particles, 2, n, 5) and h2.shape == (num_particles, 1, n, 4)
    if not batch_first:
        out1, out2 = out1.transpose(1, 2), out2.transpose(1, 2)
    for p in range(num_particles):
        ref1, h_ref, c_ref = manual_lstm(x_bf, weights_from(values, "first.", 2, p))
        torch.testing.assert_close(out1[p], ref1, rtol=0, atol=1e-10)
        torch.testing.assert_close(h1[p], h_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(c1[p], c_ref, rtol=0, atol=1e-10)
        # the stacked LSTM received (P, N, L, H) and applies particle p's W to particle p's sequence
        ref2, h_ref2, _ = manual_lstm(ref1, weights_from(values, "second.", 1, p))
        torch.testing.assert_close(out2[p], ref2, rtol=0, atol=1e-10)
        torch.testing.assert_close(h2[p], h_ref2, rtol=0, atol=1e-10)
    assert not torch.allclose(out1[0], out1[1])


def test_particle_dimensions_given_state_and_unbatched_input_is_rejected():
    """A batch of one with a given state under particles matches per-particle LSTMs; an unbatched (L, n) input there
    would give (P, L, H), which a stacked layer reads as P sequences, so it is an error asking for a batch dim."""
    torch.manual_seed(6)
    model = LowRankLSTM(3, 5, num_layers=2, rank_ih=2, rank_hh=2, batch_first=True).to(D64)
    x = torch.randn(7, 3, dtype=D64)
    h0, c0 = torch.randn(2, 1, 5, dtype=D64), torch.randn(2, 1, 5, dtype=D64)
    with pyro.plate("particles", 4, dim=-2):
        with pytest.raises(ValueError, match=r"unbatched input of shape \(7, 3\) inside the vectorised plate\(s\) "
                                             r"\['particles'\].*Add a batch dimension.*\(1, L, input_size\)"):
            model(x)
        trace = poutine.trace(model).get_trace(x[None], (h0, c0))
    output, (h_n, c_n) = trace.nodes["_RETURN"]["value"]
    assert output.shape == (4, 1, 7, 5) and h_n.shape == c_n.shape == (4, 2, 1, 5)
    for p in range(4):
        ref, h_ref, c_ref = manual_lstm(x[None], weights_from(sample_values(trace), "", 2, p), h0, c0)
        torch.testing.assert_close(output[p], ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(h_n[p], h_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(c_n[p], c_ref, rtol=0, atol=1e-10)
    # outside vectorised plates unbatched inputs keep torch's semantics (exactness: test_full_rank_from_lstm_...)
    output, (h_n, _) = model(x, (h0[:, 0], c0[:, 0]))
    assert output.shape == (7, 5) and h_n.shape == (2, 5)
    sequence_first = LowRankLSTM(3, 5, rank_ih=2, rank_hh=2)
    with pyro.plate("particles", 2, dim=-2), pytest.raises(ValueError, match=r"\(L, 1, input_size\)"):
        sequence_first(x.float())


# ---------------------------------------------------------------------------------------------- initialisation
def test_forget_gate_bias_initialised_to_one():
    model = LowRankLSTM(3, 4, num_layers=3, rank_ih=2, rank_hh=2)
    for layer in model.ih:
        expected = torch.zeros(16)
        expected[4:8] = 1.0
        torch.testing.assert_close(layer.bias_init, expected, rtol=0, atol=0)
    assert all(layer.bias is None for layer in model.hh)
    assert all(layer.bias is None for layer in LowRankLSTM(3, 4, rank_ih=2, rank_hh=2, bias=False).ih)


def test_random_init_weight_variance_matches_torch_default():
    torch.manual_seed(7)
    hidden = 64
    model = LowRankLSTM(200, hidden, num_layers=2, rank_ih=60, rank_hh=40)
    target = 1.0 / (3 * hidden)  # variance of U(-1/sqrt(H), 1/sqrt(H))
    for layer in (*model.ih, *model.hh):
        mean_weight = layer.a_init @ layer.b_init.T
        assert abs(mean_weight.square().mean().item() / target - 1) < 0.1
        assert abs(mean_weight.mean().item()) < 0.1 * target ** 0.5


# ---------------------------------------------------------------------------------------------- guides
class TinyModel(PyroModule):
    def __init__(self):
        super().__init__()
        self.lstm = LowRankLSTM(3, 4, num_layers=2, rank_ih=[2, 3], rank_hh=[1, 2], batch_first=True)

    def forward(self, x, y=None):
        out, _ = self.lstm(x)
        f = out[..., -1, :].sum(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(f, 0.5), obs=y)
        return f


def test_gradients_reach_every_variational_parameter_and_counts_match():
    torch.manual_seed(8)
    model = TinyModel()
    guide = FactorGuide(model)
    x, y = torch.randn(6, 5, 3), torch.randn(6)
    guide(x, y)
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide, x, y)
    loss.backward()
    params = dict(guide.named_parameters())
    assert params
    for name, param in params.items():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    locs = {name: guide._get_loc_and_scale(name)[0] for name in factor_initial_values(model)}
    assert locs["lstm.ih.0.A"].shape == (16, 2) and locs["lstm.ih.0.B"].shape == (3, 2)
    assert locs["lstm.ih.1.B"].shape == (4, 3) and locs["lstm.ih.1.bias"].shape == (16,)
    assert locs["lstm.hh.0.A"].shape == (16, 1) and locs["lstm.hh.1.B"].shape == (4, 2)
    assert len(locs) == 10
    learned = sum(p.numel() for p in params.values())
    expected = 2 * 2 * (3 + 16) + 2 * 16 + 2 * 3 * (4 + 16) + 2 * 16 + 2 * 1 * (4 + 16) + 2 * 2 * (4 + 16)
    assert model.lstm.num_variational_parameters() == learned == expected
    # every packed matrix is its own LowRankLinear, so the per-layer posterior tools apply
    q_w = model.lstm.hh[1].weight_posterior(guide)
    assert q_w.mean.shape == (16, 4) and q_w.rank == 2
    torch.testing.assert_close(q_w.mean, locs["lstm.hh.1.A"] @ locs["lstm.hh.1.B"].T)
    assert model.lstm.ih[0].factor_sites() == {"weight": ("lstm.ih.0.A", "lstm.ih.0.B")}


def test_guide_starts_at_the_layer_init():
    model = TinyModel()
    guide = FactorGuide(model)
    guide(torch.randn(2, 3, 3))
    loc, scale = guide._get_loc_and_scale("lstm.ih.0.bias")
    torch.testing.assert_close(loc.detach(), model.lstm.ih[0].bias_init)
    assert torch.allclose(scale, torch.full_like(scale, model.lstm.ih[0].init_scale))


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, match", [
    ({"rank_ih": 6}, r"rank_ih\[0\] must be an integer in \[1, min\(m, n\)\] = \[1, 5\] .*got 6"),
    ({"rank_ih": [5, 9]}, r"rank_ih\[1\] must be an integer in \[1, min\(m, n\)\] = \[1, 8\] .*got 9"),
    ({"rank_hh": [2, 9]}, r"rank_hh\[1\] .* = \[1, 8\] .*got 9"),
    ({"rank_ih": [2]}, r"rank_ih must have one rank per layer \(2\), got 1"),
    ({"rank_hh": [1, 2, 3]}, r"rank_hh must have one rank per layer \(2\), got 3"),
    ({"rank_hh": None}, r"rank_hh is required"),
    ({"rank_ih": "3"}, r"rank_ih must be an int or a sequence"),
    ({"dropout": 1.5}, r"dropout must be a probability in \[0, 1\], got 1.5"),
    ({"hidden_size": 0}, r"hidden_size must be a positive integer, got 0"),
])
def test_bad_configuration_is_rejected(kwargs, match):
    base = {"input_size": 5, "hidden_size": 8, "num_layers": 2, "rank_ih": 2, "rank_hh": 2}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LowRankLSTM(**base)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        LowRankLSTM(3, 4, rank_ih=1, rank_hh=1, dropout=0.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"bidirectional": True}, r"bidirectional=False only, got bidirectional=True"),
    ({"proj_size": 2}, r"proj_size=0 only, got proj_size=2"),
])
def test_from_lstm_rejects_unsupported_lstms(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRankLSTM.from_lstm(nn.LSTM(3, 4, **kwargs), rank_ih=1, rank_hh=1)


def test_from_lstm_argument_errors():
    with pytest.raises(TypeError, match="lstm must be a torch.nn.LSTM, got GRU"):
        LowRankLSTM.from_lstm(nn.GRU(3, 4), 1, 1)
    with pytest.raises(ValueError, match=r"rank_ih is required"):
        LowRankLSTM.from_lstm(nn.LSTM(3, 4), None, 1)
    with pytest.raises(ValueError, match=r"\['batch_first'\] are copied from lstm"):
        LowRankLSTM.from_lstm(nn.LSTM(3, 4), 1, 1, batch_first=True)


def test_from_lstm_copies_settings_and_passes_kwargs():
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.25, bias=False).to(D64)
    prior = ScaleMixturePrior()
    model = LowRankLSTM.from_lstm(lstm, 2, 3, prior=prior, init_scale_factor=0.01)
    assert (model.num_layers, model.batch_first, model.dropout, model.bias) == (2, True, 0.25, False)
    assert model.ih[0].a_init.dtype == D64 and model.ih[0].prior.scale1.dtype == D64
    assert isinstance(model.hh[1].prior, ScaleMixturePrior) and model.hh[1].prior is not prior
    assert model.ih[0].prior is not model.ih[1].prior is not model.hh[0].prior
    assert model.ih[0].init_scale_factor == 0.01
    assert "rank_ih=(2, 2), rank_hh=(3, 3), bias=False, batch_first=True, dropout=0.25" in repr(model)


def test_bad_inputs_are_rejected():
    model = LowRankLSTM(5, 8, num_layers=2, rank_ih=2, rank_hh=2, batch_first=True)
    with pytest.raises(ValueError, match=r"input with last dimension 5, got shape \(3, 4, 6\)"):
        model(torch.randn(3, 4, 6))
    with pytest.raises(ValueError, match=r"input of shape \(L, input_size\) or \(N, L, input_size\), got \(5,\)"):
        model(torch.randn(5))
    with pytest.raises(ValueError, match="at least one time step"):
        model(torch.randn(3, 0, 5))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        model([[1.0] * 5])
    x = torch.randn(3, 4, 5)
    good = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError, match=r"hx h_0 must have shape \(num_layers, N, hidden_size\) = \(2, 3, 8\).*"
                                         r"got \(2, 4, 8\)"):
        model(x, (torch.zeros(2, 4, 8), good))
    with pytest.raises(ValueError, match=r"hx c_0 must have shape .* = \(2, 3, 8\).*got \(1, 3, 8\)"):
        model(x, (good, torch.zeros(1, 3, 8)))
    with pytest.raises(ValueError, match=r"\(num_layers, hidden_size\) = \(2, 8\).*got \(2, 3, 8\)"):
        model(torch.randn(4, 5), (good, good))  # unbatched input needs 2-D states
    with pytest.raises(TypeError, match="hx must be a tuple"):
        model(x, good)


# ---------------------------------------------------------------------------------------------- dropout, dtype
def test_inter_layer_dropout_only_in_training():
    torch.manual_seed(9)
    model = LowRankLSTM(3, 6, num_layers=2, rank_ih=2, rank_hh=2, dropout=0.5).to(D64)
    x = torch.randn(5, 4, 3, dtype=D64)
    values = sample_values(poutine.trace(model).get_trace(x))
    conditioned = poutine.condition(model, data=values)
    model.eval()
    reference = manual_lstm(x.transpose(0, 1), weights_from(values))[0].transpose(0, 1)
    torch.testing.assert_close(conditioned(x)[0], reference, rtol=0, atol=1e-10)
    model.train()
    torch.manual_seed(10)
    trained = conditioned(x)[0]
    assert not torch.allclose(trained, reference)
    # the dropout mask sits between the layers: layer 0's final state is untouched
    torch.testing.assert_close(conditioned(x)[1][0][0], manual_lstm(x.transpose(0, 1), weights_from(values))[1][0])


def test_float64_module_and_dtype_moves():
    model = LowRankLSTM(3, 4, num_layers=2, rank_ih=2, rank_hh=2, prior=GaussianPrior(0.5))
    assert model.ih[0].a_init.dtype == torch.float32
    model = model.to(D64)
    for layer in (*model.ih, *model.hh):
        assert layer.a_init.dtype == layer.b_init.dtype == layer.prior.scale.dtype == D64
    assert model.ih[1].bias_init.dtype == D64
    output, (h_n, c_n) = model(torch.randn(2, 5, 3, dtype=D64))
    assert output.dtype == h_n.dtype == c_n.dtype == D64


@pytest.mark.cuda
def test_cuda_forward_follows_the_module():
    model = LowRankLSTM(3, 4, num_layers=2, rank_ih=2, rank_hh=2).cuda()
    x = torch.randn(2, 5, 3, device="cuda")
    with pyro.plate("particles", 3, dim=-2):
        output, (h_n, _) = model(x)
    assert output.device.type == h_n.device.type == "cuda"
    assert output.shape == (3, 2, 5, 4)  # (P, L, N, H): batch_first=False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(6, 3, device="cuda"))


def test_vectorised_elbo_particles_give_one_likelihood_term_per_particle_and_datum():
    torch.manual_seed(11)
    model = TinyModel()
    guide = FactorGuide(model)
    x, y = torch.randn(6, 5, 3), torch.randn(6)
    guide(x, y)
    with pyro.plate("particles", 4, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    model_trace.compute_log_prob()
    assert model_trace.nodes["obs"]["log_prob"].shape == (4, 6)
    elbo = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide, x, y)
    assert loss.shape == () and torch.isfinite(loss)
