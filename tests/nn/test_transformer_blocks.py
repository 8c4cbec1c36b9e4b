"""Tests for LowRankFeedForward and LowRankTransformerEncoderLayer: exactness against nn.TransformerEncoderLayer,
particle dimensions through a stack, LayerNorm parameters under SVI, gradients, parameter counts and validation."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule
from pyro.optim import Adam
from torch import nn

from pyro_lowrank.guides import FactorGuide, factor_initial_values
from pyro_lowrank.nn.transformer import LowRankFeedForward, LowRankTransformerEncoderLayer, copy_layer_norm, layer_norm

D, HEADS, FF, N, L = 8, 2, 12, 3, 5
TOL = {"rtol": 1e-10, "atol": 1e-10}
FULL = {"q": D, "k": D, "v": D, "out": D, "linear1": D, "linear2": D}


def conditioned(module):
    return poutine.condition(module, data=factor_initial_values(module))


def torch_layer(norm_first, activation="gelu", batch_first=True, bias=True, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=dropout, activation=activation, batch_first=batch_first,
                                       norm_first=norm_first, bias=bias).double()
    with torch.no_grad():  # torch initialises biases and LayerNorms trivially; make every parameter matter
        for name, param in layer.named_parameters():
            if "bias" in name or "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    return layer


def padding_mask():
    mask = torch.zeros(N, L, dtype=torch.bool)
    mask[0, -1] = mask[2, -3:] = True
    return mask


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("train", [False, True])
def test_from_transformer_encoder_layer_matches_torch(norm_first, activation, train):
    layer = torch_layer(norm_first, activation)
    ours = LowRankTransformerEncoderLayer.from_transformer_encoder_layer(layer, FULL)
    assert ours.norm_first is norm_first and ours.ffn.activation == activation and ours.batch_first
    layer.train(train)
    ours.train(train)
    model = conditioned(ours)
    src = torch.randn(N, L, D, dtype=torch.float64)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    cases = ({}, {"src_key_padding_mask": padding_mask()}, {"src_mask": causal, "is_causal": True},
             {"src_mask": causal, "src_key_padding_mask": padding_mask()})
    with torch.no_grad():  # torch's eval-mode fast path may run for the original layer
        for kwargs in cases:
            torch.testing.assert_close(model(src, **kwargs), layer(src, **kwargs), **TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_sequence_first_and_no_bias_match_torch(bias):
    layer = torch_layer(True, batch_first=False, bias=bias)
    ours = LowRankTransformerEncoderLayer.from_transformer_encoder_layer(layer, FULL)
    assert not ours.batch_first and (ours.norm1.bias is None) == (not bias)
    src = torch.randn(L, N, D, dtype=torch.float64)
    kwargs = {"src_key_padding_mask": padding_mask()}
    torch.testing.assert_close(conditioned(ours)(src, **kwargs), layer(src, **kwargs), **TOL)


def test_truncated_rank_uses_best_approximations():
    layer = torch_layer(True)
    ours = LowRankTransformerEncoderLayer.from_transformer_encoder_layer(layer, 3)
    pairs = ((ours.ffn.linear1, layer.linear1.weight), (ours.self_attn.out_proj, layer.self_attn.out_proj.weight))
    for proj, weight in pairs:
        s = torch.linalg.svdvals(weight.detach())
        error = torch.linalg.matrix_norm(weight.detach() - proj.a_init @ proj.b_init.T)
        torch.testing.assert_close(error, s[3:].square().sum().sqrt())


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_feed_forward_from_linears_matches_torch(activation):
    torch.manual_seed(0)
    linear1, linear2 = nn.Linear(D, FF).double(), nn.Linear(FF, D).double()
    block = LowRankFeedForward.from_linears(linear1, linear2, (D, D), activation=activation)
    assert (block.linear1.rank, block.linear2.rank) == (D, D)
    x = torch.randn(N, L, D, dtype=torch.float64)
    act = {"gelu": F.gelu, "relu": F.relu}[activation]
    torch.testing.assert_close(conditioned(block)(x), linear2(act(linear1(x))), **TOL)


# ---------------------------------------------------------------------------------------------- particles
class Stack(PyroModule):
    def __init__(self, num_layers=2):
        super().__init__()
        self.layers = PyroModule[nn.ModuleList](
            [LowRankTransformerEncoderLayer(D, HEADS, FF, rank=3, dropout=0.0) for _ in range(num_layers)]
        )

    def forward(self, x, src_key_padding_mask=None):
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=src_key_padding_mask)
        return x


def torch_copy(ours, values, prefix):
    """An nn.TransformerEncoderLayer carrying the weights W = A B^T of one particle's factors."""
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True).double()

    def weight(name):
        return values[f"{prefix}{name}.A"] @ values[f"{prefix}{name}.B"].T

    with torch.no_grad():
        attn = layer.self_attn
        attn.in_proj_weight.copy_(torch.cat([weight(f"self_attn.{k}_proj") for k in "qkv"]))
        attn.in_proj_bias.copy_(torch.cat([values[f"{prefix}self_attn.{k}_proj.bias"] for k in "qkv"]))
        attn.out_proj.weight.copy_(weight("self_attn.out_proj"))
        attn.out_proj.bias.copy_(values[f"{prefix}self_attn.out_proj.bias"])
        for name in ("linear1", "linear2"):
            getattr(layer, name).weight.copy_(weight(f"ffn.{name}"))
            getattr(layer, name).bias.copy_(values[f"{prefix}ffn.{name}.bias"])
        for name in ("norm1", "norm2"):
            getattr(layer, name).weight.copy_(getattr(ours, name).weight)
            getattr(layer, name).bias.copy_(getattr(ours, name).bias)
    return layer


