"""Walking on the fiber: batched per-particle gradients, the walk's dynamics and tolerance filter, function
preservation along the walk, and the principal-subspace normalising flow."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta

from pyro_lowrank.errors import TrainingDivergedError
from pyro_lowrank.guides import init_to_factors
from pyro_lowrank.inference import fit
from pyro_lowrank.inference.factor_ggn import SiteLayout, model_outputs
from pyro_lowrank.inference.fiber_walk import FiberFlow, FiberWalk, _particle_loss, walk_fiber
from pyro_lowrank.models import LowRankMLP

SHORT = {"num_particles": 6, "num_steps": 40, "burn_in": 10, "record_every": 5}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def trained():
    """A small Gaussian-regression LowRankMLP (float64) and its MAP from AutoDelta."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = LowRankMLP(2, [8], rank=[2], output_rank=1, likelihood="gaussian", noise_scale=0.1).double()
    x = torch.randn(48, 2, dtype=torch.float64)
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.1 * torch.randn(48, dtype=torch.float64)
    guide = AutoDelta(model, init_loc_fn=init_to_factors(model))
    fit(model, guide, (x, y), num_epochs=250, batch_size=48, lr=1e-2, elbo=Trace_ELBO(), progress=False)
    values = {k: v.detach() for k, v in guide.median().items()}
    pyro.clear_param_store()
    return model, values, x, y


@pytest.fixture(scope="module")
def walks(trained):
    """Walks sharing the MAP: no drift, two drift sizes, a resampled drift, and an unprojected drift."""
    model, values, x, y = trained
    run = lambda **kw: walk_fiber(model, values, (x, y), **{**SHORT, "loss_tolerance": 1e9, **kw})  # noqa: E731
    return {"still": run(step_size=0.0), "small": run(step_size=3e-3), "large": run(step_size=1e-2),
            "resampled": run(step_size=1e-2, resample_drift=True), "unprojected": run(step_size=1e-2,
                                                                                     project_drift=False)}


def _log_joint_loss(model, values, x, y):
    with pyro.poutine.block():
        trace = pyro.poutine.trace(pyro.poutine.condition(model, data=values)).get_trace(x, y)
    return -trace.log_prob_sum() / x.shape[0]


def test_batched_losses_and_gradients_are_per_particle(trained):
    model, values, x, y = trained
    layout = SiteLayout(values)
    start = layout.flatten(values)
    theta = (start + 0.2 * torch.randn(4, start.numel(), dtype=torch.float64)).requires_grad_(True)
    losses = _particle_loss(model, layout, theta, x, y, x.shape[0], 1, scaled=False)
    (batched,) = torch.autograd.grad(losses.sum(), theta)
    for p in range(4):
        single = theta[p].detach().clone().requires_grad_(True)
        loss = _log_joint_loss(model, layout.unflatten(single), x, y)
        (grad,) = torch.autograd.grad(loss, single)
        torch.testing.assert_close(losses[p], loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batched[p], grad, rtol=1e-10, atol=1e-12)
    assert float((batched[0] - batched[1]).norm()) > 1e-3  # the particles' gradients really differ


def test_no_drift_is_gradient_descent(trained, walks):
    walk = walks["still"]
    assert walk.solutions.shape == (6 * 6, walk.start.numel()) and walk.num_recorded == 36
    positions = walk.solutions.reshape(6, 6, -1)  # (record, particle, D)
    torch.testing.assert_close(positions, positions[:, :1].expand_as(positions))  # no drift: identical particles
    losses = walk.losses.reshape(6, 6)[:, 0]
    assert float(losses.max()) <= walk.start_loss + 1e-9
    assert bool((losses[1:] <= losses[:-1] + 1e-12).all())  # gradient descent never goes up the loss
    model, values, x, y = trained
    torch.testing.assert_close(walk.start_loss, float(_log_joint_loss(model, values, x, y)))
    assert 0 < walk.gradient_step < 1.0  # correction / lambda_max: the noise 0.1 makes the per-datum loss stiff


