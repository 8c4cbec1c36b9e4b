r"""Walking on the fiber: particles that drift away from the MAP along the set of near-optimal parameters, and a
normalising flow fitted to the solutions they collect (after Reichlin, Vasco and Kragic 2025, arXiv 2512.01500).

The parameters :math:`\theta \in \mathbb R^D` are the values of a Pyro model's latent sites (e.g. the MAP of
``AutoDelta``), flattened by :class:`~pyro_lowrank.inference.SiteLayout`. The loss is the negative log joint per datum,

.. math::

    L(\theta) = -\tfrac1N \log p(y, \theta \mid x)
    = -\tfrac1N \Big[\textstyle\sum_{\text{sites } s} \log p(\theta_s) + \sum_{n=1}^N \log p(y_n \mid x_n, \theta)\Big].

P particles start at the MAP :math:`\hat\theta`, each with a random unit drift :math:`d_i` (uniform on the sphere
:math:`S^{D-1}`), and step

.. math::

    \theta_i \leftarrow \theta_i + \eta\, \Pi_i d_i - \gamma \nabla L(\theta_i), \qquad
    \Pi_i = I - \hat g_i \hat g_i^\top,\ \hat g_i = \nabla L(\theta_i) / \lVert \nabla L(\theta_i) \rVert,

a gradient descent on L plus a constant push. The push moves the particles along the flat directions of L (the gauge
orbits :math:`(A G, B G^{-\top})` of every factorised layer, ReLU rescalings, directions the data do not constrain);
the gradient term pulls them back to the low-loss set, the *fiber* of near-optimal solutions. Positions are recorded
after a burn-in and kept when :math:`L(\theta) \le L(\hat\theta) + \epsilon`. :class:`FiberFlow` then fits a
normalising flow to the kept solutions, so new draws cost one decoding pass.

Caveats: the gauge orbits are exactly flat for the likelihood only (the factor prior is not gauge-invariant and tilts
them by O(1/N) per datum); and the solutions are where the walk went, not draws weighted by the posterior density, so
their spread depends on :math:`\eta`, :math:`\gamma` and the number of steps.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from pyro_lowrank.errors import TrainingDivergedError

from .factor_ggn import SiteLayout
from .predict import max_plate_nesting

__all__ = ["FiberFlow", "FiberWalk", "walk_fiber"]

logger = logging.getLogger(__name__)


@dataclass
class FiberWalk:
    """The solutions collected by :func:`walk_fiber`.

    Attributes
    ----------
    layout : SiteLayout
        How flat vectors map to site values.
    start : torch.Tensor
        ``(D,)``, the flat MAP :math:`\\hat\\theta`.
    solutions : torch.Tensor
        ``(K, D)``, the recorded particle positions with :math:`L \\le L(\\hat\\theta) + \\epsilon` (the others
        dropped), ordered by recording step, then particle.
    losses : torch.Tensor
        ``(K,)``, L at the solutions (nats per datum).
    start_loss : float
        :math:`L(\\hat\\theta)`.
    seconds : float
        Wall-clock time of the walk.
    gradient_step : float
        The gradient step :math:`\\gamma` actually used (``correction`` divided by the top curvature).
    num_recorded : int
        Positions recorded before the tolerance filter (K of them were kept).
    """

    layout: SiteLayout
    start: torch.Tensor
    solutions: torch.Tensor
    losses: torch.Tensor
    start_loss: float
    seconds: float
    gradient_step: float = float("nan")
    num_recorded: int = 0

    def as_values(self) -> dict[str, torch.Tensor]:
        """The solutions as site values, ``{site: (K, *site_shape)}`` (e.g. ``Predictive(posterior_samples=...)``)."""
        return self.layout.unflatten(self.solutions)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(value: object, name: str, *, positive: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _particle_loss(model: Callable, layout: SiteLayout, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   num_data: int, plate_depth: int, scaled: bool) -> torch.Tensor:
    """L at each row of ``theta`` ``(P, D)``, shape ``(P,)``: one vectorised model pass, particles left of the plates.

    Every site's log-probability is summed over all of its dimensions but the particle one, so ``loss.sum()`` has
    gradient :math:`\\nabla L(\\theta_p)` in row p. ``scaled``: ``x`` is a minibatch and the plate rescales by N / B.
    """
    num = theta.shape[0]
    data = {name: value.reshape((num,) + (1,) * plate_depth + value.shape[1:])
            for name, value in layout.unflatten(theta).items()}
    kwargs = {"num_data": num_data} if scaled else {}
    with pyro.validation_enabled(False), pyro.poutine.block():
        trace = pyro.poutine.trace(pyro.poutine.condition(model, data=data)).get_trace(x, y, **kwargs)
        trace.compute_log_prob()
    missing = [name for name in trace.stochastic_nodes
               if not site_is_subsample(trace.nodes[name]) and name not in data and name != "obs"]
    if missing:
        raise ValueError(f"values must give every latent site of the model; missing {missing}")
    total = theta.new_zeros(num)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site["log_prob"]
        if lp.dim() <= plate_depth:  # no particle dimension: the same for every particle
            total = total + lp.sum()
        else:
            lp = lp.movedim(-(plate_depth + 1), 0)
            total = total + lp.reshape(lp.shape[0], -1).sum(-1)
    return -total / num_data


def _top_curvature(loss_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, generator: torch.Generator,
                   iterations: int = 20) -> float:
    """:math:`|\\lambda_{\\max}(\\nabla^2 L(\\theta))|` by power iteration on Hessian-vector products."""
    theta = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(theta[None]).sum(), theta, create_graph=True)
    v = torch.randn(theta.shape, generator=generator, dtype=theta.dtype, device=theta.device)
    estimate = 0.0
    for _ in range(iterations):
        v = v / v.norm()
        (hv,) = torch.autograd.grad(grad, theta, v, retain_graph=True)
        estimate = abs(float(v @ hv))
        v = hv.detach()
        if float(v.norm()) == 0.0:
            break
    return estimate


def walk_fiber(model: Callable, values: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor], *,
               num_particles: int = 16, num_steps: int = 200, step_size: float = 1e-2, correction: float = 1.0,
               burn_in: int = 20, record_every: int = 5, loss_tolerance: float = 0.05, resample_drift: bool = False,
               project_drift: bool = True, batch_size: int | None = None, plate_depth: int | None = None, seed: int = 0,
               progress: bool = False) -> FiberWalk:
    r"""Walk ``num_particles`` particles from the MAP along the near-optimal set of L and collect their positions.

    Each step is :math:`\theta_i \leftarrow \theta_i + \eta\, \Pi_i d_i - \gamma \nabla L(\theta_i)` (see the module
    docstring) with :math:`\eta` = ``step_size`` (parameter units per step) and :math:`\gamma` = ``correction`` /
    :math:`\lambda_{\max}`, where :math:`\lambda_{\max}` is the top Hessian eigenvalue of L at the MAP (power
    iteration). Gradient descent is stable for :math:`\gamma \lambda_{\max} < 2`, so ``correction`` is scale-free:
    1 takes a Newton step in the stiffest direction, whatever the noise scale or the data size.

    With ``project_drift`` (default) the drift's component along the current gradient is removed (:math:`\Pi_i`, no
    renormalisation): the push is then tangent to the level set of L and raises the loss only to second order. Without
    it a particle settles where :math:`\gamma \nabla L = \eta d_i`, an excess loss of about
    :math:`\tfrac12 (\eta/\gamma)^2 d_i^\top H^{-1} d_i`, large in weakly curved directions.

    Parameters
    ----------
    model : callable
        A Pyro model ``model(x, y=None, *, num_data=None)`` whose data plates are the rightmost ``plate_depth`` dims.
    values : dict of str to torch.Tensor
        The MAP, a value for every latent site (e.g. ``AutoDelta(...).median()``).
    data : tuple of torch.Tensor
        ``(x, y)``, the N training points.
    num_particles : int
        P >= 1.
    num_steps, burn_in, record_every : int
        Steps per particle; positions are recorded after step t for t = burn_in + record_every, burn_in +
        2 record_every, ..., <= num_steps (at least one such t is required).
    step_size : float
        :math:`\eta` >= 0, the length of the drift step.
    correction : float
        :math:`\gamma \lambda_{\max}` > 0, the gradient step relative to the stiffest curvature (stable below 2).
    loss_tolerance : float
        :math:`\epsilon` >= 0 in nats per datum: a recorded position is kept when
        :math:`L(\theta) \le L(\hat\theta) + \epsilon`. The default 0.05 allows, for a Gaussian likelihood with noise
        :math:`\sigma`, a mean squared residual larger by :math:`0.1 \sigma^2` (about 5% in RMSE when the residuals
        are at the noise level). For a categorical likelihood it is 0.05 nats of cross-entropy per datum.
    resample_drift : bool
        Draw a fresh drift every step (a random walk) instead of one fixed drift per particle (a straight walk).
    project_drift : bool
        Remove the drift's component along the gradient.
    batch_size : int, optional
        Estimate the gradients on random minibatches of this size (likelihood scaled by N / B, the model's
        ``num_data``); the loss of recorded positions is always evaluated on the full data.
    plate_depth : int, optional
        How many plates the model nests the observations in (default: read off one trace by
        :func:`~pyro_lowrank.inference.max_plate_nesting`; 1 for the reference MLPs).
    seed : int
        Seeds the drifts, the minibatches and the curvature estimate (a ``torch.Generator`` on the values' device).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    FiberWalk

    Raises
    ------
    ValueError
        For a bad argument.
    TrainingDivergedError
        When L or its gradient becomes non-finite (lower ``step_size`` or ``correction``).
    RuntimeError
        When no recorded position satisfies the tolerance.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"data must be a tuple (x, y), got {type(data).__name__}")
    x, y = data
    num_particles = _check_int(num_particles, "num_particles", 1)
    num_steps = _check_int(num_steps, "num_steps", 1)
    burn_in = _check_int(burn_in, "burn_in", 0)
    record_every = _check_int(record_every, "record_every", 1)
    plate_depth = max(1, max_plate_nesting(model, x[:1])) if plate_depth is None else \
        _check_int(plate_depth, "plate_depth", 1)
    if burn_in + record_every > num_steps:
        raise ValueError(f"num_steps must be >= burn_in + record_every = {burn_in + record_every} so that at least "
                         f"one position is recorded, got num_steps={num_steps}")
    step_size = _check_float(step_size, "step_size")
    correction = _check_float(correction, "correction", positive=True)
    loss_tolerance = _check_float(loss_tolerance, "loss_tolerance")
    num_data = x.shape[0]
    if batch_size is not None and (_check_int(batch_size, "batch_size", 1) > num_data):
        raise ValueError(f"batch_size must be an integer in [1, {num_data}] (the data size), got {batch_size}")
    t0 = time.perf_counter()
    layout = SiteLayout(values)
    start = layout.flatten({k: v.detach() for k, v in values.items()})
    device, dtype = start.device, start.dtype
    generator = torch.Generator(device=device).manual_seed(seed)
    index_generator = torch.Generator().manual_seed(seed)

    def full_loss(theta: torch.Tensor) -> torch.Tensor:
        return _particle_loss(model, layout, theta, x, y, num_data, plate_depth, scaled=False)

    def check_finite(what: torch.Tensor, name: str, step: int) -> None:
        bad = ~torch.isfinite(what)
        if bool(bad.any()):
            rows = bad if bad.dim() == 1 else bad.any(-1)
            value = float(what.detach()[rows][0].reshape(-1)[0]) if name == "loss" else float("nan")
            raise TrainingDivergedError(
                f"walk_fiber: the {name} became non-finite at step {step} for particles "
                f"{rows.nonzero().flatten().tolist()}; lower step_size (now {step_size}) or correction "
                f"(now {correction})", step=step, epoch=0, loss=value)

    with torch.no_grad():
        start_loss_t = full_loss(start[None])
    check_finite(start_loss_t, "loss", 0)
    start_loss = float(start_loss_t[0])
    curvature = max(_top_curvature(full_loss, start, generator), torch.finfo(dtype).tiny)
    gamma = correction / curvature
    logger.info("walk_fiber: D=%d, L(MAP)=%.5g, lambda_max=%.4g, gamma=%.4g", start.numel(), start_loss, curvature,
                gamma)

    def draw_drift() -> torch.Tensor:
        z = torch.randn(num_particles, start.numel(), generator=generator, dtype=dtype, device=device)
        return z / z.norm(dim=-1, keepdim=True)

    drift = draw_drift()
    theta = start.expand(num_particles, -1).clone()
    recorded, recorded_losses = [], []
    for step in tqdm(range(1, num_steps + 1), desc="walk_fiber", disable=not progress, leave=False):
        theta.requires_grad_(True)
        if batch_size is None:
            loss = full_loss(theta)
        else:
            idx = torch.randperm(num_data, generator=index_generator)[:batch_size].to(x.device)
            loss = _particle_loss(model, layout, theta, x[idx], y[idx], num_data, plate_depth, scaled=True)
        check_finite(loss, "loss", step)
        (grad,) = torch.autograd.grad(loss.sum(), theta)
        check_finite(grad, "gradient", step)
        theta = theta.detach()
        if resample_drift and step > 1:
            drift = draw_drift()
        push = drift
        if project_drift:  # a zero gradient gives a zero unit vector: nothing to project out
            unit = grad / grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            push = drift - (drift * unit).sum(-1, keepdim=True) * unit
        theta = theta + step_size * push - gamma * grad
        if step > burn_in and (step - burn_in) % record_every == 0:
            with torch.no_grad():
                current = full_loss(theta)
            check_finite(current, "loss", step)
            recorded.append(theta.clone())
            recorded_losses.append(current)
            logger.debug("walk_fiber step %d: mean L - L(MAP) = %.4g", step, float(current.mean()) - start_loss)
    positions, losses = torch.cat(recorded), torch.cat(recorded_losses)
    keep = losses <= start_loss + loss_tolerance
    if not bool(keep.any()):
        raise RuntimeError(
            f"walk_fiber kept no solution: all {len(losses)} recorded positions have L - L(MAP) > loss_tolerance="
            f"{loss_tolerance} (smallest excess {float(losses.min()) - start_loss:.4g} nats per datum); use a smaller "
            f"step_size (now {step_size}) or a larger loss_tolerance")
    logger.info("walk_fiber: kept %d of %d recorded positions", int(keep.sum()), len(losses))
    return FiberWalk(layout=layout, start=start, solutions=positions[keep], losses=losses[keep],
                     start_loss=start_loss, seconds=time.perf_counter() - t0, gradient_step=gamma,
                     num_recorded=len(losses))


