"""Tests for the weight-space wrappers of any torch network: MeanFieldNetwork, Rank1Network, weight_space_guide."""

from __future__ import annotations

import copy
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from toy_data import keyword_sequences
from torch import nn

import pyro_lowrank  # noqa: F401  (module-local params)
from pyro_lowrank.inference.fit import fit
from pyro_lowrank.inference.methods.base import count_parameters
from pyro_lowrank.models.supervised import SupervisedModel
from pyro_lowrank.models.weight_space import MeanFieldNetwork, Rank1Network, weight_space_guide
from pyro_lowrank.predictive import predict

PAD = 0


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one intra-op thread avoids contention on shared CPUs (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LSTMNet(nn.Module):
    """Batch-first 2-layer LSTM over token embeddings (or float inputs); the last hidden state feeds a Linear head."""

    def __init__(self, vocab: int | None = None, d: int = 3, hidden: int = 5, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d) if vocab else None
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x) if self.emb is not None else x)
        return self.head(h[:, -1])


class TransformerNet(nn.Module):
    """Embedding + positional table -> pre-norm TransformerEncoder with a padding mask -> CLS token -> Linear."""

    def __init__(self, vocab: int = 40, d: int = 8, layers: int = 2, length: int = 10, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=PAD)
        self.pos = nn.Parameter(0.1 * torch.randn(length, d))
        layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if src_key_padding_mask is None:
            src_key_padding_mask = tokens == PAD
        h = self.emb(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.enc(h, src_key_padding_mask=src_key_padding_mask)[:, 0])


def _case(kind: str):
    """(float64 net in eval mode, args, kwargs, names of its non-Bayesian parameters)."""
    if kind == "mlp":
        net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 3))
        return net.double().eval(), (torch.randn(5, 4, dtype=torch.float64),), {}, {"2.weight", "2.bias"}
    if kind == "lstm":
        return LSTMNet().double().eval(), (torch.randn(4, 6, 3, dtype=torch.float64),), {}, set()
    net = TransformerNet(layers=2).double().eval()
    tokens, _ = keyword_sequences(3, length=7, vocab=40)
    norms = {n for n, _ in net.named_parameters() if ".norm" in n}
    return net, (tokens,), {"src_key_padding_mask": tokens == PAD}, norms | {"pos"}


