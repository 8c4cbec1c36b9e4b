"""Tests for LowRankMultiheadAttention: exactness against nn.MultiheadAttention (masks, layouts, weights, kdim/vdim,
unbatched input), interop with nn.TransformerEncoderLayer, particle dimensions, dropout, gradients and validation."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank.guides import FactorGuide, factor_initial_values
from pyro_lowrank.nn.attention import LowRankMultiheadAttention

E, H, N, L, S = 8, 2, 3, 5, 4
TOL = {"rtol": 1e-10, "atol": 1e-10}


def torch_mha(batch_first=True, kdim=None, vdim=None, bias=True, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=vdim, bias=bias,
                                dropout=dropout).double()
    if bias:  # torch initialises the biases to zero; make them matter
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha


def full_rank_copy(mha):
    """The converted module at full rank, conditioned on its factor means (posterior scales set to zero)."""
    layer = LowRankMultiheadAttention.from_multihead_attention(mha, {"q": E, "k": min(E, mha.kdim),
                                                                     "v": min(E, mha.vdim), "out": E})
    return layer, poutine.condition(layer, data=factor_initial_values(layer))


def inputs(batch_first=True, kdim=E, vdim=E, tgt=L, src=S):
    def shape(length, width):
        return (N, length, width) if batch_first else (length, N, width)
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(shape(length, width), generator=g, dtype=torch.float64)
                 for length, width in ((tgt, E), (src, kdim), (src, vdim)))


def assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], **TOL)
    if theirs[1] is None:
        assert ours[1] is None
    else:
        torch.testing.assert_close(ours[1], theirs[1], **TOL)


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch(batch_first, need_weights, average, bias):
    mha = torch_mha(batch_first, bias=bias)
    layer, ours = full_rank_copy(mha)
    assert layer.batch_first is batch_first and layer.num_heads == H
    q, k, v = inputs(batch_first)
    kwargs = {"need_weights": need_weights, "average_attn_weights": average}
    assert_same(ours(q, k, v, **kwargs), mha(q, k, v, **kwargs))
    self_out = ours(q, q, q, **kwargs)  # self-attention (torch's packed path)
    assert_same(self_out, mha(q, q, q, **kwargs))
    assert self_out[0].shape == q.shape


def masks(kind, dtype):
    g = torch.Generator().manual_seed(2)
    padding = torch.zeros(N, S, dtype=torch.bool)
    padding[0, -1] = padding[2, -2:] = True  # key 0 is never padded
    causal_like = torch.ones(L, S, dtype=torch.bool).triu(1)  # row i may attend keys 0..i
    per_head = torch.rand(N * H, L, S, generator=g) < 0.4
    per_head[..., 0] = False
    chosen = {"kpm": (padding, None), "2d": (None, causal_like), "3d": (None, per_head),
              "kpm+2d": (padding, causal_like), "kpm+3d": (padding, per_head)}[kind]
    if dtype == "float":  # additive float masks: finite random values plus -inf where the bool mask was True
        chosen = tuple(None if m is None else
                       torch.randn(m.shape, generator=g, dtype=torch.float64).masked_fill(m, float("-inf"))
                       for m in chosen)
    return chosen


@pytest.mark.parametrize("kind", ["kpm", "2d", "3d", "kpm+2d", "kpm+3d"])
@pytest.mark.parametrize("dtype", ["bool", "float"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_masks_match_torch(kind, dtype, need_weights):
    mha = torch_mha()
    _, ours = full_rank_copy(mha)
    q, k, v = inputs()
    key_padding_mask, attn_mask = masks(kind, dtype)
    kwargs = {"key_padding_mask": key_padding_mask, "attn_mask": attn_mask, "need_weights": need_weights,
              "average_attn_weights": False}
    expected = mha(q, k, v, **kwargs)
    assert torch.isfinite(expected[0]).all()
    assert_same(ours(q, k, v, **kwargs), expected)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("with_padding", [True, False])
def test_is_causal_matches_torch(need_weights, with_padding):
    mha = torch_mha()
    layer, ours = full_rank_copy(mha)
    q, _, _ = inputs()
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    padding = masks("kpm", "bool")[0] if with_padding else None
    if with_padding:
        padding = torch.cat([padding, torch.zeros(N, L - S, dtype=torch.bool)], dim=1)
    kwargs = {"attn_mask": causal, "key_padding_mask": padding, "need_weights": need_weights, "is_causal": True}
    expected = mha(q, q, q, **kwargs)
    assert_same(ours(q, q, q, **kwargs), expected)
    # without a mask the hint applies the causal mask itself (torch raises for a missing mask)
    kwargs["attn_mask"] = None
    assert_same(ours(q, q, q, **kwargs), expected)
    if not need_weights and not with_padding:  # the hint replaces attn_mask, exactly as in torch
        assert_same(ours(q, q, q, attn_mask=torch.zeros(L, L), need_weights=False, is_causal=True), expected)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_kdim_vdim_match_torch(batch_first, need_weights):
    mha = torch_mha(batch_first, kdim=5, vdim=3)
    layer, ours = full_rank_copy(mha)
    assert (layer.k_proj.in_features, layer.v_proj.in_features) == (5, 3)
    assert (layer.k_proj.rank, layer.v_proj.rank) == (5, 3)
    q, k, v = inputs(batch_first, kdim=5, vdim=3)
    padding, attn_mask = masks("kpm+2d", "bool")
    kwargs = {"key_padding_mask": padding, "attn_mask": attn_mask, "need_weights": need_weights}
    assert_same(ours(q, k, v, **kwargs), mha(q, k, v, **kwargs))


@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
def test_unbatched_input_matches_torch(need_weights, average):
    mha = torch_mha(batch_first=True)
    _, ours = full_rank_copy(mha)
    q, k, v = (t[0] for t in inputs())
    padding = torch.tensor([False, False, True, False])
    attn_mask = torch.rand(H, L, S, generator=torch.Generator().manual_seed(3)) < 0.3
    attn_mask[..., 0] = False
    kwargs = {"key_padding_mask": padding, "attn_mask": attn_mask, "need_weights": need_weights,
              "average_attn_weights": average}
    expected = mha(q, k, v, **kwargs)
    result = ours(q, k, v, **kwargs)
    assert result[0].shape == (L, E)
    assert_same(result, expected)


def test_unbatched_input_under_vectorised_particles_is_rejected():
    """Under a particle plate an unbatched query would give (P, L, E), which a next layer reads as P sequences; it
    is an error that asks for a batch dimension, while a batch of one gives (P, 1, L, E) with per-particle factors."""
    layer = LowRankMultiheadAttention(E, H, 2, batch_first=True).double()
    q, k, v = (t[0] for t in inputs())
    with pyro.plate("particles", 3, dim=-2):
        with pytest.raises(ValueError, match=r"unbatched query of shape \(5, 8\) inside the vectorised plate\(s\) "
                                             r"\['particles'\].*Add a batch dimension.*\(1, L, E\)"):
            layer(q, k, v)
        trace = poutine.trace(layer).get_trace(q[None], k[None], v[None], need_weights=False)
    out = trace.nodes["_RETURN"]["value"][0]
    assert out.shape == (3, 1, L, E)
    values = {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}
    for p in range(3):
        expected = manual_attention(layer, particle(values, p), q[None], k[None], v[None], need_weights=False)
        torch.testing.assert_close(out[p], expected[0], **TOL)
    assert layer(q, k, v)[0].shape == (L, E)  # outside the plate: torch's unbatched semantics


# ---------------------------------------------------------------------------------------------- torch containers
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_replaces_self_attn_of_torch_encoder_layer(train, norm_first):
    torch.manual_seed(0)
    encoder = nn.TransformerEncoderLayer(E, H, dim_feedforward=16, dropout=0.0, batch_first=True,
                                         norm_first=norm_first).double()
    with torch.no_grad():
        encoder.self_attn.in_proj_bias.normal_()
    converted = nn.TransformerEncoderLayer(E, H, dim_feedforward=16, dropout=0.0, batch_first=True,
                                           norm_first=norm_first).double()
    converted.load_state_dict(encoder.state_dict())
    converted.self_attn = LowRankMultiheadAttention.from_multihead_attention(encoder.self_attn, E)
    attn = converted.self_attn
    assert attn.in_proj_weight is None and attn.in_proj_bias is None and not attn._qkv_same_embed_dim
    encoder.train(train)
    converted.train(train)
    src = inputs()[0]
    padding = masks("kpm", "bool")[0]
    padding = torch.cat([padding, torch.zeros(N, L - S, dtype=torch.bool)], dim=1)
    model = poutine.condition(converted, data=factor_initial_values(converted))
    with torch.no_grad():  # lets torch's eval-mode fast path run for the original layer
        for kwargs in ({}, {"src_key_padding_mask": padding},
                       {"src_mask": nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64),
                        "is_causal": True}):
            torch.testing.assert_close(model(src, **kwargs), encoder(src, **kwargs), **TOL)


# ---------------------------------------------------------------------------------------------- particles
def manual_attention(layer, values, query, key, value, **kwargs):
    """torch's reference multi-head attention (batch-first inputs) with the factors of one particle."""
    def weight(name):
        return values[f"{name}_proj.A"] @ values[f"{name}_proj.B"].T
    in_bias = torch.cat([values[f"{name}_proj.bias"] for name in "qkv"])
    out, weights = F.multi_head_attention_forward(
        query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), E, H, None, in_bias, None, None, False,
        0.0, weight("out"), values["out_proj.bias"], training=False, use_separate_proj_weight=True,
        q_proj_weight=weight("q"), k_proj_weight=weight("k"), v_proj_weight=weight("v"), **kwargs,
    )
    return out.transpose(0, 1), weights


