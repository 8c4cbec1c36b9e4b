import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroParam
from pyro.infer import TraceMeanField_ELBO

import pyro_lowrank  # noqa: F401
from pyro_lowrank import TrainingDivergedError
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.inference import KLWeight, fit, linear_kl_schedule, load_checkpoint, save_checkpoint
from pyro_lowrank.inference.predict import log_predictive_density, predict
from pyro_lowrank.models import LowRankMLP


def _blobs(n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.5]])
    x = centres[y] + 0.6 * torch.randn(n, 2, generator=gen)
    return x, y


def _model():
    return LowRankMLP(2, [16], rank=2, output_rank=2, likelihood="categorical", num_classes=3)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_fit_learns_a_classifier_that_beats_chance():
    x, y = _blobs()
    pyro.set_rng_seed(0)
    model = _model()
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), num_epochs=30, batch_size=32, lr=1e-2, seed=0, progress=False)
    assert result.epochs_run == 30 and result.steps == 30 * math.ceil(200 / 32)
    assert result.train_loss[-1] < result.train_loss[0]
    x_test, y_test = _blobs(300, seed=1)
    probs = torch.softmax(predict(model, guide, x_test, 32)["f"], -1)
    acc = (probs.mean(0).argmax(-1) == y_test).float().mean()
    assert acc > 0.9  # chance is 1/3


def test_fit_regression_beats_the_mean_predictor():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, generator=gen) * 6 - 3
    y = torch.sin(x.squeeze(-1)) + 0.1 * torch.randn(256, generator=gen)
    pyro.set_rng_seed(0)
    model = LowRankMLP(1, [32], rank=1, likelihood="gaussian", noise_scale=0.1)
    guide = FactorGuide(model)
    fit(model, guide, (x, y), num_epochs=150, batch_size=64, lr=1e-2, kl_weight=0.1, seed=0, progress=False)
    mean = predict(model, guide, x, 32)["f"].mean(0)
    assert ((mean - y) ** 2).mean() < 0.3 * y.var()


def test_interrupted_and_resumed_fit_equals_uninterrupted(tmp_path):
    x, y = _blobs(120)
    val = _blobs(60, seed=5)
    kwargs = dict(val_data=val, num_epochs=6, batch_size=32, lr=1e-2, kl_anneal_epochs=2, seed=11, progress=False)

    pyro.set_rng_seed(0)
    model, guide = _model(), None
    guide = FactorGuide(model)
    full = fit(model, guide, (x, y), **kwargs)
    reference = _state(guide)

    class Interrupt(Exception):
        pass

    def stop_after_third(epoch, record):
        if epoch == 2:
            raise Interrupt

    path = tmp_path / "ckpt.pt"
    pyro.set_rng_seed(0)
    model = _model()
    guide = FactorGuide(model)
    with pytest.raises(Interrupt):
        fit(model, guide, (x, y), checkpoint_path=path, callback=stop_after_third, **kwargs)
    assert load_checkpoint(path)["result"]["epochs_run"] == 3

    pyro.set_rng_seed(123)  # a different process state: everything must come from the checkpoint
    model = _model()
    guide = FactorGuide(model)
    resumed = fit(model, guide, (x, y), checkpoint_path=path, resume=True, **kwargs)
    for key, value in reference.items():
        assert torch.equal(guide.state_dict()[key], value), key
    assert resumed.train_loss == full.train_loss and resumed.val_nll == full.val_nll
    assert resumed.best_epoch == full.best_epoch and resumed.steps == full.steps


def test_resume_refuses_a_checkpoint_of_other_data(tmp_path):
    x, y = _blobs(64)
    path = tmp_path / "c.pt"
    model = _model()
    fit(model, FactorGuide(model), (x, y), num_epochs=1, checkpoint_path=path, progress=False)
    model = _model()
    with pytest.raises(ValueError, match="num_data=64, got 32"):
        fit(model, FactorGuide(model), (x[:32], y[:32]), num_epochs=2, checkpoint_path=path, resume=True,
            progress=False)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"value": torch.tensor(1.0)}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"value": torch.tensor(2.0)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["value"] == 1.0
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


