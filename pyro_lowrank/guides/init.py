r"""Initial values for the factor means (and the guide's scales).

* Variance matching (random): with factor entries :math:`a_{ik}, b_{jk} \sim \mathcal N(0, s^2)`,
  :math:`\operatorname{Var} W_{ij} = r s^4`. Choosing :math:`s = (\sigma_W^2 / r)^{1/4}` matches a target weight
  variance :math:`\sigma_W^2` (He: :math:`\sigma_W^2 = \text{gain}/n_\text{in}` with gain 2 for ReLU).
* SVD: for a trained weight :math:`W = U \Sigma V^\top`, :math:`\mu_A = U_r \Sigma_r^{1/2}`,
  :math:`\mu_B = V_r \Sigma_r^{1/2}`, so :math:`\mu_A \mu_B^\top` is the best rank-r approximation of W
  (Eckart-Young-Mirsky) with balanced factor norms.

The guide's initial standard deviation is :math:`\eta s` (the paper uses :math:`\eta` = 0.1 or 0.01).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pyro_lowrank._validation import check_positive, check_rank

__all__ = ["FactorInit", "svd_init", "variance_matching_init"]


class FactorInit(NamedTuple):
    """Initial factor means and the per-entry scale s they were drawn with (or the equivalent for SVD init)."""

    a_loc: torch.Tensor
    b_loc: torch.Tensor
    entry_scale: float


def variance_matching_init(
    out_features: int,
    in_features: int,
    rank: int,
    gain: float = 2.0,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> FactorInit:
    r"""Draw :math:`\mu_A \sim \mathcal N(0, s^2)^{m\times r}`, :math:`\mu_B \sim \mathcal N(0, s^2)^{n\times r}`,
    :math:`s = (\text{gain} / (n_\text{in} r))^{1/4}`, so that :math:`\operatorname{Var}(\mu_A\mu_B^\top)_{ij}
    = \text{gain}/n_\text{in}`.
    """
    rank = check_rank(rank, out_features, in_features)
    check_positive(gain, "gain")
    entry_scale = (gain / in_features / rank) ** 0.25
    kwargs = {"generator": generator, "dtype": dtype, "device": device}
    a_loc = entry_scale * torch.randn(out_features, rank, **kwargs)
    b_loc = entry_scale * torch.randn(in_features, rank, **kwargs)
    return FactorInit(a_loc, b_loc, entry_scale)


def svd_init(weight: torch.Tensor, rank: int) -> FactorInit:
    r"""Balanced truncated SVD of ``weight`` (shape ``(out, in)``): :math:`\mu_A = U_r\Sigma_r^{1/2}`,
    :math:`\mu_B = V_r\Sigma_r^{1/2}`.

    The returned ``entry_scale`` is the variance-matching scale :math:`(\overline{W^2}/r)^{1/4}` of the trained
    weight, used to size the guide's initial standard deviations.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a matrix (out_features, in_features), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    rank = check_rank(rank, out_features, in_features)
    weight = weight.detach()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    a_loc = u[:, :rank] * root
    b_loc = vh[:rank].transpose(0, 1) * root
    mean_square = float(weight.square().mean())
    entry_scale = (max(mean_square, torch.finfo(weight.dtype).tiny) / rank) ** 0.25
    return FactorInit(a_loc.contiguous(), b_loc.contiguous(), entry_scale)
