r"""The kernel view of a trained low-rank network: how many parameter directions the data cannot see, how many of
them the GL(r) gauge explains, and how much of a Laplace posterior's variance they carry.

With J the (N·O) x D Jacobian of the training outputs and :math:`G = J^\top\Lambda J` the GGN
(:class:`~.factor_ggn.FactorGGN`), :math:`\operatorname{rank} G \le \min(N·O, D)`, so the kernel has dimension at
least :math:`D - N·O`; it is larger when the network cannot realise N·O independent output perturbations (ReLU units
that are off on every input, the scaling symmetry of every unit, and for a factorised layer the :math:`r^2`
gauge directions :math:`(AX, -BX^\top)`, which lie in the kernel at every input whatever N is).

For the full Laplace approximation :math:`\Sigma = (G + \alpha I)^{-1}` with eigenvalues :math:`\lambda_i` of G, the
share of the total posterior variance :math:`\operatorname{tr}\Sigma = \sum_i 1/(\lambda_i + \alpha)` that lies in
the kernel (:math:`\lambda_i = 0`) is

.. math::

    s(\alpha) = \frac{\dim\ker G / \alpha}{\sum_i 1/(\lambda_i + \alpha)},

which tends to 1 as :math:`\alpha \to 0`: a weakly regularised weight-space Laplace spends almost all of its variance
on directions that do not change the training predictions (and, through the network's curvature, change the others).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .factor_ggn import FactorGGN, gauge_tangent

__all__ = ["KernelSummary", "ggn_kernel_summary", "kernel_variance_share"]


@dataclass
class KernelSummary:
    """What :func:`ggn_kernel_summary` measures.

    Attributes
    ----------
    num_parameters : int
        D.
    num_outputs : int
        N·O, the number of training outputs.
    ggn_rank : int
        Numerical rank of G (singular values of its square root above ``rtol`` times the largest).
    kernel_dim : int
        D - rank.
    dimension_bound : int
        max(D - N·O, 0), the kernel dimension that counting alone guarantees.
    gauge_dim : int
        Sum over factorised layers of r^2.
    gauge_ratio : float
        Largest ||J t|| / ||J d|| over the layers, t a gauge tangent for a random X (unit norm) and d a random unit
        direction: zero up to rounding when the gauge lies in the kernel.
    eigenvalues : torch.Tensor
        The full spectrum of G, descending (D,).
    """

    num_parameters: int
    num_outputs: int
    ggn_rank: int
    kernel_dim: int
    dimension_bound: int
    gauge_dim: int
    gauge_ratio: float
    eigenvalues: torch.Tensor = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        """The scalar fields."""
        return {key: value for key, value in vars(self).items() if not isinstance(value, torch.Tensor)}


def ggn_kernel_summary(model: nn.Module | Callable, values: dict[str, torch.Tensor], x: torch.Tensor, *,
                       likelihood: str = "gaussian", noise_scale: float = 1.0, rtol: float | None = None,
                       seed: int = 0) -> KernelSummary:
    """Rank and kernel of the GGN at ``values`` over inputs ``x``, and the gauge check (module docstring).

    G is formed through its square root (N·O reverse-mode products, :meth:`FactorGGN.sqrt_rows`), so this is for
    networks and datasets of moderate size. ``rtol`` defaults to max(N·O, D) times the dtype's machine epsilon.
    Factorised layers are found as the submodules of ``model`` with ``factor_sites()`` whose sites are in ``values``.
    """
    ggn = FactorGGN(model, values, x, likelihood=likelihood, noise_scale=noise_scale)
    root = ggn.sqrt_rows()
    singular = torch.linalg.svdvals(root)
    size, outputs = ggn.num_parameters, root.shape[0]
    tol = (max(size, outputs) * torch.finfo(root.dtype).eps) if rtol is None else float(rtol)
    rank = int((singular > tol * singular.max()).sum()) if singular.numel() else 0
    eigenvalues = torch.zeros(size, dtype=root.dtype, device=root.device)
    eigenvalues[: singular.numel()] = singular.square()
    generator = torch.Generator().manual_seed(seed)
    gauge_dim, ratio = 0, 0.0
    modules = model.modules() if isinstance(model, nn.Module) else ()
    for module in modules:
        sites = getattr(module, "factor_sites", None)
        if sites is None:
            continue
        for a_site, b_site in sites().values():
            if a_site not in values or b_site not in values:
                continue
            r = values[a_site].shape[-1]
            gauge_dim += r * r
            generator_matrix = torch.randn(r, r, generator=generator).to(values[a_site])
            tangent = ggn.flatten(gauge_tangent(values, a_site, b_site, generator_matrix))
            direction = torch.randn(size, generator=generator).to(tangent)
            ratio = max(ratio, float(ggn.jvp(tangent / tangent.norm()).norm() / ggn.jvp(direction / direction.norm())
                                     .norm()))
    return KernelSummary(size, outputs, rank, size - rank, max(size - outputs, 0), gauge_dim, ratio, eigenvalues)


def kernel_variance_share(eigenvalues: torch.Tensor, prior_precisions: Sequence[float] | torch.Tensor, *,
                          kernel_dim: int | None = None, rtol: float = 1e-10) -> torch.Tensor:
    r"""Share :math:`s(\alpha)` of the full Laplace posterior's total variance that lies in the GGN's kernel, for
    every alpha of ``prior_precisions`` (module docstring). ``eigenvalues``: the full spectrum of G (length D);
    ``kernel_dim`` defaults to the number of eigenvalues at most ``rtol`` times the largest; pass
    ``summary.kernel_dim`` of :func:`ggn_kernel_summary` to use its (singular-value) rank criterion instead. The
    result has the dtype and device of ``eigenvalues``."""
    spectrum = eigenvalues.clamp_min(0.0)
    if kernel_dim is None:
        kernel_dim = int((spectrum <= rtol * spectrum.max()).sum())
    alphas = torch.as_tensor(prior_precisions, dtype=spectrum.dtype, device=spectrum.device)
    if (alphas <= 0).any() or not torch.isfinite(alphas).all():
        raise ValueError(f"prior_precisions must be finite and > 0, got {alphas.tolist()}")
    kernel = kernel_dim / alphas
    nonzero = torch.sort(spectrum, descending=True).values[: spectrum.numel() - kernel_dim]
    image = (1.0 / (nonzero[None, :] + alphas[:, None])).sum(1)
    return kernel / (kernel + image)
