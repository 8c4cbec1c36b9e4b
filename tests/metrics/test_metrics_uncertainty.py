"""Predictive entropy, expected entropy, mutual information and the score selector."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_lowrank.metrics import (
    expected_entropy,
    mutual_information,
    predictive_entropy,
    uncertainty_score,
)


def _dirichlet_draws(num_draws, num_data, num_classes, concentration, seed):
    alpha = torch.full((num_classes,), concentration, dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        draws = torch.distributions.Dirichlet(alpha).sample((num_draws, num_data))
    return draws / draws.sum(-1, keepdim=True)


def test_entropies_and_mi_by_hand():
    # one example, two draws that disagree completely: H[pbar] = log 2, E H[p_s] = 0, MI = log 2
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert predictive_entropy(probs).tolist() == pytest.approx([math.log(2)])
    assert expected_entropy(probs).tolist() == [0.0]  # 0 log 0 = 0, no NaN
    assert mutual_information(probs).tolist() == pytest.approx([math.log(2)])
    # draws (.8,.2) and (.4,.6): pbar (.6,.4)
    probs = torch.tensor([[[0.8, 0.2]], [[0.4, 0.6]]], dtype=torch.float64)

    def h(*p):
        return -sum(x * math.log(x) for x in p)

    assert predictive_entropy(probs).item() == pytest.approx(h(0.6, 0.4))
    assert expected_entropy(probs).item() == pytest.approx((h(0.8, 0.2) + h(0.4, 0.6)) / 2)
    assert mutual_information(probs).item() == pytest.approx(h(0.6, 0.4) - (h(0.8, 0.2) + h(0.4, 0.6)) / 2)


@pytest.mark.parametrize("num_classes", [2, 3, 10, 1000])
def test_entropy_of_uniform_is_log_c(num_classes):
    probs = torch.full((3, 4, num_classes), 1.0 / num_classes)
    assert torch.allclose(predictive_entropy(probs), torch.full((4,), math.log(num_classes), dtype=torch.float64))
    assert torch.allclose(expected_entropy(probs), torch.full((4,), math.log(num_classes), dtype=torch.float64))
    assert torch.allclose(mutual_information(probs), torch.zeros(4, dtype=torch.float64), atol=1e-12)


@settings(derandomize=True, deadline=None, max_examples=40, database=None)
@given(
    num_draws=st.integers(1, 12),
    num_classes=st.integers(2, 8),
    concentration=st.sampled_from([0.01, 0.1, 1.0, 10.0, 1000.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_mi_is_non_negative_and_bounded(num_draws, num_classes, concentration, seed):
    probs = _dirichlet_draws(num_draws, 7, num_classes, concentration, seed).float()
    probs = probs / probs.sum(-1, keepdim=True)
    total, aleatoric, mi = predictive_entropy(probs), expected_entropy(probs), mutual_information(probs)
    assert (mi >= 0).all()
    assert (aleatoric <= total + 1e-12).all()
    assert (total <= math.log(num_classes) + 1e-9).all() and (aleatoric >= 0).all()
    assert (mi <= math.log(min(num_draws, num_classes)) + 1e-9).all()
    assert torch.allclose(mi, (total - aleatoric).clamp_min(0))
    if num_draws == 1:
        assert (mi == 0).all()


@settings(derandomize=True, deadline=None, max_examples=20, database=None)
@given(num_draws=st.integers(1, 50), num_classes=st.integers(2, 6), seed=st.integers(0, 2**31 - 1))
def test_mi_is_zero_when_draws_agree(num_draws, num_classes, seed):
    probs = _dirichlet_draws(1, 9, num_classes, 0.5, seed).expand(num_draws, 9, num_classes)
    assert torch.allclose(mutual_information(probs), torch.zeros(9, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(predictive_entropy(probs), expected_entropy(probs), atol=1e-12)


def test_uncertainty_score_dispatches_and_outputs_float64():
    probs = torch.softmax(torch.randn(5, 6, 3), -1)
    assert torch.equal(uncertainty_score(probs), mutual_information(probs))
    assert torch.equal(uncertainty_score(probs, "predictive_entropy"), predictive_entropy(probs))
    assert torch.equal(uncertainty_score(probs, "expected_entropy"), expected_entropy(probs))
    mp = uncertainty_score(probs, "max_probability")
    assert torch.allclose(mp, 1 - probs.double().mean(0).max(-1).values)
    assert mp.dtype == torch.float64 and mp.shape == (6,)
    hand = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])
    assert uncertainty_score(hand, "max_probability").item() == pytest.approx(0.3)


def test_unknown_score_lists_the_choices():
    with pytest.raises(ValueError, match=r"score must be one of .*mutual_information.*max_probability.*got 'mi'"):
        uncertainty_score(torch.full((1, 2, 2), 0.5), "mi")
