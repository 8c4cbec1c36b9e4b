"""Tests for the low-rank Bayesian Transformer text classifier (models/transformer.py)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from toy_data import keyword_sequences

from pyro_lowrank.guides import FactorGuide, factor_initial_values
from pyro_lowrank.inference import fit
from pyro_lowrank.models.transformer import LowRankTransformerClassifier
from pyro_lowrank.predictive import predict

SMALL = {"d_model": 16, "num_layers": 2, "num_heads": 2, "dim_feedforward": 32, "max_len": 12, "rank": 4,
         "dropout": 0.0}


def test_paper_configuration_parameter_count():
    """Paper defaults (d=256, 4 layers, 4 heads, FFN 512, r=16, vocabulary 30522): per layer Q, K, V, O are 256x256
    and the FFN 512x256 and 256x512, so a mean-field guide learns 2 r (m + n) per matrix plus 2 m per bias."""
    model = LowRankTransformerClassifier(30522, 2)
    r, d, f = 16, 256, 512
    per_layer = 4 * 2 * r * (d + d) + 2 * 2 * r * (d + f) + 2 * (4 * d + f + d)
    embedding = 2 * r * (30522 + d)
    head = 2 * 2 * (d + 2) + 2 * 2  # rank min(16, C) = 2, bias of 2
    assert model.num_variational_parameters() == 4 * per_layer + embedding + head
    # METHODS.md quotes 1.47M for this configuration; ours differs only in what is counted (biases, head)
    assert 1.40e6 < model.num_variational_parameters() < 1.55e6


def test_one_site_per_factor_and_padding_is_masked():
    torch.manual_seed(0)
    model = LowRankTransformerClassifier(40, 2, **SMALL)
    tokens, y = keyword_sequences(6, length=8)
    trace = poutine.trace(model).get_trace(tokens, y)
    latent = [n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"]
    # embedding (A, B); per layer 4 attention projections and 2 FFN matrices, each A, B, bias; head A, B, bias
    assert len(latent) == 2 + 2 * 6 * 3 + 3
    assert all(trace.nodes[n]["value"].dim() <= 2 for n in latent)
    at_means = poutine.condition(model.network, data=factor_initial_values(model))
    with torch.no_grad():
        short = at_means(tokens)
        padded = at_means(torch.cat([tokens, torch.zeros(6, 4, dtype=torch.long)], dim=1))
    torch.testing.assert_close(short, padded, rtol=1e-5, atol=1e-5)


def test_learns_a_keyword_task_and_predicts_with_vectorised_draws():
    pyro.set_rng_seed(0)
    x, y = keyword_sequences(512, length=10, seed=0)
    x_test, y_test = keyword_sequences(256, length=10, seed=1)
    model = LowRankTransformerClassifier(40, 2, **SMALL)
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), num_epochs=25, batch_size=64, lr=5e-3, progress=False, seed=0)
    assert result.train_loss[-1] < result.train_loss[0]
    logits = predict(model, guide, x_test, num_samples=16)["f"]
    assert logits.shape == (16, 256, 2)
    probs = logits.softmax(-1).mean(0)
    accuracy = float((probs.argmax(-1) == y_test).float().mean())
    assert accuracy > 0.9, accuracy


def test_bad_tokens_are_rejected():
    model = LowRankTransformerClassifier(40, 2, **SMALL)
    # dtype and id range: the embedding's own validation (LowRankEmbedding.check_tokens)
    with pytest.raises(TypeError, match=r"tokens must have an integer dtype"):
        model.check_data(torch.rand(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 40\).*\[1, 40\]"):
        model.check_data(torch.tensor([[1, 40]]), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 40\).*\[-1, 3\]"):
        model.network(torch.tensor([[1, -1, 3]]))
    # shape and length: the encoder's
    with pytest.raises(ValueError, match=r"tokens must have shape \(N, L\), got shape \(4,\)"):
        model.check_data(torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"length L in \[1, max_len=12\], got 13"):
        model.check_data(torch.ones(3, 13, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"length L in \[1, max_len=12\], got 13"):
        model(torch.ones(3, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        model.check_data(torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"padding_idx must lie in \[0, vocab_size\)"):
        LowRankTransformerClassifier(40, 2, padding_idx=40, **SMALL)


def test_plain_pyro_svi_updates_the_point_estimated_tables():
    """The positional table and layer norms are real PyroParams, so plain SVI (module-local params) trains them."""
    import pyro.optim
    from pyro.infer import SVI, Trace_ELBO

    pyro.set_rng_seed(0)
    model = LowRankTransformerClassifier(40, 2, **SMALL)
    guide = FactorGuide(model)
    x, y = keyword_sequences(32, length=8)
    before = model.network.position.detach().clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(3):
        svi.step(x, y)
    assert not torch.allclose(model.network.position.detach(), before)


def test_fit_with_validation_data_and_two_vectorised_particles():
    pyro.set_rng_seed(0)
    x, y = keyword_sequences(48, length=6, seed=2)
    x_val, y_val = keyword_sequences(16, length=6, seed=3)
    tiny = {**SMALL, "d_model": 8, "num_layers": 1, "dim_feedforward": 8, "rank": 2}
    model = LowRankTransformerClassifier(40, 2, **tiny)
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), val_data=(x_val, y_val), num_particles=2, num_epochs=3, batch_size=16,
                 lr=0.01, val_num_samples=4, progress=False, seed=0)
    assert result.epochs_run == 3 and len(result.train_loss) == len(result.val_nll) == 3
    assert all(math.isfinite(v) for v in result.train_loss + result.val_nll)
    assert result.best_val_nll == min(result.val_nll)
    with pytest.raises(ValueError, match=r"length L in \[1, max_len=12\], got 13"):  # val_data is checked too
        fit(model, guide, (x, y), val_data=(torch.ones(4, 13, dtype=torch.long), y_val[:4]), num_epochs=1,
            progress=False)


def test_float64_forward_agrees_with_float32_and_scores_the_logits():
    """The same network in float64 and float32 (same factor means) agrees to float32 precision; every output and
    the categorical log-likelihood are float64."""
    x, y = keyword_sequences(5, length=7, seed=4)
    models = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        models[dtype] = LowRankTransformerClassifier(40, 3, **SMALL).to(dtype).eval()
    traces = {dtype: poutine.trace(poutine.condition(model, data=factor_initial_values(model))).get_trace(x, y)
              for dtype, model in models.items()}
    f64, f32 = (traces[dtype].nodes["_RETURN"]["value"] for dtype in (torch.float64, torch.float32))
    assert f64.dtype == torch.float64 and f64.shape == (5, 3) and f32.dtype == torch.float32
    torch.testing.assert_close(f64, f32.double(), rtol=1e-4, atol=1e-5)
    assert f64.std() > 1e-3  # not a degenerate (constant) output
    trace = traces[torch.float64]
    trace.compute_log_prob()
    expected = f64.log_softmax(-1).gather(-1, y[:, None]).sum()
    assert trace.nodes["obs"]["log_prob_sum"].dtype == torch.float64
    torch.testing.assert_close(trace.nodes["obs"]["log_prob_sum"], expected, rtol=1e-12, atol=1e-12)
