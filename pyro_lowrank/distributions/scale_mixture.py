r"""The zero-mean two-component Gaussian scale mixture of Blundell et al. (2015), the paper's factor prior.

.. math::

    p(x) = \pi\, \mathcal N(x; 0, \sigma_1^2) + (1 - \pi)\, \mathcal N(x; 0, \sigma_2^2),
    \qquad \operatorname{Var} x = \pi \sigma_1^2 + (1 - \pi) \sigma_2^2.

A wide component (sigma_1 = 1) and a spike (sigma_2 = e^-6) with pi = 0.5 by default. It has no closed-form KL to a
Gaussian, so the ELBO estimates that term by Monte Carlo.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import _standard_normal, broadcast_all

__all__ = ["ScaleMixtureNormal"]


class ScaleMixtureNormal(TorchDistribution):
    """Element-wise scale mixture ``pi N(0, scale1^2) + (1 - pi) N(0, scale2^2)``.

    Parameters
    ----------
    mixture_weight : float or torch.Tensor
        pi, the weight of the first component, in (0, 1).
    scale1, scale2 : float or torch.Tensor
        Standard deviations of the two components, > 0.
    """

    arg_constraints = {
        "mixture_weight": constraints.unit_interval,
        "scale1": constraints.positive,
        "scale2": constraints.positive,
    }
    support = constraints.real
    has_rsample = False

    def __init__(self, mixture_weight, scale1, scale2, validate_args: bool | None = None) -> None:
        self.mixture_weight, self.scale1, self.scale2 = broadcast_all(mixture_weight, scale1, scale2)
        super().__init__(self.mixture_weight.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "ScaleMixtureNormal":
        new = self._get_checked_instance(ScaleMixtureNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mixture_weight = self.mixture_weight.expand(batch_shape)
        new.scale1 = self.scale1.expand(batch_shape)
        new.scale2 = self.scale2.expand(batch_shape)
        super(ScaleMixtureNormal, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros_like(self.mixture_weight)

    @property
    def variance(self) -> torch.Tensor:
        return self.mixture_weight * self.scale1.square() + (1 - self.mixture_weight) * self.scale2.square()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        log_n1 = -0.5 * (value / self.scale1).square() - self.scale1.log() - half_log_2pi
        log_n2 = -0.5 * (value / self.scale2).square() - self.scale2.log() - half_log_2pi
        return torch.logaddexp(self.mixture_weight.log() + log_n1, torch.log1p(-self.mixture_weight) + log_n2)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            first = torch.rand(shape, dtype=self.scale1.dtype, device=self.scale1.device) < self.mixture_weight
            scale = torch.where(first, self.scale1.expand(shape), self.scale2.expand(shape))
            return scale * _standard_normal(shape, dtype=self.scale1.dtype, device=self.scale1.device)