def particle(values, p):
    return {name: value[p, 0] for name, value in values.items()}


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_particle_dimensions(need_weights, batch_first):
    num_particles = 3
    layer = LowRankMultiheadAttention(E, H, 3, batch_first=batch_first).double()
    q, k, v = inputs(batch_first)
    padding, attn_mask = masks("kpm+2d", "bool")
    kwargs = {"key_padding_mask": padding, "attn_mask": attn_mask, "need_weights": need_weights}
    with pyro.plate("particles", num_particles, dim=-2):
        trace = poutine.trace(layer).get_trace(q, k, v, **kwargs)
    values = {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}
    assert values["q_proj.A"].shape == (num_particles, 1, E, 3)
    out, weights = trace.nodes["_RETURN"]["value"]
    assert out.shape == ((num_particles, N, L, E) if batch_first else (num_particles, L, N, E))
    if need_weights:
        assert weights.shape == (num_particles, N, L, S)
    if not batch_first:
        q, k, v, out = (t.transpose(-2, -3) for t in (q, k, v, out))
    for p in range(num_particles):
        expected = manual_attention(layer, particle(values, p), q, k, v, **kwargs)
        torch.testing.assert_close(out[p], expected[0], **TOL)
        if need_weights:
            torch.testing.assert_close(weights[p], expected[1], **TOL)
    assert not torch.allclose(out[0], out[1])


