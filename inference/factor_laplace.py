r"""Laplace approximation of a low-rank Bayesian network in factor space, with sampled and linearised predictives.

Let :math:`\hat\theta` be a MAP of the model's latent sites (the factors A, B and the biases, flattened to length
D; :func:`fit_map` finds one with Pyro's ``AutoDelta``). The Laplace approximation is the Gaussian

.. math::

    q(\theta) = \mathcal N\big(\hat\theta, \Sigma\big), \qquad \Sigma^{-1} = G + \alpha I,

with :math:`G = J^\top \Lambda J` the GGN of the likelihood at :math:`\hat\theta` (:class:`FactorGGN`) and
:math:`\alpha` the prior precision (a scalar; tuned on validation data by :meth:`FactorLaplace.tune_prior_precision`,
as laplace-torch does). Three structures of G:

* ``"lowrank"``: the top k eigenpairs by Lanczos, :math:`G \approx U \operatorname{diag}(\lambda) U^\top`
  (:func:`top_eigenpairs`, matrix-free), so
  :math:`\Sigma = U \operatorname{diag}\big(\tfrac1{\lambda+\alpha}\big) U^\top + \tfrac{c}{\alpha}(I - UU^\top)`
  with :math:`c = 1` (``complement="prior"``: the discarded directions keep the prior, as laplace-torch's
  ``LowRankLaplace``) or :math:`c = 0` (``complement="none"``: only the image of the top-k subspace is sampled, the
  "non-kernel" Laplace of Roy et al. 2024). A draw is :math:`\hat\theta + U (\lambda+\alpha)^{-1/2}\odot U^\top
  \varepsilon + \sqrt{c/\alpha}\,(I - UU^\top)\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I_D)`;
* ``"diag"``: :math:`\Sigma = \operatorname{diag}(1 / (\operatorname{diag} G + \alpha))`, with the exact diagonal
  from N·O reverse-mode products (:meth:`FactorGGN.diagonal`);
* ``"full"``: the dense eigendecomposition of G (small networks only, D matrix-vector products).

**Predictives.** The *sampled* Laplace runs the network at parameter draws, :math:`f(x_*; \theta_s)`. The
*linearised* (GLM) predictive runs the first-order Taylor model :math:`f(x_*;\hat\theta) + J_*(\theta_s -
\hat\theta)`, one batched forward-mode product (``torch.func.jvp``) for all S draws. Directions in the kernel of
the training Jacobian (e.g. the GL(r) gauge tangents of every factor pair) carry prior variance :math:`1/\alpha` in
both; the linearised model ignores them to first order at the training inputs, while the sampled network moves
along them with its curvature, which is the under-fitting of the sampled Laplace that Immer et al. (2021) and the
weight-space geometry literature describe.

**Why not laplace-torch.** Its curvature backends read an ``nn.Module``'s ``parameters()``; here the parameters are
Pyro sample sites of the model (conditioned values, not module parameters), and the low-rank structure needs
matrix-free GGN-vector products, which its backends do not offer. The baselines ``laplace``/``laplace_full`` keep
using laplace-torch on the deterministic MLP.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from torch.func import jvp

from pyro_lowrank._validation import check_choice, check_positive_int
from pyro_lowrank.guides import init_to_factors

from .factor_ggn import FactorGGN, SiteLayout, model_outputs, top_eigenpairs
from .fit import FitResult, fit
from .predict import max_plate_nesting

__all__ = ["DEFAULT_NOISE_GRID", "FactorLaplace", "STRUCTURES", "fit_map", "map_guide", "lowrank_scale_noise", "predictive_log_density"]

logger = logging.getLogger(__name__)

STRUCTURES = ("lowrank", "diag", "full")
DEFAULT_PRIOR_PRECISION_GRID = torch.logspace(-2, 6, 25, dtype=torch.float64)
#: Observation noise scales searched jointly with alpha (Gaussian likelihood; the standardised scale).
DEFAULT_NOISE_GRID = torch.logspace(-3, 1, 81, dtype=torch.float64)


def map_guide(model: torch.nn.Module) -> AutoDelta:
    """Pyro's ``AutoDelta`` guide (point masses) for the MAP, started at the layers' initialisation
    (:func:`~pyro_lowrank.guides.init_to_factors`)."""
    return AutoDelta(model, init_loc_fn=init_to_factors(model))


def fit_map(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], *,
            val_data: tuple[torch.Tensor, torch.Tensor] | None = None, **fit_kwargs
            ) -> tuple[dict[str, torch.Tensor], AutoDelta, FitResult]:
    r"""MAP of the model's latent sites: Pyro's ``AutoDelta`` guide (point masses, started at the layers'
    initialisation by :func:`~pyro_lowrank.guides.init_to_factors`) trained with ``Trace_ELBO`` by
    :func:`~pyro_lowrank.inference.fit`, which then maximises :math:`\log p(y \mid x, \theta) + \log p(\theta)`
    (minibatch plate scaling, validation early stopping, divergence checks as for any fit).

    Returns ``(values, guide, fit_result)`` with ``values`` the detached MAP ``{site: tensor}``.
    """
    guide = map_guide(model)
    fit_kwargs.setdefault("elbo", Trace_ELBO())
    result = fit(model, guide, data, val_data=val_data, **fit_kwargs)
    with torch.no_grad():
        values = {name: value.detach().clone() for name, value in guide.median().items()}
    return values, guide, result


def predictive_log_density(f: torch.Tensor, y: torch.Tensor, likelihood: str, noise_scale: float = 1.0
                           ) -> torch.Tensor:
    r"""Per-datum log density of the equal-weight mixture predictive of S output draws ``f``,
    :math:`\log \frac1S \sum_s p(y_i \mid f_s(x_i))`: Gaussian :math:`\mathcal N(y; f_s, \sigma^2)` for ``f`` of
    shape ``(S, N)``, categorical softmax probabilities for logits ``(S, N, C)``. Shape ``(N,)``."""
    num = f.shape[0]
    if likelihood == "gaussian":
        log_p = torch.distributions.Normal(f, noise_scale).log_prob(y.to(f.dtype))
    else:
        log_p = f.log_softmax(-1).gather(-1, y.long().expand(num, -1).unsqueeze(-1)).squeeze(-1)
    return torch.logsumexp(log_p, dim=0) - math.log(num)


def lowrank_scale_noise(eps: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, alpha: float, *,
                        image: float = 1.0, kernel: float = 1.0) -> torch.Tensor:
    r"""Map standard normal ``eps`` (S, D) to :math:`\sqrt{a}\,U(\lambda + \alpha)^{-1/2} \odot U^\top\varepsilon
    + \sqrt{b/\alpha}\,(I - UU^\top)\varepsilon` with a = ``image``, b = ``kernel``: a draw from
    :math:`\mathcal N\big(0, a\,U \operatorname{diag}(\frac1{\lambda+\alpha}) U^\top + \frac b\alpha (I - UU^\top)\big)`
    for orthonormal U (D, k). (a, b) = (1, 1) is the low-rank Laplace, (1, 0) its image part, (0, 1) a
    prior-scaled step in the orthogonal complement of the top-k eigenspace (the GGN's approximate kernel)."""
    coef = eps @ eigenvectors
    out = torch.zeros_like(eps)
    if image:
        out = out + math.sqrt(image) * (coef / (eigenvalues + alpha).sqrt()) @ eigenvectors.T
    if kernel:
        out = out + math.sqrt(kernel / alpha) * (eps - coef @ eigenvectors.T)
    return out


class FactorLaplace:
    """Laplace approximation :math:`\\mathcal N(\\hat\\theta, (G + \\alpha I)^{-1})` over a model's latent sites
    (module docstring).

    Parameters
    ----------
    model : callable
        A Pyro model ``model(x, y=None, ...)`` recording its network output as the deterministic site ``f``.
    values : dict of str to torch.Tensor
        The MAP :math:`\\hat\\theta` of every latent site (e.g. from :func:`fit_map`).
    x : torch.Tensor
        Training inputs: the GGN is summed over them.
    likelihood : {"gaussian", "categorical"}
    noise_scale : float
        Gaussian observation noise sigma.
    structure : {"lowrank", "diag", "full"}
    rank : int
        k, the number of Lanczos eigenpairs of ``"lowrank"`` (at most D - 1).
    prior_precision : float
        alpha > 0.
    complement : {"prior", "none"}
        ``"lowrank"`` only: the prior variance 1/alpha in the directions outside the top-k eigenspace, or nothing.
    chunk_size : int
        Rows per batched reverse-mode pass of the ``"diag"`` structure.
    batch_size : int, optional
        Data chunk of the GGN-vector products (:class:`FactorGGN`): bounds their memory on large training sets.

    Attributes
    ----------
    mean : torch.Tensor
        :math:`\\hat\\theta`, flat (D,).
    eigenvalues, eigenvectors : torch.Tensor
        ``"lowrank"``/``"full"``: the kept spectrum of G (clamped at 0) and its orthonormal eigenvectors (D, k).
    ggn_diagonal : torch.Tensor
        ``"diag"``: diag(G).
    curvature_seconds : float
        Wall time of the curvature computation.
    tuned_noise_scale : float
        The Gaussian noise chosen with alpha by :meth:`tune_prior_precision` (``noise_scale`` until then, or when
        no ``noise_grid`` is given); ``noise_curve`` maps every alpha of the last search to its best noise.
    """

    def __init__(self, model: Callable, values: dict[str, torch.Tensor], x: torch.Tensor, *,
                 likelihood: str = "gaussian", noise_scale: float = 1.0, structure: str = "lowrank", rank: int = 20,
                 prior_precision: float = 1.0, complement: str = "prior", chunk_size: int = 256,
                 batch_size: int | None = None) -> None:
        self.structure = check_choice(structure, "structure", STRUCTURES)
        self.complement = check_choice(complement, "complement", ("prior", "none"))
        self.model, self.likelihood, self.noise_scale = model, likelihood, float(noise_scale)
        self.ggn = FactorGGN(model, values, x, likelihood=likelihood, noise_scale=noise_scale, batch_size=batch_size)
        self.layout = SiteLayout(values)
        self.mean = self.layout.flatten({k: v.detach() for k, v in values.items()})
        self.prior_precision = prior_precision
        self.tuned_noise_scale = self.noise_scale
        self.noise_curve: dict[float, float] = {}
        self.plate_depth = max(1, max_plate_nesting(model, x))
        size = self.layout.num_parameters
        start = time.perf_counter()
        self.eigenvalues = self.eigenvectors = self.ggn_diagonal = None
        if self.structure == "lowrank":
            rank = check_positive_int(rank, "rank")
            if rank >= size:
                raise ValueError(f"rank must be below the number of parameters D = {size} for structure='lowrank' "
                                 f"(use structure='full'), got rank={rank}")
            eigenvalues, self.eigenvectors = top_eigenpairs(self.ggn, rank)
            self.eigenvalues = eigenvalues.clamp_min(0.0)
        elif self.structure == "full":
            eigenvalues, self.eigenvectors = torch.linalg.eigh(self.ggn.dense())
            self.eigenvalues = eigenvalues.clamp_min(0.0)
        else:
            self.ggn_diagonal = self.ggn.diagonal(check_positive_int(chunk_size, "chunk_size")).clamp_min(0.0)
        self.curvature_seconds = time.perf_counter() - start

    @property
    def prior_precision(self) -> float:
        """alpha, the scalar prior precision (settable; nothing is recomputed)."""
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float) -> None:
        value = float(value)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"prior_precision must be a finite number > 0, got {value!r}")
        self._prior_precision = value

    @property
    def num_parameters(self) -> int:
        """Stored numbers: the mean (D), the curvature (k(D + 1) or D) and alpha."""
        size = self.layout.num_parameters
        stored = self.ggn_diagonal.numel() if self.ggn_diagonal is not None else self.eigenvectors.numel() + \
            self.eigenvalues.numel()
        return size + stored + 1

    def _complement_weight(self) -> float:
        return 1.0 if self.structure == "lowrank" and self.complement == "prior" else 0.0

    def scale_noise(self, eps: torch.Tensor) -> torch.Tensor:
        """:math:`\\Sigma^{1/2}\\varepsilon` for standard normal ``eps`` of shape ``(S, D)`` (module docstring)."""
        alpha = self.prior_precision
        if self.ggn_diagonal is not None:
            return eps / (self.ggn_diagonal + alpha).sqrt()
        return lowrank_scale_noise(eps, self.eigenvalues, self.eigenvectors, alpha, image=1.0,
                                   kernel=self._complement_weight())

    def posterior_variance(self) -> torch.Tensor:
        """diag(Sigma), length D."""
        alpha = self.prior_precision
        if self.ggn_diagonal is not None:
            return 1.0 / (self.ggn_diagonal + alpha)
        squares = self.eigenvectors.square()
        return squares @ (1.0 / (self.eigenvalues + alpha)) + self._complement_weight() / alpha * (
            1.0 - squares.sum(1))

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """S flat parameter draws :math:`\\hat\\theta + \\Sigma^{1/2}\\varepsilon`, shape ``(S, D)``."""
        num_samples = check_positive_int(num_samples, "num_samples")
        eps = torch.randn(num_samples, self.mean.numel(), dtype=self.mean.dtype, device=self.mean.device,
                          generator=generator)
        return self.mean + self.scale_noise(eps)

    def sample_values(self, num_samples: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """:meth:`sample` as ``{site: (S, *shape)}``."""
        return self.layout.unflatten(self.sample(num_samples, generator))

    def outputs(self, x: torch.Tensor, parameters: torch.Tensor, *, linearised: bool = False) -> torch.Tensor:
        """Network outputs at flat parameter draws ``parameters`` (S, D): sampled :math:`f(x; \\theta_s)` or
        linearised :math:`f(x; \\hat\\theta) + J_x(\\theta_s - \\hat\\theta)`; shape ``(S, N)`` or ``(S, N, C)``."""
        draws = self.layout.unflatten(parameters)
        if not linearised:
            return model_outputs(self.model, draws, x, batched=True, plate_depth=self.plate_depth)
        names = self.layout.names
        base = self.layout.unflatten(self.mean.expand_as(parameters).contiguous())
        tangent = tuple(draws[n] - base[n] for n in names)

        def network(*tensors: torch.Tensor) -> torch.Tensor:
            return model_outputs(self.model, dict(zip(names, tensors)), x, batched=True,
                                 plate_depth=self.plate_depth)

        with torch.enable_grad():  # the layers' gradient-free fast path cannot see forward-mode dual tensors
            value, directional = jvp(network, tuple(base[n] for n in names), tangent)
        return value + directional

    def predictive_outputs(self, x: torch.Tensor, num_samples: int, *, linearised: bool = False,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """S predictive output draws at ``x`` (:meth:`sample` then :meth:`outputs`), without gradients."""
        with torch.no_grad():
            parameters = self.sample(num_samples, generator)
        return self.outputs(x, parameters, linearised=linearised).detach()

    def tune_prior_precision(self, x: torch.Tensor, y: torch.Tensor, *, grid: Sequence[float] | None = None,
                             num_samples: int = 32, linearised: bool = False, seed: int = 0,
                             noise_grid: Sequence[float] | None = None) -> dict[float, float]:
        r"""Set alpha to the grid value with the smallest validation NLL of the mixture predictive (sampled or
        linearised; the same S standard-normal draws for every alpha, so the curve is smooth). The default grid is
        :math:`10^{-2} \dots 10^{6}`, three values per decade; a ``RuntimeWarning`` says when the best value is at
        its edge. Returns ``{alpha: NLL per datum}``; alpha is left unchanged when the search fails.

        With ``noise_grid`` (Gaussian likelihood only) the observation noise is tuned jointly: the NLL at each alpha
        is the smallest over the noise values, and the noise of the best pair is kept in :attr:`tuned_noise_scale`
        (the sampler itself does not use the noise). Without it, a training noise larger than the MAP's residuals
        already over-disperses the predictive and pushes alpha to the top of the grid.

        Raises ``ValueError`` for an empty grid or a value that is not finite and > 0, and ``FloatingPointError``
        when every grid value gives a non-finite NLL."""
        grid = DEFAULT_PRIOR_PRECISION_GRID.tolist() if grid is None else [float(a) for a in grid]
        if not grid:
            raise ValueError("grid must hold at least one prior precision, got an empty sequence")
        bad = [a for a in grid if not (a > 0 and math.isfinite(a))]
        if bad:
            raise ValueError(f"grid must hold finite prior precisions > 0, got {bad}")
        generator = torch.Generator(device=self.mean.device).manual_seed(seed)
        eps = torch.randn(check_positive_int(num_samples, "num_samples"), self.mean.numel(), dtype=self.mean.dtype,
                          device=self.mean.device, generator=generator)
        noises = [self.noise_scale]
        if noise_grid is not None:
            if self.likelihood != "gaussian":
                raise ValueError(f"noise_grid is for the Gaussian likelihood, got likelihood={self.likelihood!r}")
            noises = [float(v) for v in noise_grid]
            if not noises or not all(v > 0 and math.isfinite(v) for v in noises):
                raise ValueError(f"noise_grid must hold finite noise scales > 0, got {noises}")
        before, curve, best_noise = self.prior_precision, {}, {}
        try:
            for alpha in grid:
                self.prior_precision = alpha
                with torch.no_grad():
                    parameters = self.mean + self.scale_noise(eps)
                f = self.outputs(x, parameters, linearised=linearised).detach()
                nlls = [-float(predictive_log_density(f, y, self.likelihood, noise).mean()) for noise in noises]
                nlls = [v if math.isfinite(v) else math.inf for v in nlls]
                index = min(range(len(noises)), key=nlls.__getitem__)
                curve[alpha], best_noise[alpha] = nlls[index], noises[index]
        finally:
            self.prior_precision = before
        best = min(curve, key=curve.get)
        if not math.isfinite(curve[best]):
            raise FloatingPointError(f"the validation NLL is non-finite for every prior precision of the grid {grid}")
        self.noise_curve = best_noise
        if len(noises) > 1 and best_noise[best] in (min(noises), max(noises)):
            warnings.warn(f"the tuned noise scale {best_noise[best]:.3g} is at the edge of noise_grid "
                          f"[{min(noises):.3g}, {max(noises):.3g}]; widen it (are the targets standardised?)",
                          RuntimeWarning, stacklevel=2)
        if len(grid) > 1 and best in (min(grid), max(grid)):
            warnings.warn(f"the tuned prior precision {best:.3g} is at the edge of the grid [{min(grid):.3g}, "
                          f"{max(grid):.3g}]; widen the grid", RuntimeWarning, stacklevel=2)
        self.prior_precision, self.tuned_noise_scale = best, best_noise[best]
        logger.info("prior precision %.3g, noise %.3g (validation NLL %.4f)", best, best_noise[best], curve[best])
        return curve

