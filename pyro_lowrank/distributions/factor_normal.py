r"""The guide's per-entry Normal, with a lean reparameterised draw and a lean KL against an i.i.d. Normal prior.

:class:`FactorNormal` is :class:`pyro.distributions.Normal` (same law, same ``log_prob``, same entropy); only the
number of tensor operations differs, which is what a training step of a small network costs once compiled
(:class:`~pyro_lowrank.inference.JitTraceMeanField_ELBO` replays one recorded operation per tensor operation):

* ``rsample``: :math:`\mu + \sigma \varepsilon` with :math:`\varepsilon` from one ``torch.randn`` (torch's
  ``Normal.rsample`` records zeros, ones and ``normal`` under tracing, and broadcasts ``loc`` and ``scale`` even when
  they already have one shape). ``torch.randn`` and ``normal_`` draw the same numbers from the generator.
* ``KL(FactorNormal(mu, sigma) || Normal(m, s))``, per entry,

  .. math:: \log s - \log\sigma + \frac{\sigma^2 + (\mu - m)^2}{2 s^2} - \frac12,

  with :math:`m` and :math:`s` read as scalars when the prior is an i.i.d. prior expanded from one entry (the
  factor priors of :mod:`~pyro_lowrank.distributions.priors`), so no full-size prior tensor is formed.
"""

from __future__ import annotations

import torch
from pyro.distributions import Normal
from torch.distributions import Distribution, kl

__all__ = ["FactorNormal"]


class FactorNormal(Normal):
    """``Normal(loc, scale)`` whose ``rsample`` is one ``randn`` and whose KL against a Normal is registered lean.

    Parameters
    ----------
    loc, scale : torch.Tensor
        Means and standard deviations (> 0); broadcast together unless they already share a shape.
    validate_args : bool, optional
        As for torch distributions.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None) -> None:
        if isinstance(loc, torch.Tensor) and isinstance(scale, torch.Tensor) and loc.shape == scale.shape:
            self.loc, self.scale = loc, scale
            Distribution.__init__(self, loc.shape, validate_args=validate_args)
        else:
            super().__init__(loc, scale, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # noqa: D401 - torch's signature
        new = self._get_checked_instance(FactorNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """:math:`\\mu + \\sigma\\varepsilon`, :math:`\\varepsilon \\sim N(0, I)` of shape ``sample_shape + batch``."""
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + eps * self.scale


def _as_scalar(value: torch.Tensor) -> torch.Tensor | None:
    """The one entry of a tensor expanded from a single value (all strides 0), as a 0-d view; else None."""
    if value.dim() == 0:
        return value
    if all(stride == 0 for stride in value.stride()):
        return value.as_strided((), ())
    return None


@kl.register_kl(FactorNormal, torch.distributions.Normal)
def _kl_factor_normal_normal(q: FactorNormal, p: torch.distributions.Normal) -> torch.Tensor:
    loc, scale = _as_scalar(p.loc), _as_scalar(p.scale)
    if loc is None or scale is None:
        loc, scale = p.loc, p.scale
    half_precision = 0.5 / scale.square()
    return (q.scale.square() + (q.loc - loc).square()) * half_precision - q.scale.log() + (scale.log() - 0.5)