def test_inputs_with_particle_dimensions_stack():
    """A second attention layer receives the (P, N, L, E) output of the first; each particle uses its own factors
    in both layers."""
    num_particles = 3

    class Stack(PyroModule):
        def __init__(self):
            super().__init__()
            self.first = LowRankMultiheadAttention(E, H, 2, batch_first=True)
            self.second = LowRankMultiheadAttention(E, H, 2, batch_first=True)

        def forward(self, x):
            h = self.first(x, x, x, need_weights=False)[0]
            return self.second(h, h, h)

    model = Stack().double()
    x = inputs()[0]
    with pyro.plate("particles", num_particles, dim=-2):
        trace = poutine.trace(model).get_trace(x)
    out, weights = trace.nodes["_RETURN"]["value"]
    assert out.shape == (num_particles, N, L, E) and weights.shape == (num_particles, N, L, L)
    values = {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}
    for p in range(num_particles):
        mine = particle(values, p)
        first = {name[len("first."):]: value for name, value in mine.items() if name.startswith("first.")}
        second = {name[len("second."):]: value for name, value in mine.items() if name.startswith("second.")}
        h = manual_attention(model.first, first, x, x, x)[0]
        expected_out, expected_weights = manual_attention(model.second, second, h, h, h)
        torch.testing.assert_close(out[p], expected_out, **TOL)
        torch.testing.assert_close(weights[p], expected_weights, **TOL)


