r"""The improper log-uniform prior of (sparse) variational dropout and its KL approximation.

The scale-invariant log-uniform prior :math:`p(w) \propto 1/|w|` (Kingma et al. 2015; Molchanov et al. 2017) is the
prior of low-rank variational dropout (LRVD, BayesLoRA). It is improper: :math:`\int 1/|w|\,dw = \infty`, so there is
no normalised density and :math:`\mathrm{KL}(q \,\|\, p)` is defined only up to an additive constant. For a Gaussian
:math:`q(w) = \mathcal N(\theta, \sigma^2)` with noise-to-signal ratio :math:`\alpha = \sigma^2/\theta^2`,

.. math::

    -\mathrm{KL}(q \,\|\, p) = \tfrac12 \log\alpha - \mathbb E_{\varepsilon \sim \mathcal N(1, \alpha)} \log|\varepsilon|
    + C,

a function of :math:`\alpha` alone (scale invariance). The constant is fixed by convention so that
:math:`-\mathrm{KL} \to 0` as :math:`\alpha \to \infty` (a weight that is pure noise costs nothing), which gives
:math:`C = -(\gamma + \log 2)/2` (:math:`\gamma` Euler's constant). Molchanov et al. (2017, eq. 14) approximate it by

.. math::

    -\mathrm{KL} \approx k_1\,\sigma(k_2 + k_3 \log\alpha) - \tfrac12 \log(1 + \alpha^{-1}) - k_1,
    \qquad k_1 = 0.63576,\ k_2 = 1.87320,\ k_3 = 1.48695,

with :math:`\sigma` the logistic sigmoid. Its largest absolute error is about 0.0094 nats per weight (at
:math:`\log\alpha \approx -3.5`; it is below 0.001 only outside about :math:`[-7.7, 2.8]`), which
:func:`log_uniform_kl_reference` (quadrature) lets the tests check.

**How the improper prior enters Pyro's ELBO.** :class:`LogUniform` is a sample-site distribution whose
``log_prob(w) = -log|w|`` is the unnormalised log density; it cannot be sampled. With
:class:`~pyro.infer.TraceMeanField_ELBO` (what :func:`~pyro_lowrank.inference.fit` uses), the KL term of a site whose
guide is Gaussian is read from the registered ``kl_divergence(Normal, LogUniform)``, which is the approximation above:
the ELBO is then :math:`\mathbb E_q \log p(y \mid \theta) - \mathrm{KL}_\text{approx}`, the objective of sparse
variational dropout. With :class:`~pyro.infer.Trace_ELBO` the Monte Carlo term :math:`\log p(w) - \log q(w)` uses the
unnormalised log density instead: its expectation is :math:`-\mathrm{KL}_\text{exact} + \tfrac12(\gamma + \log 2 +
\log 2\pi + 1) \approx -\mathrm{KL}_\text{exact} + 2.05` nats per weight (the exact KL, not the approximation; the
two differ by at most 0.0094 nats per weight), and its variance is larger, so prefer ``TraceMeanField_ELBO``.

**Prediction.** The improper prior cannot be sampled, so nothing that draws from the model's prior works: prior
predictive checks, and Pyro's :class:`~pyro.infer.Predictive`, which traces the model from its prior to count the
plates even when a guide is given. Use :func:`pyro_lowrank.predictive.predict` (it gives such sites a placeholder of
the right shape, dtype and device while counting plates) or ``pyro_lowrank.inference.predict``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import Normal, constraints, kl

__all__ = [
    "LOG_UNIFORM_KL_CONSTANTS", "LogUniform", "log_uniform_kl", "log_uniform_kl_reference", "noise_to_signal_log_ratio",
]

LOG_UNIFORM_KL_CONSTANTS = (0.63576, 1.87320, 1.48695)
"""(k1, k2, k3) of Molchanov et al. (2017)."""

_EPS = 1e-8  # keeps log(theta^2 + eps) finite at theta = 0 (as in the reference implementations)


def noise_to_signal_log_ratio(loc: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\alpha = \log\sigma^2 - \log(\theta^2 + \epsilon)`, :math:`\epsilon = 10^{-8}`, entrywise.

    Parameters
    ----------
    loc : torch.Tensor
        Means :math:`\theta`.
    log_variance : torch.Tensor
        :math:`\log\sigma^2`, broadcastable against ``loc``.

    Returns
    -------
    torch.Tensor
        The broadcast :math:`\log\alpha`.
    """
    return log_variance - torch.log(loc.square() + _EPS)


def log_uniform_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    r"""Molchanov et al.'s approximation of :math:`\mathrm{KL}(\mathcal N(\theta, \alpha\theta^2) \,\|\,
    \text{LogUniform})` per weight (see the module docstring), as a function of :math:`\log\alpha`:

    .. math:: \mathrm{KL} \approx k_1 - k_1\,\sigma(k_2 + k_3\log\alpha) + \tfrac12\operatorname{softplus}(-\log\alpha).

    It is non-negative, decreases in :math:`\alpha` and tends to 0 as :math:`\alpha \to \infty`.

    Parameters
    ----------
    log_alpha : torch.Tensor
        :math:`\log\alpha`, any shape.

    Returns
    -------
    torch.Tensor
        The KL per entry, same shape.
    """
    k1, k2, k3 = LOG_UNIFORM_KL_CONSTANTS
    log_alpha = torch.as_tensor(log_alpha)
    if not log_alpha.is_floating_point():
        log_alpha = log_alpha.to(torch.get_default_dtype())
    return k1 - k1 * torch.sigmoid(k2 + k3 * log_alpha) + 0.5 * torch.nn.functional.softplus(-log_alpha)


