"""Rank scores, the gauge fix and rank pruning (LRVD)."""

import pyro
import pytest
import torch

from pyro_lowrank.distributions import LogUniformPrior
from pyro_lowrank.guides import (
    FactorGuide, LRVDGuide, effective_rank, effective_ranks, fix_gauge, prune_ranks, rank_log_alpha, removed_weight,
    replace_in_optimizer, resize_ranks,
)
from pyro_lowrank.models import LowRankMLP, LowRankRegression

M, N, R = 5, 7, 4


def _setup(seed=0, model=None):
    torch.manual_seed(seed)
    model = model if model is not None else LowRankRegression(N, M, R, noise_scale=0.5, prior=LogUniformPrior())
    guide = LRVDGuide(model)
    x = torch.randn(30, N)
    guide(x, torch.randn(30, M)) if isinstance(model, LowRankRegression) else guide(x, torch.randn(30))
    return model, guide, x


def _posterior_mean_f(model, guide, x):
    conditioned = pyro.poutine.condition(model, data=guide.median())
    return pyro.poutine.trace(conditioned).get_trace(x).nodes["f"]["value"]


def test_scores_are_the_mean_of_the_two_medians():
    model, guide, _ = _setup()
    with torch.no_grad():
        guide.log_variances.layer.A = torch.tensor([-6.0, -1.0, 0.5, -3.0])
    a, b = guide.locs.layer.A.detach(), guide.locs.layer.B.detach()
    expected = torch.stack([
        0.5 * ((guide.log_variance("layer.A").detach()[k] - torch.log(a[:, k] ** 2 + 1e-8)).median()
               + (guide.log_variance("layer.A").detach()[k] - torch.log(b[:, k] ** 2 + 1e-8)).median())
        for k in range(R)
    ])
    scores = rank_log_alpha(model.layer, guide)
    assert set(scores) == {"weight"}
    assert torch.allclose(scores["weight"], expected)
    tau = float(expected.detach().sort().values[2])
    assert effective_rank(model.layer, guide, tau) == 2
    assert effective_ranks(model, guide, tau) == {"layer.A": 2}


def test_gauge_fix_balances_columns_and_keeps_the_mean_weight_and_the_scores():
    model, guide, _ = _setup()
    with torch.no_grad():
        guide.locs.layer.A = guide.locs.layer.A * torch.tensor([10.0, 0.1, 3.0, 1.0])
    weight = guide.locs.layer.A @ guide.locs.layer.B.T
    scores = rank_log_alpha(model.layer, guide)["weight"]
    fix_gauge(guide)
    a, b = guide.locs.layer.A.detach(), guide.locs.layer.B.detach()
    assert torch.allclose(a.norm(dim=0), b.norm(dim=0), rtol=1e-5)
    assert torch.allclose(a @ b.T, weight.detach(), atol=1e-5)
    assert torch.allclose(rank_log_alpha(model.layer, guide)["weight"], scores, atol=1e-4)


def _make_prunable(guide, dead):
    """Give the components in ``dead`` tiny means (so their log alpha is large) and the others large ones."""
    with torch.no_grad():
        for name in ("A", "B"):
            loc = getattr(guide.locs.layer, name).clone()
            loc[:, dead] *= 1e-4
            setattr(guide.locs.layer, name, loc)


def test_prune_removes_exactly_the_high_alpha_components():
    model, guide, x = _setup()
    _make_prunable(guide, [1, 3])
    count = sum(p.numel() for p in guide.parameters())
    keep = torch.tensor([0, 2])
    removed = removed_weight(guide, "layer.A", keep)
    before = _posterior_mean_f(model, guide, x)
    result = prune_ranks(model, guide, tau=3.0)
    assert result.before == {"layer.A": 4} and result.after == {"layer.A": 2}
    assert torch.equal(result.kept["layer.A"], keep)
    assert result.removed_parameters == 2 * (M + N + 1)
    assert sum(p.numel() for p in guide.parameters()) == count - 2 * (M + N + 1)
    assert model.layer.rank == 2 and model.layer.a_init.shape == (M, 2) and model.layer.b_init.shape == (N, 2)
    after = _posterior_mean_f(model, guide, x)
    assert torch.allclose(after - before, -(x @ removed.T), atol=1e-5)  # exactly the removed components' part
    assert float((after - before).abs().max()) > 0
    trace = pyro.poutine.trace(guide).get_trace(x, None)
    assert trace.nodes["layer.A"]["value"].shape == (M, 2)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=trace)).get_trace(x)
    assert model_trace.nodes["layer.B"]["fn"].event_shape == (N, 2)