class FiberFlow:
    r"""A normalising flow from :math:`\mathcal N(0, I_d)` to the solutions of a :class:`FiberWalk`.

    The K solutions are usually far fewer than the D parameters, so a density on :math:`\mathbb R^D` is degenerate.
    The flow is fitted in the d-dimensional principal subspace: with m the solutions' mean, :math:`V \in \mathbb
    R^{D \times d}` the top-d right singular vectors of the centred solutions and s the standard deviations of the
    coordinates along them,

    .. math::

        z = \operatorname{diag}(s)^{-1} V^\top (\theta - m), \qquad \theta = m + V \operatorname{diag}(s)\, z,

    and the flow :math:`z = T_k \circ \dots \circ T_1(u)`, :math:`u \sim \mathcal N(0, I_d)`, is fitted to the
    standardised coordinates by maximum likelihood (Adam). For d >= 2 it alternates ``num_flows`` Pyro coupling
    transforms with reversal permutations, so every coordinate is transformed: ``affine_coupling`` (RealNVP, the
    default: unbounded, starts near the identity) or ``spline_coupling`` (rational-quadratic splines, the identity
    outside [-3, 3], so heavy tails of the standardised coordinates are lost). Couplings take one network pass in
    either direction, so fitting and sampling are both one pass (Pyro's ``affine_autoregressive`` needs d sequential
    passes to evaluate the density, and its inverse fails in float64). For d = 1 the flow is the maximum-likelihood
    affine map, which in standardised coordinates is the identity: a Gaussian along the single direction.
    **Decoded samples lie in the affine span** :math:`m + \operatorname{span}(V)`: the solutions' variance outside
    the top d directions is dropped.

    Parameters
    ----------
    walk : FiberWalk
        The solutions (at least two distinct ones).
    latent_dim : int, optional
        d, in [1, min(K - 1, D)]; default min(K - 1, D, 32), lowered to the numerical rank of the centred solutions.
    num_flows : int
        Number of coupling transforms (d >= 2).
    hidden_dims : sequence of int
        Hidden widths of each coupling network.
    transform : {"affine_coupling", "spline_coupling"}
        The coupling transform.
    seed : int
        Seeds the networks' initialisation.
    """

    def __init__(self, walk: FiberWalk, *, latent_dim: int | None = None, num_flows: int = 2,
                 hidden_dims: Sequence[int] = (64, 64), transform: str = "affine_coupling", seed: int = 0) -> None:
        solutions = walk.solutions
        num, size = solutions.shape
        if num < 2:
            raise ValueError(f"walk.solutions must hold at least 2 solutions to fit a flow, got {num}")
        limit = min(num - 1, size)
        if latent_dim is not None:
            _check_int(latent_dim, "latent_dim", 1)
            if latent_dim > limit:
                raise ValueError(f"latent_dim must be in [1, min(K - 1, D)] = [1, {limit}], got {latent_dim}")
        self.num_flows = _check_int(num_flows, "num_flows", 1)
        if transform not in ("affine_coupling", "spline_coupling"):
            raise ValueError(f"transform must be 'affine_coupling' or 'spline_coupling', got {transform!r}")
        self.walk = walk
        self.mean = solutions.mean(0)
        _, sv, vh = torch.linalg.svd(solutions - self.mean, full_matrices=False)
        # numerical rank, relative to the solutions' own magnitude (the centring leaves rounding noise)
        rank = int((sv > max(num, size) * torch.finfo(sv.dtype).eps * float(solutions.norm())).sum())
        if rank == 0:
            raise ValueError("walk.solutions are all equal; FiberFlow needs at least two distinct solutions")
        d = min(limit, 32) if latent_dim is None else latent_dim
        if d > rank:
            logger.warning("FiberFlow: latent_dim %d exceeds the solutions' numerical rank %d; using %d", d, rank, rank)
            d = rank
        self.latent_dim = d
        self.basis = vh[:d].T.contiguous()  # V, (D, d)
        self.scale = sv[:d] / math.sqrt(num - 1)  # s
        self.coordinates = (solutions - self.mean) @ self.basis / self.scale  # z of the solutions, (K, d)
        like = {"device": solutions.device, "dtype": solutions.dtype}
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA generators stay untouched
            make = getattr(T, transform)
            modules = [] if d == 1 else [make(d, hidden_dims=list(hidden_dims)) for _ in range(self.num_flows)]
        self.modules = torch.nn.ModuleList(modules).to(**like)
        reverse = torch.arange(d - 1, -1, -1, device=solutions.device)
        self.transforms: list = []
        for i, module in enumerate(self.modules):
            self.transforms += [T.Permute(reverse), module] if i else [module]
        self.base = dist.Normal(torch.zeros(d, **like), torch.ones(d, **like)).to_event(1)
        self.losses: list[float] = []

    @property
    def num_parameters(self) -> int:
        """Stored numbers: the flow's parameters and the decoder (m: D, V: D x d, s: d)."""
        flow = sum(p.numel() for p in self.modules.parameters())
        return flow + self.mean.numel() + self.basis.numel() + self.scale.numel()

    @property
    def distribution(self) -> dist.TransformedDistribution:
        """The flow's distribution of the standardised coordinates z."""
        return dist.TransformedDistribution(self.base, self.transforms)

    def fit(self, num_steps: int = 1000, lr: float = 1e-2, progress: bool = False) -> "FiberFlow":
        r"""Maximum likelihood: minimise :math:`-\tfrac1K \sum_k \log q(z_k)` over the flow's parameters with Adam.

        Appends each step's loss to :attr:`losses`; raises :class:`~pyro_lowrank.TrainingDivergedError` when it
        becomes non-finite.
        """
        num_steps = _check_int(num_steps, "num_steps", 1)
        lr = _check_float(lr, "lr", positive=True)
        parameters = list(self.modules.parameters())
        optimizer = torch.optim.Adam(parameters, lr=lr) if parameters else None
        for step in tqdm(range(num_steps if parameters else 1), desc="FiberFlow", disable=not progress, leave=False):
            # a fresh tensor each step: the transforms' one-entry caches must not return last step's inverse
            loss = -self.distribution.log_prob(self.coordinates.clone()).mean()
            if not bool(torch.isfinite(loss)):
                raise TrainingDivergedError(f"FiberFlow.fit: the negative log-likelihood became non-finite at step "
                                            f"{step}; lower lr (now {lr})", step=step, epoch=0, loss=float(loss))
            if optimizer is not None:  # d = 1: nothing to fit, the loss is recorded once
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            self.losses.append(float(loss.detach()))
        logger.info("FiberFlow: final NLL %.4g nats per solution (d=%d)", self.losses[-1], self.latent_dim)
        return self

    def sample(self, num_samples: int, generator: torch.Generator | int | None = None) -> torch.Tensor:
        """``(S, D)`` flat parameter vectors: u ~ N(0, I_d) through the flow, then :math:`m + V \\mathrm{diag}(s) z`.

        ``generator``: a ``torch.Generator`` (on the solutions' device) or an int seed, for reproducible draws.
        """
        num_samples = _check_int(num_samples, "num_samples", 1)
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = torch.Generator(device=self.mean.device).manual_seed(generator)
        with torch.no_grad():
            z = torch.randn(num_samples, self.latent_dim, generator=generator, dtype=self.mean.dtype,
                            device=self.mean.device)
            for transform in self.transforms:
                z = transform(z)
            return self.mean + (z * self.scale) @ self.basis.T

    def sample_values(self, num_samples: int,
                      generator: torch.Generator | int | None = None) -> dict[str, torch.Tensor]:
        """:meth:`sample` as site values, ``{site: (S, *site_shape)}``."""
        return self.walk.layout.unflatten(self.sample(num_samples, generator))