def test_drift_moves_particles_along_low_loss_set(walks):
    # measured from the drift-free particle at the same step, which isolates the drift from the descent
    still = walks["still"]
    distance = {k: float((w.solutions - still.solutions).norm(dim=-1).mean()) for k, w in walks.items()}
    assert distance["small"] > 0.02 and 2.5 < distance["large"] / distance["small"] < 4  # ~ eta: x 10/3
    # a fixed drift walks straight (distance ~ eta t), a resampled one diffuses (~ eta sqrt(t))
    assert distance["resampled"] < 0.4 * distance["large"]
    last = walks["large"].solutions.reshape(6, 6, -1)[-1]
    gaps = torch.cdist(last, last) + torch.eye(6, dtype=last.dtype)
    assert float(gaps.min()) > 0.1  # diverse: every pair of particles has separated
    # projecting the drift off the gradient keeps the particles lower on the loss
    excess = {k: float((walks[k].losses - still.losses).mean()) for k in ("large", "unprojected")}
    assert excess["large"] < 0.75 * excess["unprojected"]


def test_tolerance_filter_keeps_only_low_loss_solutions(trained, walks):
    model, values, x, y = trained
    tolerance = 0.02
    walk = walk_fiber(model, values, (x, y), **SHORT, step_size=1e-2, loss_tolerance=tolerance)
    reference = walks["large"]  # same seed, same steps, no filter
    assert 0 < walk.solutions.shape[0] < reference.solutions.shape[0] == walk.num_recorded
    assert float(walk.losses.max()) <= walk.start_loss + tolerance
    keep = reference.losses <= reference.start_loss + tolerance
    torch.testing.assert_close(walk.solutions, reference.solutions[keep])  # reproducible with the seed
    for index in (0, walk.solutions.shape[0] - 1):  # the stored losses are the true losses
        torch.testing.assert_close(float(walk.losses[index]), float(_log_joint_loss(
            model, walk.layout.unflatten(walk.solutions[index]), x, y)))
    shapes = {k: v.shape for k, v in walk.as_values().items()}
    assert shapes == {k: (walk.solutions.shape[0], *v.shape) for k, v in values.items()}


def test_walk_preserves_the_function(trained, walks):
    model, values, x, y = trained
    walk, still = walks["small"], walks["still"].solutions
    keep = walk.losses <= walks["still"].losses + 0.01
    assert int(keep.sum()) >= 12
    solutions, reference = walk.solutions[keep], still[keep]  # each against the drift-free particle at its step
    outputs = lambda theta: model_outputs(model, walk.layout.unflatten(theta), x, batched=True)  # noqa: E731
    step = solutions - reference
    random = torch.randn(step.shape, dtype=step.dtype, generator=torch.Generator().manual_seed(1))
    random = reference + random / random.norm(dim=-1, keepdim=True) * step.norm(dim=-1, keepdim=True)
    base = outputs(reference)
    change = float((outputs(solutions) - base).norm(dim=-1).mean())
    assert float(step.norm(dim=-1).mean()) > 0.05  # the particles did move
    # along the walk the network function barely changes; a random move of the same length changes it ~5x more
    assert change < 0.35 * float((outputs(random) - base).norm(dim=-1).mean())


def test_minibatch_gradients_run_and_are_seeded(trained):
    model, values, x, y = trained
    run = lambda seed: walk_fiber(model, values, (x, y), **{**SHORT, "num_steps": 20}, step_size=3e-3,  # noqa: E731
                                  batch_size=16, seed=seed, progress=True)
    a, b, c = run(0), run(0), run(1)
    torch.testing.assert_close(a.solutions, b.solutions)
    assert a.solutions.shape != c.solutions.shape or not torch.equal(a.solutions, c.solutions)


