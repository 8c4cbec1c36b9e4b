"""Validation early stopping of the torch-trained networks (``fit_deterministic`` and the methods built on it)."""

import math

import pytest
import torch
import torch.nn.functional as F

import pyro_lowrank.inference.methods.swag  # noqa: F401  (registers "swag")
from pyro_lowrank.inference.deterministic import LOSSES, fit_deterministic, train_deterministic, validation_loss
from pyro_lowrank.inference.methods import make_method
from pyro_lowrank.models import DeterministicMLP

try:
    import laplace  # noqa: F401

    import pyro_lowrank.inference.methods.laplace  # noqa: F401  (registers "laplace", "laplace_full")
    HAS_LAPLACE = True
except ImportError:  # pragma: no cover - laplace-torch is an optional extra
    HAS_LAPLACE = False
needs_laplace = pytest.mark.skipif(not HAS_LAPLACE, reason="needs laplace-torch")


def overfit_task(seed=0):
    """Few noisy training points (30 % flipped labels) and a clean validation set: a wide net memorises the noise."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.2]])

    def draw(n, flip):
        y = torch.arange(n) % 3
        x = centres[y] + 0.6 * torch.randn(n, 2, generator=gen)
        noisy = torch.rand(n, generator=gen) < flip
        return x, torch.where(noisy, torch.randint(0, 3, (n,), generator=gen), y)

    return draw(24, 0.3), draw(150, 0.0)


SETTINGS = dict(num_epochs=150, batch_size=8, lr=1e-2, seed=0, progress=False)


def make_net(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return DeterministicMLP(2, [64, 64], 3).to(dtype)


def as64(data):
    return data[0].double(), data[1]


def legacy_train(net, data, *, num_epochs, batch_size, lr, seed, loss_fn):
    """The loop of ``train_deterministic`` before early stopping existed (the reference for 'unchanged')."""
    x, y = data
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(num_epochs):
        perm = torch.randperm(x.shape[0], generator=generator)
        for begin in range(0, x.shape[0], batch_size):
            index = perm[begin : begin + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x[index]), y[index]).backward()
            opt.step()
    net.eval()


def test_without_val_data_training_is_unchanged():
    train, _ = map(as64, overfit_task())
    reference, net = make_net(), make_net()
    legacy_train(reference, train, num_epochs=20, batch_size=8, lr=1e-2, seed=0, loss_fn=LOSSES["categorical"])
    result = fit_deterministic(net, train, **{**SETTINGS, "num_epochs": 20})
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert result.epochs_run == 20 and result.val_loss == [] and result.best_epoch is None
    assert not result.stopped_early and not net.training


def test_early_stopping_stops_and_restores_the_best_epoch():
    train, val = map(as64, overfit_task())
    full_net, stopped_net, plain_net = make_net(), make_net(), make_net()
    full = fit_deterministic(full_net, train, val_data=val, **SETTINGS)  # no patience: full length, best restored
    stopped = fit_deterministic(stopped_net, train, val_data=val, patience=5, **SETTINGS)
    fit_deterministic(plain_net, train, **SETTINGS)  # no validation at all
    # the task overfits: the validation NLL at the end is far above its minimum
    assert full.epochs_run == 150 and full.val_loss[-1] > full.best_val_loss + 0.2
    assert stopped.stopped_early and stopped.epochs_run < 150
    assert stopped.epochs_run == stopped.best_epoch + 1 + 5
    # the evaluation consumes no randomness: the stopped run follows the full run's trajectory
    torch.testing.assert_close(torch.tensor(stopped.val_loss), torch.tensor(full.val_loss[: stopped.epochs_run]))
    assert stopped.best_val_loss == min(stopped.val_loss) == stopped.val_loss[stopped.best_epoch]
    # restored state = best epoch: recomputing the validation loss gives the recorded minimum (eval mode, no dropout)
    assert math.isclose(validation_loss(stopped_net, val), stopped.best_val_loss, rel_tol=1e-12)
    assert math.isclose(validation_loss(full_net, val), full.best_val_loss, rel_tol=1e-12)
    # the no-validation run ends at the last epoch of the full trajectory, which is worse
    final_nll = validation_loss(plain_net, val)
    assert math.isclose(final_nll, full.val_loss[-1], rel_tol=1e-9)
    assert validation_loss(stopped_net, val) <= final_nll - 0.2
    with torch.no_grad():
        direct = F.cross_entropy(stopped_net(val[0]), val[1]).item()
    assert math.isclose(direct, stopped.best_val_loss, rel_tol=1e-12)


def test_gaussian_validation_loss_is_the_training_mse_and_seconds_are_returned():
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, 12, dtype=torch.float64).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.4 * torch.randn(12, generator=gen, dtype=torch.float64)
    x_val = torch.linspace(-2, 2, 100, dtype=torch.float64).unsqueeze(-1)
    val = (x_val, torch.sin(2 * x_val[:, 0]))
    torch.manual_seed(0)
    net = DeterministicMLP(1, [64, 64], 1).to(torch.float64)
    result = fit_deterministic(net, (x, y), likelihood="gaussian", val_data=val, patience=10,
                               **{**SETTINGS, "num_epochs": 400})
    with torch.no_grad():
        mse = F.mse_loss(net(x_val).squeeze(-1), val[1]).item()
    assert math.isclose(mse, result.best_val_loss, rel_tol=1e-12) and result.epochs_run < 400
    torch.manual_seed(0)
    seconds = train_deterministic(DeterministicMLP(1, [4], 1).double(), (x, y), likelihood="gaussian",
                                  val_data=val, patience=2, **{**SETTINGS, "num_epochs": 3})
    assert isinstance(seconds, float) and seconds > 0


def test_bad_arguments_are_refused():
    train, val = overfit_task()
    net = DeterministicMLP(2, [4], 3)
    with pytest.raises(ValueError, match="patience needs val_data"):
        fit_deterministic(net, train, patience=3, **SETTINGS)
    with pytest.raises(ValueError, match="patience must be a positive integer, got 0"):
        fit_deterministic(net, train, val_data=val, patience=0, **SETTINGS)
    with pytest.raises(ValueError, match="val_data: x and y must have the same"):
        fit_deterministic(net, train, val_data=(val[0], val[1][:3]), patience=2, **SETTINGS)
    with pytest.raises(ValueError, match="patience must be a positive integer, got 0"):
        make_method("deterministic", in_features=2, hidden_features=[4], num_classes=3, patience=0)


ARCH = dict(in_features=2, hidden_features=[64, 64], num_classes=3, batch_size=8, lr=1e-2, seed=0, num_epochs=100)
METHODS = {
    "deterministic": {},
    "ensemble": {"num_members": 2},
    "mc_dropout": {"dropout": 0.1, "weight_decay": 0.0},
    "swag": {"swag_epochs": 3, "swag_lr": 1e-3, "max_rank": 2},
    "laplace": {"grid_size": 4},
}
NAMES = [pytest.param(n, marks=needs_laplace) if n.startswith("laplace") else n for n in METHODS]


def trained(method):
    """(network, training record) pairs of a fitted torch-trained method."""
    if hasattr(method, "fit_results"):
        return list(zip(method.networks, method.fit_results))
    if hasattr(method, "pretrain_result"):
        return [(None, method.pretrain_result)]  # the network now holds the SWA mean
    return [(method.network, method.fit_result)]


def learned_state(method):
    """Every tensor a fitted method learned (SWAG: its statistics and the network at the SWA mean)."""
    modules = [method.swag] if method.name == "swag" else getattr(method, "networks", None) or [method.network]
    return [t for module in modules for t in module.state_dict().values()]


@pytest.mark.filterwarnings("ignore:LaplaceApproximation:UserWarning")  # marglik fallback of the runs without val
@pytest.mark.parametrize("name", NAMES)
def test_methods_accept_patience_and_stop_early(name):
    train, val = overfit_task()
    stopped = make_method(name, **ARCH, **METHODS[name], patience=4).fit(train, val)
    assert stopped.patience == 4
    for net, result in trained(stopped):
        assert result.stopped_early and result.epochs_run < ARCH["num_epochs"]
        assert result.best_val_loss < result.val_loss[-1]
        if net is not None:  # the restored state is the best epoch's
            assert math.isclose(validation_loss(net, val), result.best_val_loss, rel_tol=1e-5)
    if name == "swag":  # the collection phase still runs its configured epochs
        assert stopped.swag.num_collected == 3
    # no validation data: patience is ignored and the networks are those of a run without it (same seed)
    with_patience = make_method(name, **ARCH, **METHODS[name], patience=4).fit(train)
    without = make_method(name, **ARCH, **METHODS[name]).fit(train)
    for (net_a, result_a), (net_b, result_b) in zip(trained(with_patience), trained(without)):
        assert result_a.epochs_run == result_b.epochs_run == ARCH["num_epochs"] and result_a.val_loss == []
    for p, q in zip(learned_state(with_patience), learned_state(without), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    if name in ("deterministic", "ensemble", "mc_dropout"):  # the members' validation NLL is no worse
        for (net_s, _), (net_f, _) in zip(trained(stopped), trained(without)):
            assert validation_loss(net_s, val) <= validation_loss(net_f, val)


def test_pyro_methods_still_take_patience_from_the_base_class():
    train, val = overfit_task()
    method = make_method("lowrank", in_features=2, hidden_features=[8], num_classes=3, rank=2, num_epochs=40,
                         batch_size=8, lr=2e-2, patience=2)
    assert method.patience == 2
    method.fit(train, val)
    assert method.fit_result.best_epoch is not None
    assert method.fit_result.epochs_run <= 40


def test_lowrank_svd_twin_stops_on_the_validation_data():
    """LR-SVD's deterministic twin overfits like the deterministic baseline unless it, too, keeps its best
    validation epoch: with val and patience its training stops early."""
    import pyro_lowrank.inference.methods.lowrank as lowrank_module

    calls = []
    original = lowrank_module.train_deterministic

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    train, val = overfit_task()
    method = make_method("lowrank_svd", in_features=2, hidden_features=[16], num_classes=3, num_epochs=30,
                         rank=2, patience=3, seed=0)
    lowrank_module.train_deterministic = spy
    try:
        method.fit(train, val)
    finally:
        lowrank_module.train_deterministic = original
    assert calls and calls[0]["patience"] == 3
    assert torch.equal(calls[0]["val_data"][0], val[0]) and torch.equal(calls[0]["val_data"][1], val[1])


def test_ensembles_of_different_seeds_share_no_member():
    """Member m of seed s uses seed s * M + m: seeds 0 and 1 train ten different networks."""
    train, _ = overfit_task()
    weights = []
    for seed in (0, 1):
        method = make_method("ensemble", in_features=2, hidden_features=[8], num_classes=3, num_epochs=2,
                             num_members=3, seed=seed)
        method.fit(train)
        weights.append([net.layers[0].weight.detach().clone() for net in method.networks])
    for first in weights[0]:
        assert not any(torch.equal(first, second) for second in weights[1])
