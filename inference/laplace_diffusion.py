r"""Laplace diffusion (Roy et al., NeurIPS 2024, "Reparameterization invariance in approximate Bayesian inference"):
a random walk that re-linearises the network at every step, in factor space.

Every particle starts at the MAP :math:`\theta_0 = \hat\theta` and takes T steps

.. math::

    \theta_{t+1} = \theta_t + T^{-1/2}\, s_t, \qquad G(\theta_t) \approx U_t \operatorname{diag}(\lambda_t) U_t^\top
    \ \text{(top-k Lanczos eigenpairs at the current point)},

with :math:`\varepsilon_t \sim \mathcal N(0, I_D)` and, by ``variant``,

* ``"image"`` (Roy et al.'s "non-kernel-eigvals"): :math:`s_t = U_t (\lambda_t + \alpha)^{-1/2} \odot
  U_t^\top\varepsilon_t`, a step in the GGN's image, scaled by the posterior precision there;
* ``"kernel"``: :math:`s_t = \alpha^{-1/2} (I - U_t U_t^\top)\varepsilon_t`, a prior-scaled step in the orthogonal
  complement of the top-k eigenspace. That complement contains the kernel of :math:`G(\theta_t)` (the directions
  that do not change the training predictions: gauge orbits, ReLU rescalings, directions the data do not see) and
  equals it only when k reaches the rank of G; with a smaller k it also holds image directions of curvature below
  :math:`\lambda_k`, which this step moves along with the prior's variance;
* ``"full"``: their sum, a low-rank Laplace step (:func:`~.factor_laplace.lowrank_scale_noise`).

Because the T step variances add up to one Laplace covariance, **one step (T = 1) is a low-rank Laplace sample** at
the MAP (exactly, up to the convergence of the Lanczos Ritz pairs): ``"image"`` gives :class:`~.factor_laplace.FactorLaplace` with ``complement="none"``,
``"full"`` with ``complement="prior"``. With T > 1 the eigenbasis follows the particle, so the walk bends with the
set of functionally equivalent parameters instead of leaving it along a fixed tangent; for a linear model (constant
G) it is the Laplace approximation again. Cost: S·T Lanczos runs of m ≈ 2k GGN-vector products each. The paths are advanced together: a batched GGN-vector
product (:func:`batched_ggn_matvec`) runs S networks in one vectorised forward-mode and one reverse-mode pass, and a
batched Lanczos with full reorthogonalisation (:func:`batched_lanczos`) gives every path its own top-k Ritz pairs,
as the reference implementation's fixed-iteration Lanczos does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jvp, vjp
from tqdm.auto import tqdm

from pyro_lowrank._validation import check_choice, check_positive_int

from .factor_ggn import SiteLayout, output_hessian_product, output_matrix
from .predict import max_plate_nesting
from .factor_laplace import lowrank_scale_noise

__all__ = ["DIFFUSION_VARIANTS", "DiffusionSamples", "batched_ggn_matvec", "batched_lanczos", "laplace_diffusion"]

logger = logging.getLogger(__name__)

DIFFUSION_VARIANTS = {"image": (1.0, 0.0), "kernel": (0.0, 1.0), "full": (1.0, 1.0)}


@dataclass
class DiffusionSamples:
    """The endpoints of the diffusion paths.

    Attributes
    ----------
    layout : SiteLayout
        Flat vector <-> site values.
    samples : torch.Tensor
        (S, D) endpoints.
    start : torch.Tensor
        (D,) the MAP.
    num_products : int
        GGN-vector products spent.
    seconds : float
        Wall time.
    """

    layout: SiteLayout
    samples: torch.Tensor
    start: torch.Tensor
    num_products: int
    seconds: float

    def as_values(self) -> dict[str, torch.Tensor]:
        """``{site: (S, *shape)}``."""
        return self.layout.unflatten(self.samples)


def laplace_diffusion(model: Callable, values: dict[str, torch.Tensor], x: torch.Tensor, *,
                      likelihood: str = "gaussian", noise_scale: float = 1.0, prior_precision: float = 1.0,
                      rank: int = 20, num_steps: int = 5, num_samples: int = 16, variant: str = "image",
                      lanczos_iterations: int | None = None, chunk_size: int = 64, seed: int = 0,
                      progress: bool = False) -> DiffusionSamples:
    """Run ``num_samples`` Laplace-diffusion paths of ``num_steps`` steps from ``values`` (module docstring).

    Parameters
    ----------
    model : callable
        A Pyro model recording its network output as the site ``f``.
    values : dict of str to torch.Tensor
        The MAP of every latent site.
    x : torch.Tensor
        Training inputs (the GGN is summed over them).
    likelihood, noise_scale : as for :class:`~.factor_ggn.FactorGGN`.
    prior_precision : float
        alpha > 0.
    rank : int
        k eigenpairs per step, below D.
    num_steps : int
        T >= 1.
    num_samples : int
        S paths.
    variant : {"image", "kernel", "full"}
    lanczos_iterations : int, optional
        Lanczos iterations m per step (default max(2k, k + 10), at most D).
    chunk_size : int
        Paths advanced together in one batched Lanczos run (memory: chunk_size * m * D numbers).
    seed : int
        Seed of the step noise (a private generator: the global RNG is not used for it). The paths of one chunk share
        the generator, so the draws for a seed depend on ``chunk_size`` too.
    progress : bool
        A tqdm bar over the paths.
    """
    image, kernel = DIFFUSION_VARIANTS[check_choice(variant, "variant", tuple(DIFFUSION_VARIANTS))]
    likelihood = check_choice(likelihood, "likelihood", ("gaussian", "categorical"))
    if not (noise_scale > 0 and math.isfinite(noise_scale)):
        raise ValueError(f"noise_scale must be a finite number > 0, got {noise_scale!r}")
    num_steps = check_positive_int(num_steps, "num_steps")
    num_samples = check_positive_int(num_samples, "num_samples")
    rank = check_positive_int(rank, "rank")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    alpha = float(prior_precision)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"prior_precision must be a finite number > 0, got {prior_precision!r}")
    layout = SiteLayout(values)
    start = layout.flatten({k: v.detach() for k, v in values.items()})
    if rank >= start.numel():
        raise ValueError(f"rank must be below the number of parameters D = {start.numel()}, got rank={rank}")
    generator = torch.Generator(device=start.device).manual_seed(seed)
    num_iterations = max(2 * rank, rank + 10) if lanczos_iterations is None else \
        check_positive_int(lanczos_iterations, "lanczos_iterations")
    num_iterations = min(num_iterations, start.numel())
    if num_iterations < rank:
        raise ValueError(f"lanczos_iterations must be at least rank = {rank}, got {num_iterations}")
    plate_depth = max(1, max_plate_nesting(model, x))
    clock = time.perf_counter()
    products = 0
    scale = 1.0 / math.sqrt(num_steps)
    endpoints = []
    chunks = range(0, num_samples, chunk_size)
    for first in tqdm(chunks, desc="Laplace diffusion", disable=not progress, leave=False):
        count = min(chunk_size, num_samples - first)
        theta = start.expand(count, -1).clone()
        for step in range(num_steps):
            matvec = batched_ggn_matvec(model, layout, theta, x, likelihood=likelihood, noise_scale=noise_scale,
                                        plate_depth=plate_depth)
            probe = torch.randn(theta.shape, dtype=theta.dtype, device=theta.device, generator=generator)
            eigenvalues, eigenvectors = batched_lanczos(matvec, probe, rank, num_iterations, generator=generator)
            products += count * num_iterations
            eps = torch.randn(theta.shape, dtype=theta.dtype, device=theta.device, generator=generator)
            move = torch.stack([lowrank_scale_noise(e[None], lam, vec, alpha, image=image, kernel=kernel)[0]
                                for e, lam, vec in zip(eps, eigenvalues.clamp_min(0.0), eigenvectors)])
            theta = theta + scale * move
            if not torch.isfinite(theta).all():
                raise FloatingPointError(f"Laplace diffusion left the finite reals at step {step + 1}; use a larger "
                                         f"prior_precision (got {alpha}) or fewer steps")
        endpoints.append(theta)
    samples = torch.cat(endpoints)
    seconds = time.perf_counter() - clock
    logger.info("Laplace diffusion: %d paths x %d steps, %d GGN-vector products, %.2f s", num_samples, num_steps,
                products, seconds)
    return DiffusionSamples(layout, samples, start, products, seconds)


def batched_ggn_matvec(model: Callable, layout: SiteLayout, theta: torch.Tensor, x: torch.Tensor, *,
                       likelihood: str = "gaussian", noise_scale: float = 1.0, plate_depth: int = 1
                       ) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""GGN-vector products at S points at once: returns ``matvec(V)`` with ``V`` of shape (S, D) and row s equal to
    :math:`G(\theta_s) v_s`. The S networks run in one vectorised pass (:func:`~.factor_ggn.model_outputs` with
    ``batched=True``); because output s depends only on :math:`\theta_s`, one reverse-mode product of the batched
    outputs returns every :math:`J_s^\top u_s` at once. The reverse pass is recorded once per point."""
    names = layout.names
    point = tuple(layout.unflatten(theta).values())

    def network(*tensors: torch.Tensor) -> torch.Tensor:
        return output_matrix(model, dict(zip(names, tensors)), x, likelihood, batched=True, plate_depth=plate_depth)

    outputs, pullback = vjp(network, *point)
    outputs = outputs.detach()

    def matvec(v: torch.Tensor) -> torch.Tensor:
        tangent = tuple(layout.unflatten(v).values())
        ju = jvp(network, point, tangent)[1]
        lam = output_hessian_product(outputs, ju, likelihood, noise_scale)
        return layout.flatten(dict(zip(names, pullback(lam))))

    return matvec


