"""The compiled ELBO: the same loss and gradients as Pyro's eager TraceMeanField_ELBO, compiled once per signature."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample

import pyro_lowrank  # noqa: F401
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.inference import JitTraceMeanField_ELBO, KLWeight, fit
from pyro_lowrank.inference.predict import predict
from pyro_lowrank.models import LowRankMLP


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen)
    y = (x[:, 0] - x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _pair(**kwargs):
    model = LowRankMLP(5, [12, 12], rank=3, output_rank=3, num_classes=3)
    return model, FactorGuide(model)


def _same_draws(loss_a, loss_b, *args, **kwargs):
    torch.manual_seed(123)
    a = loss_a(*args, **kwargs)
    torch.manual_seed(123)
    b = loss_b(*args, **kwargs)
    return a, b


@pytest.mark.parametrize("num_particles,vectorize", [(1, False), (3, True)])
def test_loss_and_gradients_equal_the_eager_elbo_from_the_same_random_state(num_particles, vectorize):
    x, y = _data()
    model, guide = _pair()
    options = dict(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=1)
    jit_loss = JitTraceMeanField_ELBO(**options)(model, guide)
    eager_loss = TraceMeanField_ELBO(**options)(model, guide)
    jit_loss(x, y, num_data=640)  # compile
    a, b = _same_draws(jit_loss, eager_loss, x, y, num_data=640)
    assert torch.allclose(a, b, rtol=1e-5)
    grads_a = torch.autograd.grad(a, list(jit_loss.parameters()))
    grads_b = torch.autograd.grad(b, list(eager_loss.parameters()))
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)


def test_sequential_particles_agree_with_the_eager_elbo_in_distribution():
    # With several sequential particles TorchScript's optimiser may reorder the independent particles' random draws,
    # so the two are different random streams of the same estimator: compare means within Monte Carlo error.
    x, y = _data()
    model, guide = _pair()
    options = dict(num_particles=2, vectorize_particles=False, max_plate_nesting=1)
    jit_loss = JitTraceMeanField_ELBO(**options)(model, guide)
    eager_loss = TraceMeanField_ELBO(**options)(model, guide)
    with torch.no_grad():
        a = torch.stack([jit_loss(x, y, num_data=640) for _ in range(300)])
        b = torch.stack([eager_loss(x, y, num_data=640) for _ in range(300)])
    se = math.sqrt(a.var() / 300 + b.var() / 300)
    assert abs(float(a.mean() - b.mean())) < 4 * se
    assert 0.7 < float(a.std() / b.std()) < 1.4


def test_kl_weight_is_an_input_of_the_graph_so_annealing_never_retraces():
    x, y = _data()
    model, guide = _pair()
    elbo = JitTraceMeanField_ELBO(max_plate_nesting=1)
    jit_loss, eager_loss = elbo(model, guide), TraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    for beta in (1.0, 0.25, 0.0, 0.7):
        with KLWeight(beta):
            a, b = _same_draws(jit_loss, eager_loss, x, y, num_data=640)
        assert torch.allclose(a, b, rtol=1e-5), beta
    assert len(elbo._traced) == 1
    # beta = 0 removes exactly the KL term: the difference of two losses from the same draws is beta * KL
    with KLWeight(0.0):
        torch.manual_seed(5)
        no_kl = jit_loss(x, y, num_data=640)
    torch.manual_seed(5)
    full = jit_loss(x, y, num_data=640)
    with KLWeight(0.5):
        torch.manual_seed(5)
        half = jit_loss(x, y, num_data=640)
    assert torch.allclose(half - no_kl, 0.5 * (full - no_kl), rtol=1e-4)


def test_compiles_once_per_signature_and_again_for_a_new_batch_shape_or_num_data():
    x, y = _data()
    model, guide = _pair()
    elbo = JitTraceMeanField_ELBO(max_plate_nesting=1)
    loss = elbo(model, guide)
    for _ in range(3):
        loss(x[:16], y[:16], num_data=64)
    assert len(elbo._traced) == 1
    loss(x[:10], y[:10], num_data=64)  # the last, smaller minibatch of an epoch
    loss(x[:16], y[:16], num_data=100)
    assert len(elbo._traced) == 3


def test_works_with_autonormal_and_a_lazy_guide():
    x, y = _data()
    model = LowRankMLP(5, [12], rank=3, output_rank=3, num_classes=3)
    guide = AutoNormal(model)  # parameters are created by the first call
    jit_loss = JitTraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    jit_loss(x, y, num_data=64)
    eager_loss = TraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    a, b = _same_draws(jit_loss, eager_loss, x, y, num_data=64)
    assert torch.allclose(a, b, rtol=1e-5)
    assert torch.autograd.grad(a, list(jit_loss.parameters()))[0].abs().sum() > 0


def test_fit_with_the_compiled_elbo_matches_fit_with_the_eager_one():
    x, y = _data(256)
    results = {}
    for name, elbo in (("eager", TraceMeanField_ELBO(max_plate_nesting=1)),
                       ("jit", JitTraceMeanField_ELBO(max_plate_nesting=1))):
        pyro.set_rng_seed(0)
        model, guide = _pair()
        fit(model, guide, (x, y), num_epochs=3, batch_size=64, lr=1e-2, seed=0, progress=False, elbo=elbo,
            kl_anneal_epochs=2)
        results[name] = {k: v.detach().clone() for k, v in guide.state_dict().items()}
    for key, value in results["eager"].items():
        assert torch.allclose(value, results["jit"][key], rtol=1e-3, atol=1e-5), key


class _Branchy(PyroModule):
    """A model with a Python branch on a tensor value, frozen by tracing: on the data or on the sampled weights."""

    def __init__(self, on_data: bool):
        super().__init__()
        self.on_data = on_data
        self.w = PyroSample(dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    def forward(self, x, y=None):
        f = x @ self.w
        if bool((x if self.on_data else f).sum() > 0):
            f = f * 10.0
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(f, 1.0), obs=y)


def test_check_trace_refuses_a_model_that_branches_on_a_sampled_value():
    model = _Branchy(on_data=False)
    guide = FactorGuide(model, init_loc_fn=lambda site: torch.zeros(3))
    loss = JitTraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    x = torch.ones(4, 3)
    loss_fn = lambda: loss(x, torch.zeros(4))  # noqa: E731
    with torch.no_grad():  # find a random state whose trace takes the other branch than the checking replay
        for seed in range(20):
            torch.manual_seed(seed)
            try:
                loss_fn()
            except RuntimeError as error:
                assert "not traceable" in str(error)
                return
            loss.elbo._traced.clear()
    pytest.fail("the check never caught the frozen branch")


def test_refuses_non_module_models_with_a_clear_error():
    def model(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(TypeError, match="model to be an nn.Module"):
        JitTraceMeanField_ELBO().differentiable_loss(model, guide, torch.zeros(1))


def _global_store_model(scale):
    """A model whose only parameter lives in the global param store (named after ``scale``)."""

    def model(x):
        loc = pyro.param(f"loc{scale}", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc, scale), obs=x)

    return model


def _empty_guide(x):
    pass


def test_workaround_for_pyros_retrace_on_every_call_with_the_global_param_store():
    model, guide = _global_store_model(1.0), _empty_guide
    x = torch.randn(10)
    with pyro.settings.context(module_local_params=False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo = JitTraceMeanField_ELBO()
        values = [float(elbo.differentiable_loss(model, guide, x)) for _ in range(3)]
        compiled = elbo._differentiable_loss
        elbo.differentiable_loss(model, guide, x)
        assert elbo._differentiable_loss is compiled  # pyro 1.9.2 alone builds a new one on every call
        assert len(compiled.compiled) == 1
    expected = -float(dist.Normal(0.0, 1.0).log_prob(x).sum())
    assert all(math.isclose(v, expected, rel_tol=1e-5) for v in values)


def test_prediction_after_jit_training_uses_the_trained_guide():
    x, y = _data(256)
    pyro.set_rng_seed(0)
    model, guide = _pair()
    fit(model, guide, (x, y), num_epochs=20, batch_size=64, lr=2e-2, seed=0, progress=False,
        elbo=JitTraceMeanField_ELBO(max_plate_nesting=1))
    probs = torch.softmax(predict(model, guide, x, 16)["f"], -1).mean(0)
    assert (probs.argmax(-1) == y).float().mean() > 0.8


def test_the_second_call_catches_a_branch_on_the_data():
    model = _Branchy(on_data=True)
    guide = FactorGuide(model, init_loc_fn=lambda site: torch.ones(3))
    loss = JitTraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    loss(torch.ones(4, 3), torch.zeros(4))  # compiled on a batch that takes the branch
    with pytest.raises(RuntimeError, match="not traceable"):
        loss(-torch.ones(4, 3), torch.zeros(4))  # the second batch does not


def test_tensor_keyword_arguments_are_inputs_not_constants():
    x, y = _data()
    model, guide = _pair()
    loss = JitTraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    loss(x, y=y, num_data=64)
    torch.manual_seed(0)
    a = loss(x, y=y, num_data=64)
    torch.manual_seed(0)
    b = loss(x, y=(y + 1) % 3, num_data=64)
    assert not torch.allclose(a, b)
    with pytest.raises(TypeError, match="positional argument 0 is a tuple holding tensors"):
        loss((x,), y, num_data=64)


def test_enclosing_handlers_other_than_klweight_are_refused():
    from pyro import poutine

    x, y = _data()
    model, guide = _pair()
    loss = JitTraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    loss(x, y, num_data=64)
    with pytest.raises(RuntimeError, match="cannot apply the enclosing Pyro handlers"):
        with poutine.scale(scale=0.01):
            loss(x, y, num_data=64)


def test_switching_to_eval_mode_retraces():
    x, y = _data()
    model, guide = _pair()
    elbo = JitTraceMeanField_ELBO(max_plate_nesting=1)
    loss = elbo(model, guide)
    loss(x, y, num_data=64)
    model.layers[0].eval()  # a submodule's flag counts, not only the top-level one
    loss(x, y, num_data=64)
    assert len(elbo._traced) == 2


def test_global_store_path_keeps_one_compiled_loss_per_model_and_refuses_kl_weights():
    make, guide = _global_store_model, _empty_guide
    x = torch.randn(10)
    with pyro.settings.context(module_local_params=False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo = JitTraceMeanField_ELBO()
        first, second = make(1.0), make(3.0)
        for model, scale in ((first, 1.0), (second, 3.0), (first, 1.0)):
            expected = -float(dist.Normal(0.0, scale).log_prob(x).sum())
            assert math.isclose(float(elbo.differentiable_loss(model, guide, x)), expected, rel_tol=1e-5)
        with pytest.raises(NotImplementedError, match="KL weight"):
            with KLWeight(0.5):
                elbo.differentiable_loss(first, guide, x)
