"""OOD and misclassification detection: AUROC, AUPR and the score ratio."""

import math

import pytest
import torch

from pyro_lowrank.metrics import (
    misclassification_detection,
    mutual_information,
    ood_detection,
    ood_detection_from_scores,
)


def _pairwise_auroc(neg, pos):
    """P(positive outranks negative) with ties counting one half, by brute force."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_perfectly_separated_scores():
    out = ood_detection_from_scores(torch.tensor([0.0, 0.1, 0.2]), torch.tensor([0.5, 0.6]))
    assert out["auroc"] == 1.0 and out["aupr_ood"] == 1.0 and out["aupr_in"] == 1.0
    assert out["score_ratio"] == pytest.approx(0.55 / 0.1)
    # reversed: OOD examples are the most certain ones
    out = ood_detection_from_scores(torch.tensor([0.5, 0.6]), torch.tensor([0.0, 0.1, 0.2]))
    assert out["auroc"] == 0.0 and out["score_ratio"] == pytest.approx(0.1 / 0.55)


def test_constant_scores_give_chance_level():
    out = ood_detection_from_scores(torch.zeros(30), torch.zeros(10))
    assert out["auroc"] == 0.5
    # average precision of a constant score is the prevalence of the positive class
    assert out["aupr_ood"] == pytest.approx(10 / 40) and out["aupr_in"] == pytest.approx(30 / 40)
    assert math.isnan(out["score_ratio"])


def test_score_ratio_limits():
    assert ood_detection_from_scores(torch.zeros(3), torch.tensor([0.0, 1.0]))["score_ratio"] == math.inf
    assert ood_detection_from_scores(torch.tensor([2.0, 4.0]), torch.tensor([6.0]))["score_ratio"] == 2.0


def test_auroc_matches_pairwise_definition_with_ties():
    gen = torch.Generator().manual_seed(0)
    scores_in = (torch.randn(200, generator=gen) * 2).round() / 2  # many ties
    scores_out = (torch.randn(150, generator=gen) * 2 + 1).round() / 2
    out = ood_detection_from_scores(scores_in, scores_out)
    assert out["auroc"] == pytest.approx(_pairwise_auroc(scores_in.double(), scores_out.double()))
    assert 0.5 < out["auroc"] < 1


def test_ood_detection_from_probs_uses_mutual_information():
    gen = torch.Generator().manual_seed(1)
    # in-distribution: draws agree (MI = 0); OOD: draws disagree (MI > 0)
    agree = torch.softmax(torch.randn(1, 40, 3, generator=gen), -1).expand(5, 40, 3)
    disagree = torch.softmax(4 * torch.randn(5, 20, 3, generator=gen), -1)
    out = ood_detection(agree, disagree)
    assert out["auroc"] == 1.0 and out["aupr_ood"] == 1.0 and out["aupr_in"] == 1.0
    assert out["score_ratio"] == math.inf or out["score_ratio"] > 1e6
    # same numbers as the precomputed-score route
    by_scores = ood_detection_from_scores(mutual_information(agree), mutual_information(disagree))
    assert by_scores["auroc"] == out["auroc"] and by_scores["aupr_ood"] == out["aupr_ood"]
    # other scores are accepted; predictive entropy makes the same detector comparable
    assert 0 <= ood_detection(agree, disagree, score="predictive_entropy")["auroc"] <= 1


def test_deterministic_network_is_at_chance():
    gen = torch.Generator().manual_seed(2)
    probs_in = torch.softmax(torch.randn(1, 50, 4, generator=gen), -1)
    probs_out = torch.softmax(torch.randn(1, 30, 4, generator=gen), -1)
    out = ood_detection(probs_in, probs_out)
    assert out["auroc"] == 0.5 and math.isnan(out["score_ratio"])


def test_ood_detection_requires_matching_classes():
    with pytest.raises(ValueError, match=r"probs_out must have the number of classes of probs_in \(3\)"):
        ood_detection(torch.full((2, 4, 3), 1 / 3), torch.full((2, 4, 2), 0.5))


def test_misclassification_detection_by_hand():
    # correct examples: draws agree on class 0; wrong examples: draws disagree and the mean picks class 1
    right = torch.tensor([[0.9, 0.1], [0.9, 0.1]]).unsqueeze(1).expand(2, 3, 2)
    wrong = torch.tensor([[0.6, 0.4], [0.0, 1.0]]).unsqueeze(1).expand(2, 2, 2)
    probs = torch.cat([right, wrong], 1)
    y = torch.zeros(5, dtype=torch.long)
    out = misclassification_detection(probs, y)
    assert out == {"auroc": 1.0, "aupr_err": 1.0, "aupr_succ": 1.0}
    # max_probability also ranks them: the wrong ones have confidence .7 < .9
    assert misclassification_detection(probs, y, score="max_probability")["auroc"] == 1.0


def test_misclassification_detection_matches_pairwise_auroc():
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(2 * torch.randn(6, 300, 3, generator=gen), -1)
    y = torch.randint(0, 3, (300,), generator=gen)
    wrong = probs.mean(0).argmax(-1) != y
    mi = mutual_information(probs)
    out = misclassification_detection(probs, y)
    assert out["auroc"] == pytest.approx(_pairwise_auroc(mi[~wrong], mi[wrong]))


@pytest.mark.parametrize("all_right", [True, False])
def test_misclassification_detection_is_nan_with_a_warning_without_both_outcomes(all_right):
    probs = torch.tensor([[[0.8, 0.2], [0.7, 0.3]]])
    y = torch.tensor([0, 0]) if all_right else torch.tensor([1, 1])
    with pytest.warns(RuntimeWarning, match=f"got {0 if all_right else 2} misclassified out of 2: returning NaN"):
        out = misclassification_detection(probs, y)
    assert set(out) == {"auroc", "aupr_err", "aupr_succ"} and all(math.isnan(v) for v in out.values())