def _replaced(net: nn.Module, values: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``net`` whose parameters named in ``values`` hold those values."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        for name, value in values.items():
            net.get_parameter(name).copy_(value)
    return net


CASES = ["mlp", "lstm", "transformer"]


# ---------------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind", CASES)
def test_mean_field_at_initial_values_and_at_random_values_equals_the_torch_net(kind):
    net, args, kwargs, fixed = _case(kind)
    wrapper = MeanFieldNetwork(net)
    out = poutine.condition(wrapper, data=wrapper.initial_values())(*args, **kwargs)
    torch.testing.assert_close(out, net(*args, **kwargs), rtol=0, atol=1e-10)
    bayes = {n: p for n, p in net.named_parameters() if n not in fixed}
    draws = {n: torch.randn_like(p) for n, p in bayes.items()}
    out = poutine.condition(MeanFieldNetwork(net), data=draws)(*args, **kwargs)
    if kind == "transformer":  # the padding row keeps its initial (zero) value, as in torch
        draws["emb.weight"][PAD] = net.emb.weight[PAD].detach()
        assert not out.isnan().any()
    torch.testing.assert_close(out, _replaced(net, draws)(*args, **kwargs), rtol=0, atol=1e-10)
    assert all(isinstance(net.get_parameter(n), nn.Parameter) for n in bayes)  # the wrappers work on copies


@pytest.mark.parametrize("kind", CASES)
def test_rank1_with_unit_and_random_factors_equals_the_torch_net_with_w0_r_s(kind):
    net, args, kwargs, _ = _case(kind)
    matrices = {n: p for n, p in net.named_parameters() if p.dim() == 2 and n != "pos"}
    ones = {f"{n}.{f}": torch.ones(p.shape[i], dtype=p.dtype) for n, p in matrices.items()
            for f, i in (("r", 0), ("s", 1))}
    out = poutine.condition(Rank1Network(net), data=ones)(*args, **kwargs)
    torch.testing.assert_close(out, net(*args, **kwargs), rtol=0, atol=1e-10)
    factors = {name: 1 + 0.5 * torch.randn_like(v) for name, v in ones.items()}
    out = poutine.condition(Rank1Network(net), data=factors)(*args, **kwargs)
    weights = {n: p.detach() * torch.outer(factors[f"{n}.r"], factors[f"{n}.s"]) for n, p in matrices.items()}
    torch.testing.assert_close(out, _replaced(net, weights)(*args, **kwargs), rtol=0, atol=1e-10)


def test_rank1_initial_factor_means_follow_random_sign_init():
    net = _case("mlp")[0]
    values = Rank1Network(net, random_sign_init=0.5).initial_values()
    assert set(values) == {"0.weight.r", "0.weight.s", "3.weight.r", "3.weight.s"}
    signs = torch.cat(list(values.values()))
    assert set(signs.tolist()) == {-1.0, 1.0} and signs.dtype == torch.float64
    ones = Rank1Network(net, random_sign_init=0.0).initial_values().values()
    assert all(torch.equal(v, torch.ones_like(v)) for v in ones)
    spread = torch.cat(list(Rank1Network(nn.Linear(400, 300)).initial_values().values()))  # default -0.5
    assert abs(spread.mean().item() - 1) < 0.05 and abs(spread.std().item() - 0.5) < 0.05


# ---------------------------------------------------------------------------------------------------- inventory
@pytest.mark.parametrize("kind", CASES)
def test_sites_shapes_and_parameter_counts(kind):
    net, args, kwargs, fixed = _case(kind)
    x = args[0]
    y = torch.zeros(x.shape[0], dtype=torch.long)
    classes = 3 if kind == "mlp" else 2
    params = dict(net.named_parameters())
    bayes = {n: p.shape for n, p in params.items() if n not in fixed}
    matrices = {n: p.shape for n, p in params.items() if p.dim() == 2 and n != "pos"}
    total = sum(p.numel() for p in params.values())
    for wrapper_cls in (MeanFieldNetwork, Rank1Network):
        model = SupervisedModel(wrapper_cls(net), likelihood="categorical", num_classes=classes)
        guide = weight_space_guide(model)
        guide(x, y)
        trace = poutine.trace(model).get_trace(x, y)
        latent = {n: s["value"].shape for n, s in trace.nodes.items()
                  if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}
        if wrapper_cls is MeanFieldNetwork:
            expected = {f"network.{n}": shape for n, shape in bayes.items()}
            point = total - sum(math.prod(s) for s in bayes.values())
        else:
            expected = {f"network.{n}.{f}": torch.Size([shape[i]]) for n, shape in matrices.items()
                        for f, i in (("r", 0), ("s", 1))}
            point = total  # W0, biases and everything else stay point estimates
        assert latent == expected
        assert model.network.sites == list(expected)
        num_guide = sum(p.numel() for p in guide.parameters())
        assert num_guide == 2 * sum(math.prod(s) for s in expected.values())
        assert count_parameters([model, guide]) == point + num_guide
        assert count_parameters([model]) == point
        assert model.network.num_variational_parameters() == point + num_guide
    if kind == "transformer":  # MHA's out_proj (a Linear subclass) is counted once
        assert sum(".out_proj.weight" in n for n in expected) == 2 * 2


def test_tied_weights_stay_tied():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(7, 4)
            self.out = nn.Linear(4, 7, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.emb(tokens)))

    net, tokens = Tied().double(), torch.tensor([[1, 2, 3], [4, 5, 6]])
    mean_field, rank1 = MeanFieldNetwork(net), Rank1Network(net)
    assert mean_field.sites == ["emb.weight"] and rank1.sites == ["emb.weight.r", "emb.weight.s"]
    assert [n for n, _ in rank1.named_parameters()] == ["network.emb.weight_base_unconstrained"]
    draw = {"emb.weight": torch.randn(7, 4, dtype=torch.float64)}
    out = poutine.condition(mean_field, data=draw)(tokens)
    torch.testing.assert_close(out, _replaced(net, draw)(tokens), rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------- particles
@pytest.mark.parametrize("wrapper_cls", [MeanFieldNetwork, Rank1Network])
def test_vectorised_predict_equals_sequential_replay_of_each_draw(wrapper_cls):
    net, (x,), _, _ = _case("lstm")
    num = x.shape[0]  # P == N: a mix-up of the particle and data dimensions would go unnoticed by shapes
    model = SupervisedModel(wrapper_cls(net), likelihood="categorical", num_classes=2)
    guide = weight_space_guide(model, init_scale=0.1)
    guide(x, torch.zeros(num, dtype=torch.long))
    pyro.set_rng_seed(3)
    f = predict(model, guide, x, num_samples=num)["f"]
    assert f.shape == (num, num, 2)
    pyro.set_rng_seed(3)
    with torch.no_grad(), pyro.plate("_num_predictive_samples", num, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
    sites = model.network.sites
    assert all(guide_trace.nodes[s]["value"].shape[:2] == (num, 1) for s in sites)
    for p in range(num):
        one = poutine.trace(guide).get_trace(x)  # a trace of the right structure, overwritten with draw p
        for s in sites:
            one.nodes[s]["value"] = guide_trace.nodes[s]["value"][p, 0]
        with torch.no_grad():
            torch.testing.assert_close(poutine.replay(model, trace=one)(x), f[p], rtol=0, atol=1e-10)
    assert (f[0] - f[1]).abs().max() > 1e-3


def test_vectorised_particle_elbo_runs_under_a_particle_plate():
    net, (x,), _, _ = _case("lstm")
    model = SupervisedModel(MeanFieldNetwork(net), likelihood="categorical", num_classes=2)
    guide = weight_space_guide(model)
    y = torch.tensor([0, 1, 0, 1])
    loss = TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)(model, guide)(x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------------- training
def _accuracy(model, guide, x, y) -> float:
    probs = predict(model, guide, x, num_samples=8)["f"].softmax(-1).mean(0)
    return (probs.argmax(-1) == y).double().mean().item()


@pytest.mark.parametrize("wrapper_cls", [MeanFieldNetwork, Rank1Network])
def test_fit_learns_the_keyword_task_with_a_transformer(wrapper_cls):
    pyro.set_rng_seed(0)
    x, y = keyword_sequences(256, length=8, vocab=20, seed=0)
    x_val, y_val = keyword_sequences(64, length=8, vocab=20, seed=1)
    net = TransformerNet(vocab=20, d=16, layers=1, length=8).eval()
    model = SupervisedModel(wrapper_cls(net, prior_scale=1.0 if wrapper_cls is MeanFieldNetwork else 0.1),
                            likelihood="categorical", num_classes=2)
    guide = weight_space_guide(model)
    result = fit(model, guide, (x, y), val_data=(x_val, y_val), num_epochs=14, batch_size=64, lr=0.02, seed=0,
                 progress=False, val_num_samples=2)
    assert len(result.val_nll) == 14 and all(math.isfinite(v) for v in result.val_nll)
    assert _accuracy(model, guide, x_val, y_val) > 0.8  # chance: 0.5


# ---------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("wrapper_cls", [MeanFieldNetwork, Rank1Network])
def test_gradients_reach_every_guide_and_point_parameter(wrapper_cls):
    net, args, _, _ = _case("transformer")
    model = SupervisedModel(wrapper_cls(net), likelihood="categorical", num_classes=2)
    guide = weight_space_guide(model, init_scale=0.05)
    y = torch.tensor([0, 1, 1])
    loss = TraceMeanField_ELBO()(model, guide)(*args, y)
    loss.backward()
    for name, p in list(guide.named_parameters()) + list(model.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    base = dict(model.named_parameters())
    assert ("network.network.head.weight_base_unconstrained" in base) == (wrapper_cls is Rank1Network)
    assert not any(n.endswith("head.weight_unconstrained") or n.endswith("head.weight") for n in base)


def test_to_float64_moves_prior_constants_and_buffers():
    net = TransformerNet(layers=1)
    tokens = keyword_sequences(3, length=6)[0]
    for wrapper in (MeanFieldNetwork(net, prior_scale=0.5), Rank1Network(net)):
        assert wrapper.prior_loc.dtype == torch.float32
        wrapper = wrapper.to(torch.float64)
        assert wrapper.prior_loc.dtype == wrapper.prior_scale.dtype == torch.float64
        assert all(v.dtype == torch.float64 for v in wrapper.initial_values().values())
        trace = poutine.trace(wrapper).get_trace(tokens)
        assert trace.nodes["_RETURN"]["value"].dtype == torch.float64
        site = trace.nodes[wrapper.sites[0]]
        assert site["fn"].base_dist.scale.dtype == torch.float64
    assert float(MeanFieldNetwork(net, prior_scale=0.5).prior_scale) == 0.5


# ---------------------------------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"network must be a torch.nn.Module, got function"):
        MeanFieldNetwork(lambda x: x)
    with pytest.raises(ValueError, match=r"network must contain at least one module of BAYESIAN_TYPES .*"
                                         r"got only \['LayerNorm', 'ReLU', 'Sequential'\]"):
        Rank1Network(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"prior_scale must be finite and > 0"):
            MeanFieldNetwork(nn.Linear(2, 2), prior_scale=bad)
    with pytest.raises(ValueError, match=r"prior_scale must be a finite number > 0, got True"):
        Rank1Network(nn.Linear(2, 2), prior_scale=True)
    with pytest.raises(ValueError, match=r"random_sign_init must be a finite number <= 1"):
        Rank1Network(nn.Linear(2, 2), random_sign_init=2.0)
    with pytest.raises(ValueError, match=r"model must contain a MeanFieldNetwork or Rank1Network"):
        weight_space_guide(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"init_scale must be finite and > 0"):
        weight_space_guide(MeanFieldNetwork(nn.Linear(2, 2)), init_scale=0.0)