@pytest.mark.parametrize("num_particles", [1, 3])
def test_particle_dimensions_through_a_two_layer_stack(num_particles):
    torch.manual_seed(0)
    model = Stack().double()
    with torch.no_grad():
        for layer in model.layers:
            for norm in (layer.norm1, layer.norm2):
                norm.weight.add_(0.3 * torch.randn_like(norm.weight))
    x = torch.randn(N, L, D, dtype=torch.float64)
    with pyro.plate("particles", num_particles, dim=-2):
        trace = poutine.trace(model).get_trace(x, padding_mask())
    out = trace.nodes["_RETURN"]["value"]
    assert out.shape == (num_particles, N, L, D)
    values = {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}
    assert values["layers.1.ffn.linear2.A"].shape == (num_particles, 1, D, 3)
    for p in range(num_particles):
        mine = {name: value[p, 0] for name, value in values.items()}
        h = x
        for i, layer in enumerate(model.layers):
            h = torch_copy(layer, mine, f"layers.{i}.")(h, src_key_padding_mask=padding_mask())
        torch.testing.assert_close(out[p], h, **TOL)
    if num_particles > 1:
        assert not torch.allclose(out[0], out[1])


def test_unbatched_input_works_alone_and_is_rejected_under_particles():
    torch.manual_seed(0)
    layer = LowRankTransformerEncoderLayer(D, HEADS, FF, rank=2, dropout=0.0).double()
    x = torch.randn(L, D, dtype=torch.float64)
    at_means = conditioned(layer)
    out = at_means(x)
    assert out.shape == (L, D)
    torch.testing.assert_close(out, at_means(x[None])[0], **TOL)
    with pyro.plate("particles", 3, dim=-2):
        with pytest.raises(ValueError, match=r"unbatched query .*Add a batch dimension"):
            layer(x)
        assert layer(x[None]).shape == (3, 1, L, D)


def test_layer_norm_is_a_point_estimated_torch_layer_norm():
    norm = layer_norm(D, eps=1e-3, bias=False)
    assert isinstance(norm, PyroModule) and isinstance(norm, nn.LayerNorm)
    assert norm.bias is None and set(dict(norm.named_parameters())) == {"weight_unconstrained"}
    torch.testing.assert_close(norm.weight, torch.ones(D))
    torch.manual_seed(1)
    reference = nn.LayerNorm(D, eps=1e-3, bias=False).double()
    with torch.no_grad():
        reference.weight.add_(0.3 * torch.randn(D, dtype=torch.float64))
    norm = norm.double()
    copy_layer_norm(norm, reference)
    x = torch.randn(N, L, D, dtype=torch.float64)
    torch.testing.assert_close(norm(x), reference(x), **TOL)
    with pytest.raises(ValueError, match="LayerNorm bias: one of the two norms has it"):
        copy_layer_norm(norm, nn.LayerNorm(D, eps=1e-3))
    with pytest.raises(ValueError, match=r"LayerNorm shapes/eps differ: \(8,\), eps=0.001 vs \(8,\), eps=1e-05"):
        copy_layer_norm(norm, nn.LayerNorm(D))


