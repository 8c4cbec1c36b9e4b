r"""Weight-space-geometry methods on the low-rank MLP behind the compared-methods interface: the factor-space
Laplace approximation with its sampled (``"laplace_factor"``) and linearised (``"laplace_factor_glm"``)
predictives, Laplace diffusion (``"laplace_diffusion"``) and fiber walking (``"fiber_walk"``).

All four start from the same point estimate: a :class:`~pyro_lowrank.models.LowRankMLP` (the ``lowrank`` method's
network, ranks and factor prior) whose latent sites are fitted to their MAP by Pyro's ``AutoDelta`` guide and
``Trace_ELBO`` through :func:`~pyro_lowrank.inference.fit` (minibatches, validation early stopping on the NLL). The
posterior is then built around the MAP from the training data (:mod:`..factor_laplace`, :mod:`..laplace_diffusion`,
:mod:`..fiber_walk`). With validation data the prior precision alpha of the Laplace methods is the grid value with
the smallest validation NLL of the method's own predictive (diffusion: of its one-step version, which is a low-rank
Laplace sample; for the ``"kernel"`` variant the full low-rank Laplace stands in), with the Gaussian observation noise
tuned jointly (``tune_noise=True``); the draws carry that noise. ``training_seconds`` is the MAP fit plus everything the posterior needs (curvature, tuning, paths,
walk and flow); :attr:`posterior_seconds` is the second part alone.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_lowrank._validation import check_choice, check_positive_int

from ..factor_ggn import SiteLayout, model_outputs
from ..factor_laplace import DEFAULT_NOISE_GRID, STRUCTURES, FactorLaplace, map_guide
from ..fiber_walk import FiberFlow, walk_fiber
from ..laplace_diffusion import DIFFUSION_VARIANTS, laplace_diffusion
from ..predict import max_plate_nesting
from .base import Data, outputs_to_draws
from .lowrank import LowRankBNN
from .registry import register_method

__all__ = ["FactorLaplaceMethod", "FactorMAPMethod", "FiberWalkMethod", "LaplaceDiffusionMethod",
           "LinearisedFactorLaplaceMethod"]

logger = logging.getLogger(__name__)


class FactorMAPMethod(LowRankBNN):
    """The low-rank network of :class:`~.lowrank.LowRankBNN` fitted to its MAP (``AutoDelta`` + ``Trace_ELBO``), then
    a posterior built around it by :meth:`fit_posterior` (subclasses). Same constructor arguments as
    :class:`~.lowrank.LowRankBNN` (``init_scale_factor`` has no effect: the guide has no scales)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.map_values: dict[str, torch.Tensor] | None = None
        self.posterior_seconds = float("nan")
        self._plate_depth = 1

    def build(self, train: Data) -> tuple[nn.Module, nn.Module]:
        model = self.place(self.make_model())
        return model, map_guide(model)

    def make_elbo(self) -> Any:
        return Trace_ELBO()

    def _fit(self, train: Data, val: Data | None) -> float:
        map_seconds = super()._fit(train, val)
        with torch.no_grad():
            self.map_values = {name: value.detach().clone() for name, value in self.guide.median().items()}
        self._plate_depth = max(1, max_plate_nesting(self.model, train[0][:1]))
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        self.fit_posterior(train, val)
        self.posterior_seconds = time.perf_counter() - start
        logger.info("%s: MAP %.2f s, posterior %.2f s", self.name, map_seconds, self.posterior_seconds)
        return map_seconds + self.posterior_seconds

    def fit_posterior(self, train: Data, val: Data | None) -> None:
        """Build the posterior around :attr:`map_values` (training data ``train``, tuning data ``val``)."""
        raise NotImplementedError

    def outputs_at(self, parameters: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Network outputs at S parameter settings ``{site: (S, *shape)}``: (S, N) or (S, N, C)."""
        return model_outputs(self.model, parameters, x, batched=True, plate_depth=self._plate_depth)

    @property
    def map_parameters(self) -> int:
        """D, the number of latent-site entries (the MAP's size)."""
        if self.map_values is None:
            raise RuntimeError(f"{self.name}: the MAP is found by fit(); its size is known after fitting")
        return SiteLayout(self.map_values).num_parameters


@register_method("laplace_factor")
class FactorLaplaceMethod(FactorMAPMethod):
    """Laplace approximation over the factors and biases at the MAP (:class:`~..factor_laplace.FactorLaplace`),
    predicting by sampling the network.

    Extra parameters
    ----------------
    structure : {"lowrank", "diag", "full"}
        GGN structure (default ``"lowrank"``: Lanczos top-k).
    num_eigenpairs : int
        k of the low-rank structure (capped at D - 1).
    complement : {"prior", "none"}
        Low-rank structure: prior variance outside the top-k eigenspace, or none.
    prior_precision : float
        alpha without validation data (and the start value).
    prior_precision_grid : sequence of float, optional
        Tuning grid (default :data:`~..factor_laplace.DEFAULT_PRIOR_PRECISION_GRID`, 1e-2 .. 1e6, three per decade).
    tune_num_samples : int
        Draws per grid value.
    tune_noise : bool
        Gaussian likelihood: tune the observation noise jointly with alpha (over
        :data:`~..factor_laplace.DEFAULT_NOISE_GRID`) instead of scoring every alpha at the fixed training
        ``noise_scale``; the predictive draws then carry the tuned noise (the experiments re-tune the predictive noise
        on validation data for every method alike). The GGN itself is computed at the training noise; a Laplace
        approximation at the tuned noise sigma* would scale G by (sigma / sigma*)², which the alpha search absorbs
        only in part.
    """

    linearised = False

    def __init__(self, *args: Any, structure: str = "lowrank", num_eigenpairs: int = 20, complement: str = "prior",
                 prior_precision: float = 1.0, prior_precision_grid: Sequence[float] | None = None,
                 tune_num_samples: int = 32, tune_noise: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tune_noise = bool(tune_noise)
        self.structure = check_choice(structure, "structure", STRUCTURES)
        self.num_eigenpairs = check_positive_int(num_eigenpairs, "num_eigenpairs")
        self.complement = check_choice(complement, "complement", ("prior", "none"))
        self.prior_precision = float(prior_precision)
        if not (self.prior_precision > 0 and math.isfinite(self.prior_precision)):
            raise ValueError(f"prior_precision must be a finite number > 0, got {prior_precision!r}")
        if prior_precision_grid is not None:
            prior_precision_grid = [float(a) for a in prior_precision_grid]
            if not prior_precision_grid or not all(a > 0 and math.isfinite(a) for a in prior_precision_grid):
                raise ValueError("prior_precision_grid must be a non-empty sequence of finite numbers > 0, got "
                                 f"{prior_precision_grid}")
        self.prior_precision_grid = prior_precision_grid
        self.tune_num_samples = check_positive_int(tune_num_samples, "tune_num_samples")
        self.laplace: FactorLaplace | None = None
        self.prior_precision_curve: dict[float, float] = {}

    def make_laplace(self, x: torch.Tensor, complement: str | None = None) -> FactorLaplace:
        """The Laplace approximation at the MAP, its GGN summed over ``x``."""
        size = SiteLayout(self.map_values).num_parameters
        return FactorLaplace(self.model, self.map_values, x, likelihood=self.likelihood,
                             noise_scale=self.noise_scale, structure=self.structure,
                             rank=min(self.num_eigenpairs, size - 1), prior_precision=self.prior_precision,
                             complement=complement or self.complement)

    def tune(self, laplace: FactorLaplace, val: Data | None, *, linearised: bool) -> None:
        """Tune ``laplace``'s alpha on ``val`` (no-op without validation data)."""
        if val is not None:
            self.prior_precision_curve = laplace.tune_prior_precision(
                val[0], val[1], grid=self.prior_precision_grid, num_samples=self.tune_num_samples,
                linearised=linearised, seed=self.seed,
                noise_grid=DEFAULT_NOISE_GRID.tolist() if self.tune_noise and self.likelihood == "gaussian" else None)
            logger.info("%s: prior precision %.3g", self.name, laplace.prior_precision)

    def fit_posterior(self, train: Data, val: Data | None) -> None:
        self.laplace = self.make_laplace(train[0])
        self.tune(self.laplace, val, linearised=self.linearised)

    def _draws(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        # the predictive alpha was tuned for: the jointly tuned noise (the training noise without tuning)
        return outputs_to_draws(f, self.likelihood, self.laplace.tuned_noise_scale)

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        return self._draws(self.laplace.predictive_outputs(x, num_samples, linearised=self.linearised))

    @property
    def num_parameters(self) -> int:
        if self.laplace is None:
            raise RuntimeError(f"{self.name}: the posterior is built by fit(); num_parameters is known after fitting")
        return self.laplace.num_parameters


@register_method("laplace_factor_glm")
class LinearisedFactorLaplaceMethod(FactorLaplaceMethod):
    """:class:`FactorLaplaceMethod` with the linearised (GLM) predictive
    :math:`f(x; \\hat\\theta) + J_x (\\theta_s - \\hat\\theta)`; alpha is tuned for this predictive."""

    linearised = True


@register_method("laplace_diffusion")
class LaplaceDiffusionMethod(FactorLaplaceMethod):
    """Laplace diffusion from the MAP (:func:`~..laplace_diffusion.laplace_diffusion`).

    alpha is tuned as for :class:`FactorLaplaceMethod` on the one-step version of the walk (``"image"``: the
    low-rank Laplace with ``complement="none"``; ``"full"``: with ``complement="prior"``; ``"kernel"``, whose one
    step is the complement alone, also on the ``complement="prior"`` Laplace, an approximation), then
    ``pool_size`` paths are run once and their endpoints are the posterior draws of every later prediction (more
    paths are run if a prediction asks for more draws).

    Extra parameters: ``variant`` (``"image"``, ``"kernel"``, ``"full"``), ``num_steps`` (T), ``num_eigenpairs``
    (k per step), ``pool_size``, and the tuning settings of :class:`FactorLaplaceMethod`.
    """

    def __init__(self, *args: Any, variant: str = "image", num_steps: int = 5, pool_size: int = 100,
                 **kwargs: Any) -> None:
        kwargs.setdefault("structure", "lowrank")
        super().__init__(*args, **kwargs)
        if self.structure != "lowrank":
            raise ValueError(f"structure must be 'lowrank' for Laplace diffusion, got {self.structure!r}")
        self.variant = check_choice(variant, "variant", tuple(DIFFUSION_VARIANTS))
        self.num_steps = check_positive_int(num_steps, "num_steps")
        self.pool_size = check_positive_int(pool_size, "pool_size")
        self.pool: torch.Tensor | None = None
        self._train_x: torch.Tensor | None = None

    def _run(self, num_samples: int, seed: int) -> torch.Tensor:
        size = SiteLayout(self.map_values).num_parameters
        paths = laplace_diffusion(self.model, self.map_values, self._train_x, likelihood=self.likelihood,
                                  noise_scale=self.noise_scale, prior_precision=self.laplace.prior_precision,
                                  rank=min(self.num_eigenpairs, size - 1), num_steps=self.num_steps,
                                  num_samples=num_samples, variant=self.variant, seed=seed, progress=self.progress)
        return paths.samples

    def fit_posterior(self, train: Data, val: Data | None) -> None:
        self.laplace = self.make_laplace(train[0], complement="none" if self.variant == "image" else "prior")
        self.tune(self.laplace, val, linearised=False)
        self._train_x = train[0]
        self.pool = self._run(self.pool_size, self.seed)

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        if num_samples > self.pool.shape[0]:
            extra = self._run(num_samples - self.pool.shape[0], self.seed + self.pool.shape[0])
            self.pool = torch.cat([self.pool, extra])
        parameters = SiteLayout(self.map_values).unflatten(self.pool[:num_samples])
        return self._draws(self.outputs_at(parameters, x))

    @property
    def num_parameters(self) -> int:
        if self.pool is None:
            raise RuntimeError(f"{self.name}: the posterior is built by fit(); num_parameters is known after fitting")
        return self.map_parameters + self.pool.numel() + 1


@register_method("fiber_walk")
class FiberWalkMethod(FactorMAPMethod):
    """Fiber walking from the MAP (:func:`~..fiber_walk.walk_fiber`) and a normalising flow fitted to the
    collected solutions (:class:`~..fiber_walk.FiberFlow`); a prediction decodes ``num_samples`` latent draws in one
    pass.

    Extra parameters: ``num_particles``, ``walk_steps``, ``step_size`` (eta), ``correction`` (gamma),
    ``loss_tolerance``, ``latent_dim``, ``num_flows``, ``flow_steps``, ``flow_lr``; ``walk_options`` (a dict) passes
    any other keyword to :func:`~..fiber_walk.walk_fiber`.
    """

    def __init__(self, *args: Any, num_particles: int = 16, walk_steps: int = 200, step_size: float = 1e-2,
                 correction: float = 1.0, loss_tolerance: float | None = None, latent_dim: int | None = None,
                 num_flows: int = 2, flow_steps: int = 1000, flow_lr: float = 1e-2,
                 walk_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.walk_settings = {"num_particles": check_positive_int(num_particles, "num_particles"),
                              "num_steps": check_positive_int(walk_steps, "walk_steps"),
                              "step_size": float(step_size), "correction": float(correction),
                              **({} if loss_tolerance is None else {"loss_tolerance": float(loss_tolerance)}),
                              **(walk_options or {})}
        for name in ("step_size", "correction", "loss_tolerance"):
            value = self.walk_settings.get(name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (float(flow_lr) > 0 and math.isfinite(float(flow_lr))):
            raise ValueError(f"flow_lr must be a finite number > 0, got {flow_lr!r}")
        if latent_dim is not None:
            latent_dim = check_positive_int(latent_dim, "latent_dim")
        unknown = set(walk_options or {}) - set(inspect.signature(walk_fiber).parameters)
        if unknown:
            raise TypeError(f"walk_options has keywords walk_fiber does not take: {sorted(unknown)}")
        self.latent_dim, self.num_flows = latent_dim, check_positive_int(num_flows, "num_flows")
        self.flow_steps, self.flow_lr = check_positive_int(flow_steps, "flow_steps"), float(flow_lr)
        self.walk = None
        self.flow: FiberFlow | None = None

    def fit_posterior(self, train: Data, val: Data | None) -> None:
        self.walk = walk_fiber(self.model, self.map_values, train, seed=self.seed, progress=self.progress,
                               plate_depth=self._plate_depth, **self.walk_settings)
        self.flow = FiberFlow(self.walk, latent_dim=self.latent_dim, num_flows=self.num_flows, seed=self.seed)
        self.flow.fit(num_steps=self.flow_steps, lr=self.flow_lr, progress=self.progress)

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        return self._draws(self.outputs_at(self.flow.sample_values(num_samples), x))

    @property
    def num_parameters(self) -> int:
        if self.flow is None:
            raise RuntimeError(f"{self.name}: the posterior is built by fit(); num_parameters is known after fitting")
        return self.map_parameters + self.flow.num_parameters