class _Exploding(PyroModule):
    """y ~ N(w x, 1) whose log-likelihood overflows to -inf from the 7th call on."""

    def __init__(self):
        super().__init__()
        self.w = PyroParam(torch.tensor(0.5))
        self.calls = 0

    def forward(self, x, y=None, num_data=None):
        self.calls += 1
        loc = self.w * x
        if self.calls > 6:
            loc = loc * 1e30  # (y - loc)^2 overflows float32: the ELBO is inf
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=y)


def test_non_finite_elbo_restores_last_finite_state_and_raises():
    model = _Exploding()
    guide = lambda *args, **kwargs: None  # noqa: E731  (no latents)
    guide_module = PyroModule()
    guide_module.forward = guide
    x = torch.linspace(-1, 1, 8)
    y = 2 * x
    states = []
    with pytest.raises(TrainingDivergedError, match="non-finite") as info:
        fit(model, guide_module, (x, y), num_epochs=10, batch_size=4, lr=0.1, progress=False,
            callback=lambda epoch, record: states.append(model.w.detach().clone()))
    # calls: 1 warm-up, then 2 steps per epoch; the 6th call is epoch 2's first step, the 7th diverges
    assert info.value.epoch == 2 and info.value.step == 5
    assert torch.equal(model.w.detach(), states[-1])
    assert torch.isfinite(model.w)


@pytest.mark.parametrize("bad, name", [("x", "data\\[0\\] \\(x\\)"), ("y", "data\\[1\\] \\(y\\)")])
def test_nan_or_inf_training_data_is_refused(bad, name):
    x, y = torch.randn(10, 1), torch.randn(10)
    if bad == "x":
        x[3, 0] = float("nan")
    else:
        y[2] = float("inf")
    model = LowRankMLP(1, [4], rank=1, likelihood="gaussian")
    with pytest.raises(ValueError, match=f"{name} must contain only finite values, got"):
        fit(model, FactorGuide(model), (x, y), num_epochs=1, progress=False)


def test_argument_errors():
    x, y = _blobs(20)
    model = _model()
    guide = FactorGuide(model)
    with pytest.raises(ValueError, match="patience needs val_data"):
        fit(model, guide, (x, y), patience=2, progress=False)
    with pytest.raises(ValueError, match="same non-zero number of rows"):
        fit(model, guide, (x, y[:5]), progress=False)
    with pytest.raises(ValueError, match="num_epochs must be a positive integer"):
        fit(model, guide, (x, y), num_epochs=0, progress=False)
    with pytest.raises(ValueError, match="kl_weight must be finite and >= 0, got -1.0"):
        fit(model, guide, (x, y), kl_weight=-1.0, progress=False)
    with pytest.raises(ValueError, match="kl_anneal_epochs must be finite and >= 0, got -3"):
        fit(model, guide, (x, y), kl_anneal_epochs=-3, progress=False)
    with pytest.raises(ValueError, match="num_particles must be a positive integer, got 0"):
        fit(model, guide, (x, y), num_particles=0, progress=False)
    with pytest.raises(ValueError, match="patience must be a positive integer, got 0"):
        fit(model, guide, (x, y), val_data=(x, y), patience=0, progress=False)
    with pytest.raises(ValueError, match="clip_grad_norm must be > 0 .* got -1"):
        fit(model, guide, (x, y), clip_grad_norm=-1, progress=False)
    with pytest.raises(ValueError, match="y must hold integer class labels in \\[0, 3\\)"):
        fit(model, guide, (x, y + 5), progress=False)


def test_kl_weight_scales_only_the_kl_term():
    x, y = _blobs(40)
    model = _model()
    guide = FactorGuide(model)
    loss_fn = TraceMeanField_ELBO(max_plate_nesting=1)(model, guide)

    def loss_at(beta):
        pyro.set_rng_seed(7)
        with KLWeight(beta):
            return float(loss_fn(x, y).detach())

    l0, l1, lh = loss_at(0.0), loss_at(1.0), loss_at(0.5)
    assert lh == pytest.approx(0.5 * (l0 + l1), rel=1e-5)
    assert l1 > l0  # the KL is positive
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        KLWeight(-0.1)


def test_linear_kl_schedule():
    assert linear_kl_schedule(0, 1.0, 0) == 1.0
    assert linear_kl_schedule(0, 2.0, 4) == 0.5
    assert linear_kl_schedule(3, 2.0, 4) == 2.0
    assert linear_kl_schedule(100, 2.0, 4) == 2.0