# ---------------------------------------------------------------------------------------------- dropout
def test_attention_dropout_only_in_training():
    mha = torch_mha(dropout=0.5)
    layer, ours = full_rank_copy(mha)
    assert layer.dropout == 0.5
    q, k, v = inputs()
    mha.eval()
    layer.eval()
    assert_same(ours(q, k, v, average_attn_weights=False), mha(q, k, v, average_attn_weights=False))
    clean = ours(q, k, v, average_attn_weights=False)[1]
    layer.train()
    out, dropped = ours(q, k, v, average_attn_weights=False)
    # inverted dropout on the attention weights: each weight is either dropped or scaled by 1 / (1 - p)
    kept = dropped != 0
    assert 0.3 < kept.double().mean() < 0.7
    torch.testing.assert_close(dropped[kept], 2 * clean[kept])
    # and the output is computed from the dropped weights
    values = factor_initial_values(layer)
    v_heads = (v @ (values["v_proj.A"] @ values["v_proj.B"].T).T + values["v_proj.bias"]).reshape(N, S, H, E // H)
    heads = (dropped @ v_heads.transpose(1, 2)).transpose(1, 2).reshape(N, L, E)
    expected = heads @ (values["out_proj.A"] @ values["out_proj.B"].T).T + values["out_proj.bias"]
    torch.testing.assert_close(out, expected, **TOL)


# ---------------------------------------------------------------------------------------------- guide, gradients
class Regressor(PyroModule):
    def __init__(self):
        super().__init__()
        self.attn = LowRankMultiheadAttention(E, H, {"q": 2, "k": 3, "v": 1, "out": 4}, batch_first=True, kdim=5,
                                              vdim=5)

    def forward(self, x, context, y=None):
        f = self.attn(x, context, context, need_weights=False)[0].sum(-1)  # (..., N, L)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(f, 1.0).to_event(1), obs=y)
        return f


def test_gradients_reach_every_guide_parameter_and_count():
    torch.manual_seed(0)
    model = Regressor()
    x, context, y = torch.randn(N, L, E), torch.randn(N, S, 5), torch.randn(N, L)
    ranks = {"q": (E, E, 2), "k": (E, 5, 3), "v": (E, 5, 1), "out": (E, E, 4)}
    expected = sum(2 * r * (m + n) + 2 * m for m, n, r in ranks.values())
    assert model.attn.num_variational_parameters() == expected
    with pyro.settings.context(module_local_params=True):
        guide = FactorGuide(model)
        guide(x, context, y)
        params = dict(guide.named_parameters())
        assert sum(p.numel() for p in params.values()) == expected
        assert len(params) == 2 * 12  # loc and scale of A, B, bias for each of 4 projections
        loss = TraceMeanField_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
        loss.differentiable_loss(model, guide, x, context, y).backward()
    for name, param in params.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("args, kwargs, pattern", [
    ((10, 3, 2), {}, "divisible by num_heads"),
    ((8, 2, 4), {"kdim": 3}, r"rank\['k'\].*\[1, 3\]"),
    ((8, 2, 9), {}, r"rank\['q'\].*\[1, 8\]"),
    ((8, 2, {"q": 2, "k": 2, "v": 2}), {}, "exactly the keys"),
    ((8, 2, {"q": 2, "k": 2, "v": 2, "out": 0}), {}, r"rank\['out'\]"),
    ((8, 2, 2), {"dropout": 1.5}, "dropout"),
    ((8, 0, 2), {}, "num_heads"),
])
def test_bad_constructor_arguments(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        LowRankMultiheadAttention(*args, **kwargs)


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_from_multihead_attention_rejects_unsupported_options(option):
    with pytest.raises(ValueError, match=option):
        LowRankMultiheadAttention.from_multihead_attention(nn.MultiheadAttention(E, H, **{option: True}), 2)


def test_from_multihead_attention_checks_type_and_copies_settings():
    with pytest.raises(TypeError, match="MultiheadAttention"):
        LowRankMultiheadAttention.from_multihead_attention(nn.Linear(E, E), 2)
    mha = nn.MultiheadAttention(E, 4, dropout=0.25, batch_first=True, bias=False)
    layer = LowRankMultiheadAttention.from_multihead_attention(mha, 3, init_scale_factor=0.01)
    assert (layer.num_heads, layer.dropout, layer.batch_first, layer.q_proj.bias) == (4, 0.25, True, None)
    assert layer.q_proj.init_scale_factor == 0.01 and layer.q_proj.a_init.dtype == torch.float32
    with pytest.raises(ValueError, match=r"rank\['v'\]"):
        LowRankMultiheadAttention.from_multihead_attention(nn.MultiheadAttention(E, H, vdim=2), 3)


def test_bad_inputs():
    layer = LowRankMultiheadAttention(E, H, 2, batch_first=True, kdim=5)
    q, k = torch.randn(N, L, E), torch.randn(N, S, 5)
    with pytest.raises(ValueError, match="key with last dimension 5"):
        layer(q, q, q)
    with pytest.raises(ValueError, match=r"attn_mask must have shape"):
        layer(q, k, q[:, :S], attn_mask=torch.zeros(L, L, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape"):
        layer(q, k, q[:, :S], key_padding_mask=torch.zeros(N, L, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool or floating-point"):
        layer(q, k, q[:, :S], key_padding_mask=torch.zeros(N, S, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size"):
        layer(q, k[:2], q[:2, :S])
    with pytest.raises(ValueError, match="unbatched"):
        layer(q[0], k, q[:, :S])


def test_initial_variances_match_torch_defaults():
    torch.manual_seed(0)
    dim, rank = 128, 64
    packed = LowRankMultiheadAttention(dim, 4, rank)
    separate = LowRankMultiheadAttention(dim, 4, rank, kdim=64)
    for proj, variance in ((packed.q_proj, 1 / (2 * dim)), (packed.out_proj, 1 / (3 * dim)),
                           (separate.q_proj, 1 / dim), (separate.k_proj, 2 / (dim + 64))):
        second_moment = (proj.a_init @ proj.b_init.T).square().mean().item()
        rel_sd = ((2 / proj.out_features + 2 / proj.in_features) / proj.rank) ** 0.5
        assert abs(second_moment / variance - 1) < 6 * rel_sd