def test_pruning_nothing_changes_nothing_and_min_rank_keeps_the_best():
    model, guide, _ = _setup()
    result = prune_ranks(model, guide, tau=50.0)
    assert not result.changed and model.layer.rank == R
    with torch.no_grad():
        guide.log_variances.layer.A = torch.tensor([2.0, 1.0, 2.0, 0.0])
    scores = rank_log_alpha(model.layer, guide)["weight"]
    result = prune_ranks(model, guide, tau=-100.0, min_rank=2, gauge_fix=False)
    assert torch.equal(result.kept["layer.A"], torch.sort(torch.argsort(scores)[:2]).values)
    with pytest.raises(ValueError, match="min_rank"):
        prune_ranks(model, guide, min_rank=0)
    with pytest.raises(ValueError, match="tau"):
        prune_ranks(model, guide, tau=float("inf"))


def test_mlp_outputs_unchanged_when_the_removed_means_are_zero():
    model = LowRankMLP(N, [6], rank=4, output_rank=1, likelihood="gaussian", prior=LogUniformPrior())
    model, guide, x = _setup(model=model)
    with torch.no_grad():
        first = getattr(guide.locs.layers, "0")
        loc_a, loc_b = first.A.clone(), first.B.clone()
        loc_a[:, 2], loc_b[:, 2] = 0.0, 0.0
        first.A, first.B = loc_a, loc_b
    before = _posterior_mean_f(model, guide, x)
    result = prune_ranks(model, guide, tau=3.0)
    assert result.after["layers.0.A"] == 3 and model.ranks == (3, 1)
    assert torch.allclose(_posterior_mean_f(model, guide, x), before, atol=1e-6)


def test_optimizer_state_follows_the_kept_components():
    model, guide, x = _setup()
    _make_prunable(guide, [0])
    opt = torch.optim.Adam(guide.parameters(), lr=1e-6)
    loss = pyro.infer.TraceMeanField_ELBO()(model, guide)(x, torch.randn(30, M))
    loss.backward()
    opt.step()
    old = guide.locs.layer._parameters["A_unconstrained"]
    moment = opt.state[old]["exp_avg"].clone()
    result = prune_ranks(model, guide, tau=3.0, gauge_fix=False)
    replace_in_optimizer(opt, result.replaced)
    new = guide.locs.layer._parameters["A_unconstrained"]
    assert new is not old and new.shape == (M, 3)
    assert any(p is new for p in opt.param_groups[0]["params"])
    assert not any(p is old for p in opt.param_groups[0]["params"])
    assert torch.equal(opt.state[new]["exp_avg"], moment[:, 1:])
    assert old not in opt.state
    opt.zero_grad()
    pyro.infer.TraceMeanField_ELBO()(model, guide)(x, torch.randn(30, M)).backward()
    opt.step()  # the optimiser runs on the new parameters


def test_resize_ranks_gives_a_fresh_pair_the_checkpoint_shapes():
    model, guide, _ = _setup()
    resize_ranks(model, guide, {"layer.A": 2})
    assert model.layer.rank == 2 and guide.log_variance("layer.A").shape == (2,)
    with pytest.raises(ValueError, match="ranks"):
        resize_ranks(model, guide, {"layer.A": 3})
    with pytest.raises(ValueError, match="not a rank-wise"):
        resize_ranks(model, guide, {"nope.A": 1})


def test_scores_need_an_lrvd_guide_that_has_been_set_up():
    model = LowRankRegression(N, M, R, prior=LogUniformPrior())
    with pytest.raises(TypeError, match="LRVDGuide"):
        effective_rank(model.layer, FactorGuide(model))
    with pytest.raises(ValueError, match="set up"):
        effective_rank(model.layer, LRVDGuide(model))