def batched_lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, k: int, num_iterations: int,
                    *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Top-k Ritz pairs of S symmetric positive semi-definite operators from m Lanczos iterations each.

    ``matvec`` maps (S, D) to (S, D), row s through operator s; ``start`` (S, D) are the start vectors. Every
    iteration is fully reorthogonalised (twice, classical Gram-Schmidt) against the basis
    :math:`Q_s \in \mathbb R^{D \times m}`; when a Krylov space is exhausted (:math:`\beta` at most
    :math:`\sqrt{\epsilon}` times the running estimate of :math:`\|A_s\|`, a test independent of the operator's scale;
    e.g. a GGN of rank below m) the next vector is a fresh random one orthogonal to the basis, with :math:`\beta = 0`, so the
    tridiagonal :math:`T_s = Q_s^\top A_s Q_s` stays exact. Returns eigenvalues (S, k), descending, and orthonormal
    eigenvectors (S, D, k): :math:`Q_s` times the top eigenvectors of :math:`T_s`.
    """
    num, size = start.shape
    m = min(num_iterations, size)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] for {m} Lanczos iterations, got {k}")
    basis = start.new_zeros(num, m, size)
    diagonal, offdiagonal = start.new_zeros(num, m), start.new_zeros(num, m)
    q = start / start.norm(dim=1, keepdim=True)
    tiny = torch.finfo(start.dtype).eps ** 0.5
    norm = start.new_zeros(num)
    for j in range(m):
        basis[:, j] = q
        w = matvec(q)
        diagonal[:, j] = (w * q).sum(1)
        for _ in range(2):
            w = w - torch.einsum("sjd,sj->sd", basis[:, : j + 1], torch.einsum("sjd,sd->sj", basis[:, : j + 1], w))
        beta = w.norm(dim=1)
        if j == m - 1:
            break
        norm = torch.maximum(norm, torch.maximum(diagonal[:, j].abs(), beta))  # running estimate of ||A_s||
        stalled = beta <= tiny * norm
        stalled = stalled | (norm == 0)
        if stalled.any():
            fresh = torch.randn(int(stalled.sum()), size, dtype=start.dtype, device=start.device, generator=generator)
            for _ in range(2):
                fresh = fresh - torch.einsum("sjd,sj->sd", basis[stalled, : j + 1],
                                             torch.einsum("sjd,sd->sj", basis[stalled, : j + 1], fresh))
            w[stalled] = fresh / fresh.norm(dim=1, keepdim=True)
            beta = torch.where(stalled, torch.zeros_like(beta), beta)
        offdiagonal[:, j] = beta
        q = torch.where(stalled[:, None], w, w / torch.where(stalled, torch.ones_like(beta), beta)[:, None])
    tridiagonal = torch.diag_embed(diagonal) + torch.diag_embed(offdiagonal[:, : m - 1], 1) + \
        torch.diag_embed(offdiagonal[:, : m - 1], -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    values, vectors = values.flip(-1)[:, :k], vectors.flip(-1)[:, :, :k]
    return values, torch.einsum("sjd,sjk->sdk", basis, vectors)
