"""Factor priors as modules: their constants are buffers, so ``module.to(device)`` moves them with the layer.

A prior is called with a factor shape and returns one Pyro distribution whose event is the whole factor
(``.expand(shape).to_event(len(shape))``), ready to be a single sample site. Entries are i.i.d. under the prior.
The implied prior on W = A B^T has Var(W_ij) = r (E a^2)^2, so the prior on W widens with the rank r.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Normal, TorchDistribution
from torch import nn

from pyro_lowrank._validation import check_positive, check_probability
from pyro_lowrank.distributions.log_uniform import LogUniform
from pyro_lowrank.distributions.scale_mixture import ScaleMixtureNormal

__all__ = ["FactorPrior", "GaussianPrior", "LogUniformPrior", "ScaleMixturePrior"]


class FactorPrior(nn.Module):
    """Base class: i.i.d. prior over the entries of a factor matrix (or a bias vector)."""

    def entry_distribution(self) -> TorchDistribution:
        """The scalar distribution of one entry (batch shape ``()``)."""
        raise NotImplementedError

    def forward(self, shape: tuple[int, ...] | torch.Size) -> TorchDistribution:
        """One distribution over a whole factor of ``shape`` (event shape ``shape``)."""
        shape = torch.Size(shape)
        return self.entry_distribution().expand(shape).to_event(len(shape))

    @property
    def entry_second_moment(self) -> float:
        """E a^2 = Var a + (E a)^2 of one entry; the implied prior on W = A B^T has Var W_ij = r (E a^2)^2 when
        the entries are zero-mean."""
        entry = self.entry_distribution()
        return float(entry.variance + entry.mean.square())


class GaussianPrior(FactorPrior):
    """Entries ~ N(loc, scale^2).

    Parameters
    ----------
    scale : float
        Prior standard deviation, > 0.
    loc : float
        Prior mean.
    """

    def __init__(self, scale: float = 1.0, loc: float = 0.0) -> None:
        super().__init__()
        check_positive(scale, "scale")
        self.register_buffer("loc", torch.tensor(float(loc)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def entry_distribution(self) -> TorchDistribution:
        return Normal(self.loc, self.scale)

    def extra_repr(self) -> str:
        return f"loc={self.loc.item():g}, scale={self.scale.item():g}"


class ScaleMixturePrior(FactorPrior):
    """Entries ~ pi N(0, scale1^2) + (1 - pi) N(0, scale2^2), the paper's default (pi=0.5, scale1=1, scale2=e^-6).

    Parameters
    ----------
    mixture_weight : float
        pi in (0, 1).
    scale1, scale2 : float
        Component standard deviations, > 0.
    """

    def __init__(self, mixture_weight: float = 0.5, scale1: float = 1.0, scale2: float = math.exp(-6.0)) -> None:
        super().__init__()
        check_probability(mixture_weight, "mixture_weight")
        check_positive(scale1, "scale1")
        check_positive(scale2, "scale2")
        self.register_buffer("mixture_weight", torch.tensor(float(mixture_weight)))
        self.register_buffer("scale1", torch.tensor(float(scale1)))
        self.register_buffer("scale2", torch.tensor(float(scale2)))

    def entry_distribution(self) -> TorchDistribution:
        return ScaleMixtureNormal(self.mixture_weight, self.scale1, self.scale2)

    def extra_repr(self) -> str:
        return (f"mixture_weight={self.mixture_weight.item():g}, scale1={self.scale1.item():g}, "
                f"scale2={self.scale2.item():g}")


class LogUniformPrior(FactorPrior):
    r"""Entries ~ the improper log-uniform prior :math:`p(w) \propto 1/|w|` of low-rank variational dropout (LRVD).

    Scale-invariant: it penalises the noise-to-signal ratio :math:`\alpha = \sigma^2/\mu^2` of each entry, never its
    size, so components whose ratio grows can be pruned (:func:`~pyro_lowrank.guides.prune_ranks`). The KL against a
    Gaussian guide is Molchanov et al.'s approximation; see :mod:`pyro_lowrank.distributions.log_uniform` for how the
    improper prior enters the ELBO. It has no parameters and cannot be sampled (no prior predictive checks); its
    buffer ``zero`` only carries the module's dtype and device (``.double()``, ``.to("cuda")``) to the distribution.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("zero", torch.zeros(()))

    def entry_distribution(self) -> TorchDistribution:
        return LogUniform(dtype=self.zero.dtype, device=self.zero.device)

    @property
    def entry_second_moment(self) -> float:
        """Infinite: the improper prior has no moments (a log-uniform prior implies no finite prior on W)."""
        return math.inf