# ---------------------------------------------------------------------------------------------- inference
class Regressor(PyroModule):
    def __init__(self):
        super().__init__()
        self.encoder = LowRankTransformerEncoderLayer(D, HEADS, FF, rank=2, dropout=0.0)

    def forward(self, x, y=None):
        f = self.encoder(x).mean(-2).sum(-1)  # (..., N)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(f, 1.0), obs=y)
        return f


NORMS = [f"encoder.norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]


def moved_from_init(name, value):
    init = torch.ones(D) if name.endswith("weight") else torch.zeros(D)
    return not torch.allclose(value.detach(), init)


def test_layer_norm_parameters_are_pyro_params_under_global_store_svi():
    torch.manual_seed(0)
    x, y = torch.randn(N, L, D), torch.randn(N)
    with pyro.settings.context(module_local_params=False):
        model = Regressor()
        guide = FactorGuide(model)
        svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
        svi.step(x, y)
        store = pyro.get_param_store()
        assert set(NORMS) <= set(store.keys())
        assert any(name.endswith("self_attn.q_proj.A") for name in store.keys())  # the guide's params too
        for name in NORMS:  # one Adam step moved every LayerNorm parameter away from torch's init
            assert moved_from_init(name, store[name]), name


def test_plain_svi_in_module_local_mode_updates_layer_norms():
    """``import pyro_lowrank`` turns module-local params on; plain SVI must still train the LayerNorms."""
    assert pyro.settings.get("module_local_params")
    torch.manual_seed(0)
    x, y = torch.randn(N, L, D), torch.randn(N)
    model = Regressor()
    guide = FactorGuide(model)
    SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO()).step(x, y)
    assert len(pyro.get_param_store()) == 0
    for name in NORMS:
        norm, param = name.split(".")[1:]
        assert moved_from_init(name, getattr(getattr(model.encoder, norm), param)), name
    names = {name for name, _ in model.named_parameters()}
    assert names == {f"encoder.norm{i}.{p}_unconstrained" for i in (1, 2) for p in ("weight", "bias")}


def test_gradients_reach_every_guide_parameter():
    torch.manual_seed(0)
    model = Regressor()
    x, y = torch.randn(N, L, D), torch.randn(N)
    with pyro.settings.context(module_local_params=True):
        guide = FactorGuide(model)
        guide(x, y)
        params = dict(guide.named_parameters())
        assert sum(p.numel() for p in params.values()) == model.encoder.num_variational_parameters()
        assert len(params) == 2 * 3 * 6  # loc and scale of A, B, bias of six matrices
        loss = TraceMeanField_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
        loss.differentiable_loss(model, guide, x, y).backward()
        for name, param in params.items():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        norm_params = dict(model.encoder.norm1.named_parameters())
        assert set(norm_params) == {"weight_unconstrained", "bias_unconstrained"}
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in norm_params.values())


def test_variational_parameter_count_of_a_reference_layer():
    d, heads, ff, r = 256, 4, 512, 16
    per_matrix = {"q": (d, d), "k": (d, d), "v": (d, d), "out": (d, d), "linear1": (ff, d), "linear2": (d, ff)}
    factor_numbers = sum(2 * r * (m + n) for m, n in per_matrix.values())
    assert factor_numbers == 2 * 16 * (4 * 512 + 2 * 768) == 114_688
    bias_numbers = 2 * (4 * d + ff + d)
    layer = LowRankTransformerEncoderLayer(d, heads, ff, rank=r)
    assert layer.num_variational_parameters() == factor_numbers + bias_numbers == 118_272
    assert LowRankTransformerEncoderLayer(d, heads, ff, rank=r, bias=False).num_variational_parameters() == 114_688
    block = LowRankFeedForward(d, ff, (r, 2 * r))
    assert block.num_variational_parameters() == 2 * r * (ff + d) + 2 * 2 * r * (d + ff) + 2 * (ff + d)
    with pyro.settings.context(module_local_params=True):
        guide = FactorGuide(layer)
        guide(torch.randn(2, 3, d))
        assert sum(p.numel() for p in guide.parameters()) == 118_272


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"activation": "tanh", "rank": 2}, ValueError, "activation"),
    ({"rank": {"q": 2}}, ValueError, "exactly the keys"),
    ({"rank": {**FULL, "linear1": 9}}, ValueError, r"rank\['linear1'\].*\[1, 8\]"),
    ({"rank": 9}, ValueError, r"rank\['q'\].*\[1, 8\]"),
    ({"dropout": -0.1, "rank": 2}, ValueError, "dropout"),
    ({"layer_norm_eps": 0.0, "rank": 2}, ValueError, "layer_norm_eps"),
])
def test_bad_layer_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        LowRankTransformerEncoderLayer(D, HEADS, FF, **kwargs)