def log_uniform_kl_reference(log_alpha: float) -> float:
    r"""The exact :math:`\mathrm{KL}(\mathcal N(\theta, \alpha\theta^2) \,\|\, \text{LogUniform})` per weight, with
    the constant of the module docstring, by adaptive quadrature (SciPy's ``quad``, a breakpoint at the singularity of
    :math:`\log|\varepsilon|` at 0):

    .. math::

        \mathrm{KL} = \mathbb E_{\varepsilon \sim \mathcal N(1, \alpha)} \log|\varepsilon| - \tfrac12\log\alpha
        + \tfrac12(\gamma + \log 2).

    A reference for tests and plots (float64, about 1e-12 absolute accuracy over :math:`\log\alpha \in [-8, 8]`), not
    for training.

    Parameters
    ----------
    log_alpha : float
        :math:`\log\alpha`.

    Returns
    -------
    float
        The KL per weight.
    """
    from scipy import integrate

    log_alpha = float(log_alpha)
    if not math.isfinite(log_alpha):
        raise ValueError(f"log_alpha must be finite, got {log_alpha!r}")
    std = math.exp(0.5 * log_alpha)
    norm = 1.0 / (std * math.sqrt(2.0 * math.pi))

    def integrand(eps: float) -> float:
        return math.log(abs(eps)) * norm * math.exp(-0.5 * ((eps - 1.0) / std) ** 2) if eps != 0.0 else 0.0

    low, high = 1.0 - 12.0 * std, 1.0 + 12.0 * std  # the Gaussian mass outside is below 1e-32
    expected_log, _ = integrate.quad(integrand, low, high, points=[0.0] if low < 0.0 else None, limit=200,
                                     epsabs=1e-12, epsrel=1e-10)
    return expected_log - 0.5 * log_alpha + 0.5 * (float(np.euler_gamma) + math.log(2.0))


class LogUniform(TorchDistribution):
    r"""The improper scale-invariant prior :math:`p(w) \propto 1/|w|` on the real line, entrywise.

    ``log_prob(w) = -log|w|`` (unnormalised: the prior has no normalising constant). It has no samples, mean or
    variance; its role is to be the model side of a sample site whose guide is Gaussian, where
    ``kl_divergence(Normal, LogUniform)`` is Molchanov et al.'s approximation (:func:`log_uniform_kl`). See the module
    docstring for how it enters the ELBO.

    Parameters
    ----------
    batch_shape : torch.Size, optional
        Shape of the (parameter-free) batch.
    dtype, device : optional
        The dtype and device of the values this prior stands for (the prior has no parameters to carry them;
        :class:`~pyro_lowrank.distributions.LogUniformPrior` passes its buffer's), used for placeholders.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, batch_shape: torch.Size | tuple[int, ...] = torch.Size(), validate_args: bool | None = None,
                 *, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        super().__init__(torch.Size(batch_shape), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # noqa: D401 - torch's signature
        new = self._get_checked_instance(LogUniform, _instance)
        new.dtype, new.device = self.dtype, self.device
        super(LogUniform, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def placeholder(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Zeros of shape ``sample_shape + batch_shape`` with this prior's dtype and device: a stand-in value for
        code that only needs shapes (plate counting), never a sample."""
        return torch.zeros(self._extended_shape(sample_shape), dtype=self.dtype, device=self.device)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``-log|w|``, the unnormalised log density (``-inf`` nowhere but ``+inf`` at 0)."""
        if self._validate_args:
            self._validate_sample(value)
        return -torch.log(value.abs()).expand(torch.broadcast_shapes(value.shape, self.batch_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        raise NotImplementedError(
            "LogUniform is an improper prior (p(w) ∝ 1/|w| has no normalising constant) and cannot be sampled: use it "
            "only as the model side of a site whose guide is Gaussian (LRVDGuide, FactorGuide), where the ELBO reads "
            "the registered KL approximation. Prior predictive checks need a proper prior; for posterior predictions "
            "use pyro_lowrank.predict (pyro.infer.Predictive traces the model from its prior)"
        )

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError("LogUniform is improper: it has no mean")

    @property
    def variance(self) -> torch.Tensor:
        raise NotImplementedError("LogUniform is improper: it has no variance")


@kl.register_kl(Normal, LogUniform)
def _kl_normal_log_uniform(q: Normal, p: LogUniform) -> torch.Tensor:
    log_alpha = noise_to_signal_log_ratio(q.loc, 2.0 * torch.log(q.scale))
    value = log_uniform_kl(log_alpha)
    return value.expand(torch.broadcast_shapes(value.shape, p.batch_shape))
