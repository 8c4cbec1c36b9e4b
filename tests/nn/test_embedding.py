"""Tests for LowRankEmbedding: exactness against nn.Embedding, padding, particle dimensions, cost independent of V,
sparse gradients, validation and the inherited factor machinery."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pyro_lowrank.distributions import LowRankMatrixNormal, ScaleMixturePrior
from pyro_lowrank.guides import FactorGuide, factor_initial_values
from pyro_lowrank.nn.embedding import LowRankEmbedding, gather_rows


def conditioned_on_means(layer):
    return poutine.condition(layer, data=factor_initial_values(layer))


def trace_layer(layer, tokens):
    trace = poutine.trace(layer).get_trace(tokens)
    values = {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}
    return values, trace.nodes["_RETURN"]["value"]


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("padding_idx", [None, 0, 3, -1])
def test_from_embedding_full_rank_reproduces_nn_embedding(padding_idx):
    torch.manual_seed(0)
    vocab, dim = 20, 6
    embedding = nn.Embedding(vocab, dim, padding_idx=padding_idx).double()
    layer = LowRankEmbedding.from_embedding(embedding, dim)  # full rank d < V
    assert layer.padding_idx == embedding.padding_idx
    assert layer.a_init.dtype == torch.float64 and layer.prior.scale.dtype == torch.float64
    tokens = torch.tensor([[0, 3, 19, 3, 7], [5, 5, 0, 19, 12]])
    out = conditioned_on_means(layer)(tokens)
    assert out.shape == (2, 5, dim) and out.dtype == torch.float64
    torch.testing.assert_close(out, embedding(tokens).detach(), rtol=0, atol=1e-12)
    if padding_idx is not None:
        pad = embedding.padding_idx
        assert (out[tokens == pad] == 0).all()
        assert (tokens == pad).any()


@pytest.mark.parametrize("rank", [1, 3])
def test_from_embedding_truncated_svd_is_best_rank_r_approximation(rank):
    torch.manual_seed(1)
    embedding = nn.Embedding(12, 5, padding_idx=2).double()
    layer = LowRankEmbedding.from_embedding(embedding, rank)
    weight = embedding.weight.detach()
    s = torch.linalg.svdvals(weight)
    approx = layer.a_init @ layer.b_init.T
    # Eckart-Young: the error of the best rank-r approximation is the norm of the discarded singular values
    torch.testing.assert_close(torch.linalg.matrix_norm(weight - approx), s[rank:].square().sum().sqrt())
    assert torch.equal(layer.a_init[2], torch.zeros(rank, dtype=torch.float64))


def test_padding_output_is_exactly_zero_for_a_random_draw():
    layer = LowRankEmbedding(10, 4, 2, padding_idx=1)
    tokens = torch.tensor([[1, 2, 1, 9], [0, 1, 4, 4]])
    values, out = trace_layer(layer, tokens)
    assert (out[tokens == 1] == 0).all()
    weight = values["A"] @ values["B"].T
    expected = weight[tokens]
    expected[tokens == 1] = 0
    torch.testing.assert_close(out, expected)
    assert (out[tokens != 1].abs().sum(-1) > 0).all()


def test_gradient_is_sparse_over_rows_and_zero_for_padding():
    torch.manual_seed(0)
    vocab, dim, rank = 15, 4, 3
    layer = LowRankEmbedding(vocab, dim, rank, padding_idx=7)
    a = torch.randn(vocab, rank, requires_grad=True)
    b = torch.randn(dim, rank, requires_grad=True)
    tokens = torch.tensor([[2, 7, 2], [11, 0, 7]])
    out = poutine.condition(layer, data={"A": a, "B": b})(tokens)
    (out * torch.randn_like(out)).sum().backward()
    used = {0, 2, 11}
    for row in range(vocab):
        if row in used:
            assert a.grad[row].abs().sum() > 0
        else:  # tokens absent from the batch, and the padding token, receive exactly zero gradient
            assert torch.equal(a.grad[row], torch.zeros(rank))
    # B's gradient comes from the non-padding tokens only: sum over positions of g_t a_t^T
    only_padding = torch.tensor([[7, 7]])
    a.grad, b.grad = None, None
    poutine.condition(layer, data={"A": a, "B": b})(only_padding).sum().backward()
    assert torch.equal(b.grad, torch.zeros(dim, rank)) and torch.equal(a.grad, torch.zeros(vocab, rank))


# ---------------------------------------------------------------------------------------------- particles
@pytest.mark.parametrize("num_particles", [1, 4])
def test_particle_dimensions(num_particles):
    torch.manual_seed(0)
    layer = LowRankEmbedding(30, 5, 2, padding_idx=0, sequence_dims=1)
    tokens = torch.randint(0, 30, (6, 7))
    tokens[0, 0] = 0
    with pyro.plate("particles", num_particles, dim=-2):  # the data plate (dim -1) is entered after the network
        values, out = trace_layer(layer, tokens)
    assert values["A"].shape == (num_particles, 1, 30, 2)
    assert out.shape == (num_particles, 6, 7, 5)
    for p in range(num_particles):
        table = values["A"][p, 0] @ values["B"][p, 0].T
        expected = table[tokens] * (tokens != 0).unsqueeze(-1)
        torch.testing.assert_close(out[p], expected)
    if num_particles > 1:
        assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("shape", [(6,), (6, 7), (6, 2, 7)])
def test_sequence_dims_inferred_from_a_call_without_particles(shape):
    """With sequence_dims=None the layer records tokens.dim() - 1 from an unvectorised call and lines its particle
    factors up with it; the draws-equal-batch-size case (P == N) is then right, not silently mixed."""
    torch.manual_seed(0)
    layer = LowRankEmbedding(30, 5, 2)
    tokens = torch.randint(0, 30, shape)
    with pytest.raises(ValueError, match=r"sequence_dims=None and was first called under vectorised particles"):
        with pyro.plate("particles", 6, dim=-2):
            trace_layer(layer, tokens)
    layer(tokens)  # no particles: records len(shape) - 1
    with pyro.plate("particles", 6, dim=-2):  # P == N
        values, out = trace_layer(layer, tokens)
    assert out.shape == (6,) + shape + (5,)
    for p in range(6):
        torch.testing.assert_close(out[p], (values["A"][p, 0] @ values["B"][p, 0].T)[tokens])


def test_particle_dimensions_without_sequence_dims():
    layer = LowRankEmbedding(30, 5, 2, sequence_dims=0)
    tokens = torch.randint(0, 30, (6,))
    with pyro.plate("particles", 3, dim=-2):
        values, out = trace_layer(layer, tokens)
    assert out.shape == (3, 6, 5)
    for p in range(3):
        torch.testing.assert_close(out[p], (values["A"][p, 0] @ values["B"][p, 0].T)[tokens])


def test_gather_rows_broadcasts_tables_that_vary_over_index_dims():
    torch.manual_seed(0)
    index = torch.tensor([[2, 0, 1], [1, 1, 0]])  # (2, 3)
    varying = torch.randn(4, 1, 3, 3, 5)  # batch (4, 1, 3): varies along the index's last dim
    out = gather_rows(varying, index)
    assert out.shape == (4, 2, 3, 5)
    for p in range(4):
        for i in range(2):
            for j in range(3):
                torch.testing.assert_close(out[p, i, j], varying[p, 0, j, index[i, j]])
    constant = torch.randn(4, 1, 1, 3, 5)
    out = gather_rows(constant, index)
    assert out.shape == (4, 2, 3, 5)
    torch.testing.assert_close(out, constant[:, 0, 0][:, index])


# ---------------------------------------------------------------------------------------------- cost
def matmul_flops(layer, tokens):
    with FlopCounterMode(display=False) as counter:
        conditioned_on_means(layer)(tokens)
    return counter.get_total_flops()


def test_flops_are_independent_of_the_vocabulary_size():
    torch.manual_seed(0)
    dim, rank = 8, 4
    tokens = torch.tensor([[3, 17, 3, 999], [17, 17, 512, 3]])
    num_unique = 4
    flops = [matmul_flops(LowRankEmbedding(vocab, dim, rank), tokens) for vocab in (1000, 100_000)]
    assert flops[0] == flops[1] == 2 * num_unique * rank * dim


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("tokens, error, pattern", [
    (torch.tensor([[0.0, 1.0]]), TypeError, "integer dtype"),
    (torch.tensor([[True, False]]), TypeError, "integer dtype"),
    (torch.tensor([[0, 10]]), ValueError, r"\[0, 10\).*\[0, 10\]"),
    (torch.tensor([[-2, 3]]), ValueError, r"\[0, 10\).*\[-2, 3\]"),
    ([[0, 1]], TypeError, "torch.Tensor"),
])
def test_bad_tokens(tokens, error, pattern):
    with pytest.raises(error, match=pattern):
        LowRankEmbedding(10, 4, 2)(tokens)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"rank": 5}, r"rank.*\[1, 4\]"),
    ({"padding_idx": 10}, r"padding_idx.*\[-10, 10\)"),
    ({"padding_idx": -11}, "padding_idx"),
    ({"num_embeddings": 0}, "num_embeddings"),
    ({"embedding_dim": 2.0}, "embedding_dim"),
    ({"sequence_dims": -1}, "sequence_dims"),
])
def test_bad_constructor_arguments(kwargs, pattern):
    args = {"num_embeddings": 10, "embedding_dim": 4, "rank": 2, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        LowRankEmbedding(**args)


@pytest.mark.parametrize("option, value", [("max_norm", 1.0), ("sparse", True), ("scale_grad_by_freq", True)])
def test_from_embedding_rejects_unsupported_options(option, value):
    with pytest.raises(ValueError, match=f"{option}"):
        LowRankEmbedding.from_embedding(nn.Embedding(10, 4, **{option: value}), 2)


def test_from_embedding_validates_the_rank_in_the_constructor():
    with pytest.raises(ValueError, match=r"rank.*\[1, 4\].*10x4.*got 5"):
        LowRankEmbedding.from_embedding(nn.Embedding(10, 4), 5)


def test_from_embedding_and_from_linear_type_errors():
    with pytest.raises(TypeError, match="nn.Embedding"):
        LowRankEmbedding.from_embedding(nn.Linear(4, 10), 2)
    with pytest.raises(TypeError, match="from_embedding"):
        LowRankEmbedding.from_linear(nn.Linear(4, 10), 2)


# ---------------------------------------------------------------------------------------------- init and posterior
def test_variance_matching_init_matches_torch_embedding_variance():
    torch.manual_seed(0)
    vocab, dim, rank = 2000, 400, 100
    layer = LowRankEmbedding(vocab, dim, rank)
    second_moment = (layer.a_init @ layer.b_init.T).square().mean().item()
    rel_sd = ((2 / vocab + 2 / dim) / rank) ** 0.5  # see test_linear.test_variance_matching_init
    assert abs(second_moment - 1.0) < 6 * rel_sd
    assert layer.init_scale == pytest.approx(0.1 * rank ** -0.25)


def test_guide_count_sites_and_weight_posterior():
    vocab, dim, rank = 12, 5, 3
    layer = LowRankEmbedding(vocab, dim, rank, prior=ScaleMixturePrior())
    tokens = torch.randint(0, vocab, (4, 6))
    assert layer.num_variational_parameters() == 2 * rank * (vocab + dim)
    assert layer.factor_sites() == {"weight": ("A", "B")}
    with pyro.settings.context(module_local_params=True):
        guide = FactorGuide(layer)
        guide(tokens)
        assert sum(p.numel() for p in guide.parameters()) == 2 * rank * (vocab + dim)
        q = layer.weight_posterior(guide)
    assert isinstance(q, LowRankMatrixNormal) and q.event_shape == (vocab, dim) and q.rank == rank
    torch.testing.assert_close(q.mean, layer.a_init @ layer.b_init.T)
    trace = poutine.trace(layer).get_trace(tokens)
    assert {name for name, site in trace.nodes.items() if site["type"] == "sample"} == {"A", "B"}


def test_a_non_zero_padding_row_is_reported():
    emb = nn.Embedding(10, 4, padding_idx=0)
    with torch.no_grad():
        emb.weight[0] = 0.5
    with pytest.warns(UserWarning, match=r"padding row 0 of the embedding is not zero \(norm 1\)"):
        layer = LowRankEmbedding.from_embedding(emb, 4)
    assert torch.equal(layer(torch.tensor([[0, 0]])).detach(), torch.zeros(1, 2, 4))  # padding outputs are zero