def test_norm_score_uses_root_mean_square_entries_and_ignores_sparsity():
    model, guide, _ = _setup()
    with torch.no_grad():
        a = guide.locs.layer.A.clone()
        a[1:, 0] = 1e-6  # column 0 of A is sparse: one large entry, the rest ~0
        a[0, 0] = 3.0
        guide.locs.layer.A = a
    a, b = guide.locs.layer.A.detach(), guide.locs.layer.B.detach()
    log_var = guide.log_variance("layer.A").detach()
    expected = log_var - torch.log(a.norm(dim=0) * b.norm(dim=0) / (M * N) ** 0.5)
    norm = rank_log_alpha(model.layer, guide, score="norm")["weight"]
    median = rank_log_alpha(model.layer, guide)["weight"]
    assert torch.allclose(norm, expected, atol=1e-4)
    assert median[0] > norm[0] + 5  # the median score sees the near-zero entries, the norm score the column
    with torch.no_grad():
        guide.locs.layer.A = guide.locs.layer.A * 4.0
        guide.locs.layer.B = guide.locs.layer.B / 4.0
    assert torch.allclose(rank_log_alpha(model.layer, guide, score="norm")["weight"], norm, atol=1e-4)
    assert effective_rank(model.layer, guide, float(norm.max()) + 1, score="norm") == R
    with pytest.raises(ValueError, match="score"):
        rank_log_alpha(model.layer, guide, score="mean")


def test_adafactor_column_statistics_follow_the_kept_components():
    model, guide, x = _setup()
    _make_prunable(guide, [0])
    opt = torch.optim.Adafactor(guide.parameters(), lr=1e-6)
    pyro.infer.TraceMeanField_ELBO()(model, guide)(x, torch.randn(30, M)).backward()
    opt.step()
    old = guide.locs.layer._parameters["A_unconstrained"]
    col, row = opt.state[old]["col_var"].clone(), opt.state[old]["row_var"].clone()
    result = prune_ranks(model, guide, tau=3.0, gauge_fix=False)
    replace_in_optimizer(opt, result.replaced)
    new = guide.locs.layer._parameters["A_unconstrained"]
    assert torch.equal(opt.state[new]["col_var"], col[:, 1:]) and torch.equal(opt.state[new]["row_var"], row)
    opt.zero_grad()
    pyro.infer.TraceMeanField_ELBO()(model, guide)(x, torch.randn(30, M)).backward()
    opt.step()


def test_select_rank_components_rejects_masks_and_duplicates():
    model, _, _ = _setup()
    with pytest.raises(ValueError, match="integer"):
        model.layer.select_rank_components("weight", torch.tensor([True, False, True, True]))
    with pytest.raises(ValueError, match="distinct"):
        model.layer.select_rank_components("weight", torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="weight"):
        model.layer.select_rank_components("weight_ih", torch.tensor([0]))
    assert model.layer.rank == R


def test_pruning_an_lstm_updates_its_reported_ranks():
    from pyro_lowrank.nn import LowRankLSTM

    lstm = LowRankLSTM(3, 4, rank_ih=3, rank_hh=2, prior=LogUniformPrior(), batch_first=True)
    guide = LRVDGuide(lstm)
    guide(torch.randn(2, 5, 3))
    with torch.no_grad():
        loc = getattr(guide.locs.ih, "0").A.clone()
        loc[:, 0] = 0.0
        getattr(guide.locs.ih, "0").A = loc
    prune_ranks(lstm, guide, tau=3.0)
    assert lstm.rank_ih == (2,) and lstm.rank_hh == (2,)
    out = pyro.poutine.condition(lstm, data=guide.median())(torch.randn(2, 5, 3))[0]
    assert out.shape == (2, 5, 4)


def test_improper_prior_models_print_and_predict_in_float64():
    from pyro_lowrank.inference import predict

    model = LowRankRegression(N, M, R, prior=LogUniformPrior()).double()
    state = torch.random.get_rng_state()
    assert "rank=4" in repr(model) and model.layer.num_variational_parameters() == 2 * R * (M + N) + 2 * M
    assert torch.equal(torch.random.get_rng_state(), state)  # printing draws nothing
    guide = LRVDGuide(model)
    x = torch.randn(9, N, dtype=torch.float64)
    guide(x)
    assert predict(model, guide, x, num_samples=3)["f"].dtype == torch.float64
    with pytest.raises(NotImplementedError, match="improper"):
        pyro.infer.Predictive(model, guide=guide, num_samples=2)(x)  # Pyro's Predictive traces the prior