def _synthetic_walk(num=400, size=20, rank=3, seed=0):
    """Solutions on a rank-3 affine subspace of R^20 with a banana: u2 = 0.6 (u1^2 - 1) + noise."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(num, rank, generator=g, dtype=torch.float64)
    if rank > 1:
        u[:, 1] = 0.6 * (u[:, 0] ** 2 - 1) + 0.4 * u[:, 1]
    basis, _ = torch.linalg.qr(torch.randn(size, rank, generator=g, dtype=torch.float64))
    offset = torch.randn(size, generator=g, dtype=torch.float64)
    solutions = offset + (u * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)[:rank]) @ basis.T
    layout = SiteLayout({"w": torch.zeros(4, 5, dtype=torch.float64)})
    return FiberWalk(layout, offset, solutions, torch.zeros(num, dtype=torch.float64), 0.0, 0.0)


def test_fiber_flow_matches_the_solutions_in_their_span(caplog):
    walk = _synthetic_walk(num=1000)
    with caplog.at_level("WARNING"):
        flow = FiberFlow(walk, hidden_dims=(32, 32)).fit(num_steps=150, lr=1e-2)
    assert flow.latent_dim == 3 and "numerical rank 3" in caplog.text  # default 32 lowered to the true rank
    assert flow.losses[-1] < flow.losses[0] - 0.3
    samples = flow.sample(4000, generator=0)
    assert samples.shape == (4000, 20) and samples.dtype == torch.float64
    torch.testing.assert_close(samples, flow.sample(4000, generator=0))
    assert not torch.equal(samples, flow.sample(4000, generator=1))
    residual = (samples - flow.mean) - (samples - flow.mean) @ flow.basis @ flow.basis.T
    assert float(residual.abs().max()) < 1e-10  # in the affine span of the solutions
    z = (samples - flow.mean) @ flow.basis / flow.scale
    z_data = flow.coordinates
    assert float((z.mean(0) - z_data.mean(0)).abs().max()) < 0.1
    assert float((torch.cov(z.T) - torch.cov(z_data.T)).abs().max()) < 0.2
    # beyond a Gaussian: the banana's dependence of the second coordinate on the first's square survives
    square = lambda t: torch.corrcoef(torch.stack([t[:, 0] ** 2, t[:, 1]]))[0, 1].abs()  # noqa: E731
    assert float(square(z_data)) > 0.8 and float(square(z)) > 0.8
    values = flow.sample_values(7, generator=3)
    assert values["w"].shape == (7, 4, 5)


def test_fiber_flow_one_dimensional_and_from_a_walk(walks):
    walk = _synthetic_walk(num=200, rank=1)
    flow = FiberFlow(walk).fit(num_steps=60)
    assert flow.latent_dim == 1
    samples = flow.sample(3000, generator=0)
    z = (samples - flow.mean) @ flow.basis / flow.scale
    assert abs(float(z.mean())) < 0.15 and abs(float(z.var()) - 1) < 0.25
    walk = walks["small"]
    flow = FiberFlow(walk, latent_dim=4).fit(num_steps=20)
    draws = flow.sample_values(5, generator=0)
    assert {k: v.shape[1:] for k, v in draws.items()} == {k: v.shape[1:] for k, v in walk.as_values().items()}


def test_bad_arguments(trained):
    model, values, x, y = trained
    data = (x, y)
    for kwargs, match in [({"num_particles": 0}, "num_particles must be an integer >= 1, got 0"),
                          ({"loss_tolerance": -1.0}, "loss_tolerance must be a finite number >= 0, got -1.0"),
                          ({"step_size": math.nan}, "step_size"), ({"correction": 0.0}, "correction .* > 0"),
                          ({"num_steps": 10, "burn_in": 20}, "num_steps must be >= burn_in"),
                          ({"batch_size": 100}, r"batch_size must be an integer in \[1, 48\]")]:
        with pytest.raises(ValueError, match=match):
            walk_fiber(model, values, data, **kwargs)
    partial = dict(values)
    partial.pop(next(iter(partial)))
    with pytest.raises(ValueError, match="missing"):
        walk_fiber(model, partial, data, **SHORT)
    with pytest.raises(RuntimeError, match="kept no solution.*smaller step_size.*larger loss_tolerance"):
        walk_fiber(model, values, data, **SHORT, step_size=0.05, loss_tolerance=0.0)
    broken = {k: v.clone() for k, v in values.items()}
    next(iter(broken.values())).view(-1)[0] = math.nan
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        walk_fiber(model, broken, data, **SHORT)
    walk = _synthetic_walk()
    with pytest.raises(ValueError, match=r"latent_dim must be in \[1, min\(K - 1, D\)\] = \[1, 20\], got 25"):
        FiberFlow(walk, latent_dim=25)
    same = FiberWalk(walk.layout, walk.start, walk.start.expand(5, -1), torch.zeros(5), 0.0, 0.0)
    with pytest.raises(ValueError, match="all equal"):
        FiberFlow(same)
    with pytest.raises(ValueError, match="at least 2"):
        FiberFlow(FiberWalk(walk.layout, walk.start, walk.start[None], torch.zeros(1), 0.0, 0.0))