def test_bad_feed_forward_arguments():
    with pytest.raises(ValueError, match=r"rank\['linear2'\].*\[1, 8\]"):
        LowRankFeedForward(D, FF, (2, 9))
    with pytest.raises(ValueError, match="pair"):
        LowRankFeedForward(D, FF, (2, 2, 2))
    with pytest.raises(ValueError, match="linear2 must map"):
        LowRankFeedForward.from_linears(nn.Linear(D, FF), nn.Linear(FF, 4), 2)
    with pytest.raises(TypeError, match="linear1"):
        LowRankFeedForward.from_linears(nn.Conv1d(D, FF, 1), nn.Linear(FF, D), 2)


def test_from_transformer_encoder_layer_validates_ranks_per_matrix():
    layer = nn.TransformerEncoderLayer(D, HEADS, 6)  # linear1 is 6 x 8: its rank limit is 6
    with pytest.raises(ValueError, match=r"rank\['linear1'\].*\[1, 6\]"):
        LowRankTransformerEncoderLayer.from_transformer_encoder_layer(layer, {**FULL, "linear2": 6})
    converted = LowRankTransformerEncoderLayer.from_transformer_encoder_layer(layer, 6)
    assert {proj.rank for proj in converted.self_attn.projections().values()} == {6}


def test_from_transformer_encoder_layer_rejects_unsupported_layers():
    with pytest.raises(TypeError, match="TransformerEncoderLayer"):
        LowRankTransformerEncoderLayer.from_transformer_encoder_layer(nn.Linear(D, D), 2)
    custom = nn.TransformerEncoderLayer(D, HEADS, FF, activation=torch.tanh)
    with pytest.raises(ValueError, match="activation"):
        LowRankTransformerEncoderLayer.from_transformer_encoder_layer(custom, 2)
    tanh_gelu = nn.TransformerEncoderLayer(D, HEADS, FF, activation=nn.GELU(approximate="tanh"))
    with pytest.raises(ValueError, match="activation"):
        LowRankTransformerEncoderLayer.from_transformer_encoder_layer(tanh_gelu, 2)


# ---------------------------------------------------------------------------------------------- device and dtype
@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32),
    ("cpu", torch.float64),
    pytest.param("cuda", torch.float32, marks=pytest.mark.cuda),
])
def test_embedding_and_layer_follow_the_module_device_and_dtype(device, dtype):
    from pyro_lowrank.nn.embedding import LowRankEmbedding

    embedding = LowRankEmbedding(20, D, 3, padding_idx=0, sequence_dims=1).to(device=device, dtype=dtype)
    layer = LowRankTransformerEncoderLayer(D, HEADS, FF, rank=3, dropout=0.0).to(device=device, dtype=dtype)
    tokens = torch.randint(0, 20, (N, L), device=device)
    with pyro.plate("particles", 2, dim=-2):
        out = layer(embedding(tokens), src_key_padding_mask=padding_mask().to(device), is_causal=True)
        weights = layer.self_attn(out, out, out)[1]
    assert out.shape == (2, N, L, D) and out.dtype == dtype and out.device.type == device
    assert weights.shape == (2, N, L, L) and weights.dtype == dtype and weights.device.type == device
    assert torch.isfinite(out).all()
    for prior_buffer in (*layer.buffers(), *embedding.buffers()):
        assert prior_buffer.dtype == dtype and prior_buffer.device.type == device
