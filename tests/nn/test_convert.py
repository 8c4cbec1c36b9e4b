"""Tests for lowrankify: exactness at full rank, selection by name, ranks, errors, and training under Pyro SVI."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from toy_data import blobs
from torch import nn

from pyro_lowrank.guides import FactorGuide, factor_initial_values, init_to_factors
from pyro_lowrank.models import SupervisedModel
from pyro_lowrank.nn import (
    LowRankEmbedding,
    LowRankLinear,
    LowRankLSTM,
    LowRankMultiheadAttention,
    lowrankify,
)
from pyro_lowrank.predictive import predict


def at_means(module):
    """The converted module with every factor and bias at its mean (posterior scales of zero)."""
    return poutine.condition(module, data={k: v.detach() for k, v in factor_initial_values(module).items()})


class SequenceNet(nn.Module):
    """Embedding -> LSTM -> self-attention -> pooled linear head: one of each supported type."""

    def __init__(self, vocab: int = 30, d: int = 8, hidden: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.attn = nn.MultiheadAttention(hidden, 2, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(tokens))
        a, _ = self.attn(h, h, h, key_padding_mask=tokens == 0, need_weights=False)
        return self.head(self.norm(h + a).mean(dim=-2))


def tokens(n: int = 5, length: int = 7, vocab: int = 30) -> torch.Tensor:
    t = torch.randint(1, vocab, (n, length))
    t[:, -2:] = 0  # padding at the end
    return t


# ---------------------------------------------------------------------------------------------- exactness
def test_full_rank_svd_linear_network_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3)).double()
    bnn = lowrankify(net, rank=1.0)
    assert isinstance(bnn, PyroModule) and isinstance(bnn[0], LowRankLinear) and bnn[0].rank == 6
    x = torch.randn(11, 6, dtype=torch.float64)
    torch.testing.assert_close(at_means(bnn)(x), net(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch_first", [True, False])
def test_full_rank_svd_conversion_of_every_supported_type_is_exact(batch_first):
    torch.manual_seed(1)
    net = SequenceNet().double().eval()
    bnn = lowrankify(net, rank=1.0)
    assert isinstance(bnn.embed, LowRankEmbedding)
    assert isinstance(bnn.lstm, LowRankLSTM)
    assert isinstance(bnn.attn, LowRankMultiheadAttention)
    assert isinstance(bnn.head, LowRankLinear)
    assert isinstance(bnn.norm, nn.LayerNorm) and isinstance(bnn.norm, PyroModule)
    t = tokens()
    torch.testing.assert_close(at_means(bnn)(t), net(t), rtol=1e-9, atol=1e-9)

    # each supported type converted on its own, as the root module
    lstm = nn.LSTM(4, 6, num_layers=2, batch_first=batch_first).double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    out, (h, c) = at_means(lowrankify(lstm, rank=1.0))(x)
    ref, (h_ref, c_ref) = lstm(x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c, c_ref, rtol=1e-9, atol=1e-9)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).double()
    q = torch.randn(3, 5, 8, dtype=torch.float64)
    got, weights = at_means(lowrankify(mha, rank=1.0))(q, q, q)
    ref, ref_weights = mha(q, q, q)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-9, atol=1e-9)
    emb = nn.Embedding(20, 6).double()
    t = torch.randint(0, 20, (4, 5))
    torch.testing.assert_close(at_means(lowrankify(emb, rank=6))(t), emb(t), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("norm_first", [True, False])
def test_torch_transformer_encoder_layer_converts_exactly_in_eval_mode(norm_first):
    """nn.TransformerEncoderLayer inspects self_attn for its fused fast path in eval mode: the converted attention
    must refuse it cleanly and the layer must compute the same function."""
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True,
                                       norm_first=norm_first).double().eval()
    bnn = lowrankify(layer, rank=1.0, sequence_dims=1).eval()
    assert isinstance(bnn.self_attn, LowRankMultiheadAttention)
    assert isinstance(bnn.linear1, LowRankLinear) and isinstance(bnn.linear2, LowRankLinear)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, -1] = True
    with torch.no_grad():
        torch.testing.assert_close(at_means(bnn)(x, src_key_padding_mask=mask),
                                   layer(x, src_key_padding_mask=mask), rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")  # the torch reference's path
def test_torch_transformer_encoder_stack_converts_exactly_with_padding_under_no_grad():
    """nn.TransformerEncoder's nested-tensor fast path (eval, no_grad, padding mask) reads attention weights that a
    converted attention does not have: lowrankify turns it off, and the stack computes the same function."""
    torch.manual_seed(8)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2).double().eval()
    bnn = lowrankify(encoder, rank=1.0, sequence_dims=1).eval()
    names = {n for n, m in bnn.named_modules() if isinstance(m, LowRankLinear)}
    assert "layers.0.linear1" in names and "layers.1.self_attn.q_proj" in names
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, -2:] = True
    with torch.no_grad():
        got = at_means(bnn)(x, src_key_padding_mask=mask)
        ref = encoder(x, src_key_padding_mask=mask)
    keep = ~mask  # torch's fast path zeroes padded positions; compare the real tokens
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-9, atol=1e-9)


def test_truncated_rank_gives_best_rank_r_mean():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(10, 8))
    bnn = lowrankify(net, rank=3)
    mean = bnn[0].a_init @ bnn[0].b_init.T
    s = torch.linalg.svdvals(net[0].weight.detach())
    torch.testing.assert_close(torch.linalg.svdvals(mean)[:3], s[:3], rtol=1e-5, atol=1e-5)
    # Eckart-Young-Mirsky: the residual's Frobenius norm is the tail energy
    residual = torch.linalg.norm(net[0].weight.detach() - mean)
    torch.testing.assert_close(residual, s[3:].square().sum().sqrt(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- selection
def test_include_exclude_and_original_untouched():
    net = SequenceNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bnn = lowrankify(net, rank=2, include=["embed", "lstm", "head"], exclude="lstm")
    assert isinstance(bnn.embed, LowRankEmbedding) and isinstance(bnn.head, LowRankLinear)
    assert not isinstance(bnn.lstm, LowRankLSTM) and not isinstance(bnn.attn, LowRankMultiheadAttention)
    assert isinstance(net.embed, nn.Embedding) and not isinstance(net, PyroModule)  # a deep copy was converted
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_selecting_a_container_selects_its_subtree():
    net = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)), nn.Linear(4, 2))
    kept = lowrankify(net, rank=1, exclude="0")
    assert isinstance(kept[0][0], nn.Linear) and not isinstance(kept[0][0], LowRankLinear)
    assert isinstance(kept[1], LowRankLinear)
    only = lowrankify(net, rank=1, include="0")
    assert isinstance(only[0][0], LowRankLinear) and isinstance(only[0][2], LowRankLinear)
    assert not isinstance(only[1], LowRankLinear)


def test_train_and_eval_mode_and_frozen_parameters_survive_conversion():
    net = SequenceNet().eval()
    net.norm.weight.requires_grad_(False)
    bnn = lowrankify(net, rank=2)
    assert not any(m.training for m in bnn.modules())
    assert not bnn.norm.weight_unconstrained.requires_grad and bnn.norm.bias_unconstrained.requires_grad
    assert all(m.training for m in lowrankify(SequenceNet().train(), rank=2).modules())


def test_tied_deterministic_parameters_stay_tied():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.LayerNorm(4))
    net[2].weight = net[1].weight  # tied
    bnn = lowrankify(net, rank=2)
    assert bnn[1].weight_unconstrained is bnn[2].weight_unconstrained


def test_rank_by_mapping_callable_and_fraction():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))
    by_name = lowrankify(net, rank={"0": 5, "2": 1})
    assert (by_name[0].rank, by_name[2].rank) == (5, 1)
    only_first = lowrankify(net, rank={"0": 5})
    assert isinstance(only_first[0], LowRankLinear) and isinstance(only_first[2], nn.Linear)
    chosen = lowrankify(net, rank=lambda name, m: None if m.out_features == 4 else m.in_features // 2)
    assert chosen[0].rank == 5 and not isinstance(chosen[2], LowRankLinear)
    fraction = lowrankify(net, rank=0.5)
    assert (fraction[0].rank, fraction[2].rank) == (5, 2)


def test_multihead_attention_out_proj_is_never_converted_alone():
    net = SequenceNet()
    bnn = lowrankify(net, rank=2, include="attn*")
    assert isinstance(bnn.attn, LowRankMultiheadAttention)
    with pytest.raises(ValueError, match="found nothing to convert"):
        lowrankify(net, rank=2, include="attn.out_proj")


def test_site_names_follow_module_paths_and_parameter_counts():
    net = SequenceNet()
    bnn = lowrankify(net, rank=2)
    model = SupervisedModel(bnn, num_classes=3)
    trace = poutine.trace(model).get_trace(tokens(), torch.zeros(5, dtype=torch.long))
    sites = [name for name, site in trace.nodes.items() if site["type"] == "sample" and not site["is_observed"]]
    assert "network.head.A" in sites and "network.embed.A" in sites and "network.lstm.ih.1.B" in sites
    assert len(sites) == len(set(sites))
    guide = FactorGuide(model)
    guide(tokens(), torch.zeros(5, dtype=torch.long))
    loc = {name.removesuffix("_unconstrained"): p for name, p in guide.named_parameters()}
    # r (m + n) means per factorised matrix: the head is 3 x 12 at rank 2
    assert loc["locs.network.head.A"].shape == (3, 2) and loc["locs.network.head.B"].shape == (12, 2)
    assert loc["locs.network.embed.A"].shape == (30, 2)
    factor_numbers = sum(p.numel() for n, p in loc.items() if n.endswith((".A", ".B")))
    expected = 0
    for module in bnn.modules():  # the LSTM gates and attention projections are LowRankLinear parts
        if isinstance(module, LowRankLinear):  # LowRankEmbedding is one too: A (30 x 2), B (8 x 2)
            expected += 2 * module.rank * (module.in_features + module.out_features)
    assert factor_numbers == expected == 2 * 2 * ((30 + 8) + (48 + 8) + (48 + 12) + (48 + 12) + (48 + 12)
                                                  + 4 * (12 + 12) + (3 + 12))


def test_random_init_is_a_fresh_network():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(10, 6))
    bnn = lowrankify(net, rank=3, init="random")
    svd = lowrankify(net, rank=3)
    assert not torch.allclose(bnn[0].a_init @ bnn[0].b_init.T, svd[0].a_init @ svd[0].b_init.T)
    assert torch.equal(bnn[0].bias_init, torch.zeros(6))
    # variance matching (He): Var(W_ij) of the mean is gain / in_features = 2 / 400 in expectation
    wide = lowrankify(nn.Linear(400, 300), rank=20, init="random")
    var = (wide.a_init @ wide.b_init.T).var()
    assert 0.004 < float(var) < 0.006


def test_layer_kwargs_reach_every_layer_and_dtype_device_follow_the_module():
    from pyro_lowrank.distributions import GaussianPrior

    prior = GaussianPrior(0.3)
    net = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2)).double()
    bnn = lowrankify(net, rank=2, prior=prior, init_scale_factor=0.01)
    assert bnn[0].prior is not bnn[1].prior and float(bnn[1].prior.scale) == pytest.approx(0.3)
    assert bnn[0].a_init.dtype == torch.float64 and bnn[0].init_scale_factor == 0.01


# ---------------------------------------------------------------------------------------------- errors
def test_errors_name_the_module_and_what_is_supported():
    with pytest.raises(ValueError, match=r"rank for '2'.*\[1, 3\]"):
        lowrankify(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)), rank=4)
    with pytest.raises(TypeError, match=r"'0' of type torch.nn.modules.conv.Conv2d.*supported types are "
                                        r"torch.nn.Linear, torch.nn.Embedding, torch.nn.LSTM, "
                                        r"torch.nn.MultiheadAttention.*exclude=\['0'\]"):
        lowrankify(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), rank=1)
    bnn = lowrankify(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), rank=1, exclude="0")
    assert isinstance(bnn[2], LowRankLinear) and isinstance(bnn[0], nn.Conv2d)
    with pytest.raises(TypeError, match=r"the module itself of type .*GRU"):
        lowrankify(nn.GRU(3, 4), rank=1)
    with pytest.raises(ValueError, match=r"bidirectional=False"):
        lowrankify(nn.Sequential(nn.LSTM(3, 4, bidirectional=True)), rank=1)
    with pytest.raises(ValueError, match=r"add_bias_kv"):
        lowrankify(nn.MultiheadAttention(4, 2, add_bias_kv=True), rank=1)
    for init in ("svd", "random"):  # the same checks whatever the initialisation
        with pytest.raises(ValueError, match=r"max_norm, sparse or scale_grad_by_freq.*max_norm=1.0"):
            lowrankify(nn.Embedding(10, 4, max_norm=1.0), rank=2, init=init)
    # a module the rank mapping or callable does not select is left alone, even of an unsupported type
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2), nn.LSTM(2, 2, bidirectional=True))
    bnn = lowrankify(net, rank={"2": 1})
    assert isinstance(bnn[2], LowRankLinear) and isinstance(bnn[0], nn.Conv2d) and isinstance(bnn[3], nn.LSTM)
    with pytest.raises(ValueError, match=r"found nothing to convert.*supported types"):
        lowrankify(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), rank=1)
    with pytest.raises(ValueError, match=r"found nothing to convert"):
        lowrankify(nn.Sequential(nn.Linear(3, 3)), rank=1, include="missing*")
    with pytest.raises(ValueError, match=r"init must be one of \['svd', 'random'\], got 'qr'"):
        lowrankify(nn.Linear(3, 3), rank=1, init="qr")
    with pytest.raises(TypeError, match=r"module must be a torch.nn.Module, got int"):
        lowrankify(3, rank=1)
    with pytest.raises(ValueError, match=r"fraction of min\(m, n\) in \(0, 1\], got 1.5"):
        lowrankify(nn.Linear(3, 3), rank=1.5)
    with pytest.raises(ValueError, match=r"sequence_dims must be a non-negative integer"):
        lowrankify(nn.Linear(3, 3), rank=1, sequence_dims=-1)


# ---------------------------------------------------------------------------------------------- training
def _accuracy(model, guide, x, y):
    probs = predict(model, guide, x, num_samples=32)["f"].softmax(-1).mean(0)
    return float((probs.argmax(-1) == y).float().mean())


@pytest.mark.parametrize("guide_type", ["factor", "autonormal"])
def test_converted_network_trains_under_plain_pyro_svi(guide_type):
    pyro.clear_param_store()
    torch.manual_seed(5)
    x, y = blobs(300)
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, 3))
    model = SupervisedModel(lowrankify(net, rank={"0": 2, "3": 1}, init="random"), num_classes=3)
    if guide_type == "factor":
        guide = FactorGuide(model)
    else:
        guide = AutoNormal(model, init_loc_fn=init_to_factors(model), init_scale=0.05)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(300)]
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    assert _accuracy(model, guide, x, y) > 0.85
    # the LayerNorm's deterministic parameters are Pyro params (module-local), trained alongside the guide
    assert not torch.allclose(model.network[2].weight.detach(), torch.ones(32))


def test_gradients_reach_every_variational_parameter_of_a_converted_sequence_model():
    torch.manual_seed(6)
    model = SupervisedModel(lowrankify(SequenceNet(), rank=2), num_classes=3)
    guide = FactorGuide(model)
    t, y = tokens(), torch.randint(0, 3, (5,))
    guide(t, y)
    loss = Trace_ELBO().differentiable_loss(model, guide, t, y)
    loss.backward()
    for name, param in guide.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_vectorised_prediction_through_a_converted_sequence_model():
    """Vectorised draws: the factors carry a particle dimension; token-level layers need sequence_dims=1 while the
    head after pooling sees (N, d)."""
    torch.manual_seed(7)
    model = SupervisedModel(lowrankify(SequenceNet(), rank=2), num_classes=3)  # sequence_dims inferred
    guide = FactorGuide(model)
    t = tokens()
    guide(t, torch.zeros(5, dtype=torch.long))  # set up with observations, so that obs is not a latent
    draws = predict(model, guide, t, num_samples=6)["f"]
    assert draws.shape == (6, 5, 3) and not torch.allclose(draws[0], draws[1])
    assert model.network.embed._inferred_sequence_dims == 1 and model.network.head._inferred_sequence_dims == 0
    # each particle of a vectorised run equals the network run alone under that particle's factors
    with pyro.plate("particles", 5, dim=-2):  # as many draws as data points: a misalignment would go unnoticed
        guide_trace = poutine.trace(guide).get_trace(t)
        out = poutine.replay(model.network, trace=guide_trace)(t)
    assert out.shape == (5, 5, 3)
    for p in range(5):
        data = {name: site["value"][p, 0] for name, site in guide_trace.nodes.items() if site["type"] == "sample"}
        torch.testing.assert_close(out[p], poutine.condition(model.network, data=data)(t), rtol=1e-5, atol=1e-5)


def test_converted_sequence_model_under_autonormal_and_vectorised_particles():
    """The plain-Pyro route on a converted Embedding + LSTM + attention + LayerNorm network: AutoNormal started at the
    factor inits, SVI with vectorised ELBO particles."""
    pyro.set_rng_seed(9)
    model = SupervisedModel(lowrankify(SequenceNet(), rank=2), num_classes=3)
    guide = AutoNormal(model, init_loc_fn=init_to_factors(model), init_scale=0.01)
    t, y = tokens(16), torch.randint(0, 3, (16,))
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    losses = [svi.step(t, y) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    torch.testing.assert_close(guide.locs.network.head.B.detach().shape, torch.Size([12, 2]))


def test_lstm_rank_pair_sets_input_and_recurrent_ranks_per_layer():
    net = nn.Sequential()
    net.add_module("lstm", nn.LSTM(15, 64, num_layers=2, batch_first=True))
    converted = lowrankify(net, {"lstm": (14, 20)}, init="random")
    assert converted.lstm.rank_ih == (14, 14) and converted.lstm.rank_hh == (20, 20)
    with pytest.raises(ValueError, match=r"\(rank_ih, rank_hh\)"):
        lowrankify(net, {"lstm": (14, 20, 3)}, init="random")
    with pytest.raises(ValueError, match="rank for 'lstm'.*got 'x'"):
        lowrankify(net, {"lstm": ("x", 20)}, init="random")
    with pytest.raises(ValueError, match="rank for '0'"):
        lowrankify(nn.Sequential(nn.Linear(3, 4)), {"0": (1, 2)}, init="random")
    assert lowrankify(net, {"lstm": [3, 5]}, init="random").lstm.rank_hh == (5, 5)  # a list from JSON works too