def test_early_stopping_restores_the_best_epoch():
    x, y = _blobs(100)
    x_val, y_val = _blobs(100, seed=3)
    y_val = (y_val + 1) % 3  # validation labels contradict training: the val NLL gets worse as training proceeds
    pyro.set_rng_seed(0)
    model = _model()
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), val_data=(x_val, y_val), patience=2, num_epochs=50, lr=3e-2,
                 batch_size=25, seed=0, progress=False, val_num_samples=64)
    assert result.stopped_early and result.epochs_run < 50
    assert result.best_epoch == min(range(len(result.val_nll)), key=result.val_nll.__getitem__)
    assert result.epochs_run == result.best_epoch + 1 + 2
    pyro.set_rng_seed(99)
    restored = float(-log_predictive_density(model, guide, x_val, y_val, 2000).mean())
    assert restored == pytest.approx(result.best_val_nll, abs=0.15)


class _InvalidAfter(PyroModule):
    """A likelihood whose scale becomes negative (Pyro's validation raises ValueError) from call ``after`` on."""

    def __init__(self, after):
        super().__init__()
        self.w = PyroParam(torch.tensor(0.5))
        self.calls, self.after = 0, after

    def forward(self, x, y=None, num_data=None):
        self.calls += 1
        scale = -1.0 if self.calls > self.after else 1.0
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("obs", dist.Normal(self.w * x, scale), obs=y)


def _no_latents():
    guide = PyroModule()
    guide.forward = lambda *args, **kwargs: None
    return guide


def test_validation_error_after_training_started_is_divergence():
    model = _InvalidAfter(after=4)  # warm-up + 3 steps are fine
    x = torch.linspace(-1, 1, 8)
    with pytest.raises(TrainingDivergedError, match="restored the state at the end of epoch 0") as info:
        fit(model, _no_latents(), (x, 2 * x), num_epochs=5, batch_size=4, lr=0.1, progress=False)
    assert isinstance(info.value.__cause__, ValueError)


def test_validation_error_before_any_step_is_a_plain_error():
    model = _InvalidAfter(after=1)  # only the warm-up call is fine
    x = torch.linspace(-1, 1, 8)
    with pytest.raises(ValueError, match="scale"):
        fit(model, _no_latents(), (x, 2 * x), num_epochs=2, batch_size=4, progress=False)


def test_a_step_to_non_finite_parameters_is_never_snapshotted():
    model = _Exploding()
    model.calls = -10**9  # never NaN by itself: the optimiser makes the parameter infinite instead
    x = torch.linspace(-1, 1, 8)
    huge = lambda params: torch.optim.SGD(params, lr=1e38)  # noqa: E731
    with pytest.raises(TrainingDivergedError, match="restored the initial state"):
        fit(model, _no_latents(), (x, 2 * x), num_epochs=3, batch_size=8, optimizer=huge, progress=False)
    assert torch.isfinite(model.w) and float(model.w.detach()) == 0.5


def test_resume_after_early_stopping_does_not_train_further(tmp_path):
    x, y = _blobs(100)
    x_val, y_val = _blobs(100, seed=3)
    y_val = (y_val + 1) % 3
    kwargs = dict(val_data=(x_val, y_val), patience=2, num_epochs=50, lr=3e-2, batch_size=25, seed=0,
                  progress=False, checkpoint_path=tmp_path / "c.pt")
    model = _model()
    guide = FactorGuide(model)
    first = fit(model, guide, (x, y), **kwargs)
    assert first.stopped_early
    model2 = _model()
    guide2 = FactorGuide(model2)
    second = fit(model2, guide2, (x, y), resume=True, **kwargs)
    assert second.epochs_run == first.epochs_run and second.steps == first.steps and second.stopped_early
    for key, value in guide.state_dict().items():
        assert torch.equal(guide2.state_dict()[key], value), key


def test_resume_after_a_callback_stop_does_not_train_further(tmp_path):
    x, y = _blobs(60)
    kwargs = dict(num_epochs=10, batch_size=20, seed=0, progress=False, checkpoint_path=tmp_path / "c.pt")
    model = _model()
    first = fit(model, FactorGuide(model), (x, y), callback=lambda epoch, record: epoch == 1, **kwargs)
    assert first.stopped_early and first.epochs_run == 2
    model2 = _model()
    second = fit(model2, FactorGuide(model2), (x, y), resume=True, **kwargs)
    assert second.epochs_run == 2 and second.stopped_early
