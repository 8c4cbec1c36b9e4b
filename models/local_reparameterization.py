r"""The local reparameterisation trick (Kingma, Salimans & Welling 2015) as a Pyro effect handler.

For a linear layer :math:`a = W x` (per datum) with a mean-field Gaussian
:math:`q(W) = \prod_{jk} \mathcal N(W_{jk} \mid \mu_{jk}, \sigma_{jk}^2)`, every pre-activation is a sum of independent
Gaussians, so for a fixed input x

.. math::

    a_j \mid x \sim \mathcal N\Big(\sum_k \mu_{jk} x_k,\ \sum_k \sigma_{jk}^2 x_k^2\Big)
    \quad\text{independently over } j .

Instead of drawing W and computing :math:`W x`, the *local* reparameterisation draws the pre-activations directly,
:math:`a = \mu x + \sqrt{\sigma^2 x^2}\,\odot\varepsilon` with :math:`\varepsilon \sim \mathcal N(0, I)` drawn **per
datum**. Because the layers' weights are independent of each other under q, the same argument applies layer by layer
conditionally on the previous layer's output, so the joint distribution of all pre-activations *of one datum* is
exactly what weight sampling gives; the per-datum predictive distribution, the expected log-likelihood
:math:`\mathbb E_q[\log p(y_i \mid x_i, W)]` and hence the ELBO are unchanged.

What changes is the covariance *between* data points of a minibatch. For a minibatch of B of N data points the
estimate :math:`\frac NB \sum_{i} \ell_i` of the expected log-likelihood (:math:`\ell_i = \log p(y_i\mid x_i, W)`) has
variance

.. math::

    \frac{N^2}{B^2}\Big(\sum_i \operatorname{Var}\ell_i + \sum_{i\ne i'} \operatorname{Cov}(\ell_i, \ell_{i'})\Big)
    = N^2\Big(\frac{\overline{\operatorname{Var}}}{B} + \frac{B-1}{B}\,\overline{\operatorname{Cov}}\Big).

With one weight draw shared by the whole minibatch the covariances are in general non-zero (typically positive: one
unlucky weight draw hurts every datum) and the second term does not shrink as B grows; with noise drawn
independently per datum they are zero, so the variance falls as 1/B. The gradient with respect to the variational
parameters is a sum over data of per-datum terms too, and the same argument applies to it. Each datum's noise is also lower-dimensional (m numbers instead of m n per layer); the price is a
second matrix product per layer (for the variance).

Usage
-----
Wrap the code that runs the guide *and* the model::

    with LocalReparameterization():
        loss = TraceMeanField_ELBO()(model, guide)(x, y)     # or fit(...), svi.step(...), predict(...)

:class:`~pyro_lowrank.models.MeanFieldMLP` (``local_reparameterization=True``, the default) enters a handler itself
when none is active, so ``fit``, ``predict`` and plain ``SVI`` use the trick without any wrapping.

The handler records, for every latent sample site whose value was drawn from a (possibly ``Independent``)
``Normal``, ``id(value) -> (loc, scale)``; :class:`~pyro_lowrank.models.MeanFieldLinear` asks the active handlers
for the statistics of the weight tensor it received and samples its pre-activations when they are known. A value
replayed from a guide trace (``poutine.replay``, which every ELBO and :func:`~pyro_lowrank.predictive.predict` use)
is resolved to the *guide's* distribution, never to the model's prior, whether the handler is active around the
guide or only inside the model; the first record of a tensor wins. Observed (conditioned) values and values set by
an autoguide's initialisation are never recorded, so a conditioned weight is always used as given. Entries hold
only a weak reference to the value tensor and are dropped when it dies (so a handler around a long training loop
does not grow), and a lookup checks the tensor's identity, so a recycled ``id`` can never return stale statistics;
the table is cleared on exit.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, Self

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import _PYRO_STACK

__all__ = [
    "GaussianStats",
    "LocalReparameterization",
    "active_handler",
    "batched_linear",
    "gaussian_stats",
    "local_reparameterized_linear",
]

_ACTIVE: list[LocalReparameterization] = []


class GaussianStats(NamedTuple):
    """Mean and standard deviation of the Gaussian a sampled tensor was drawn from (same shape as the tensor or
    broadcastable to it)."""

    loc: torch.Tensor
    scale: torch.Tensor


def _normal_params(fn: object) -> GaussianStats | None:
    """``(loc, scale)`` of a ``Normal`` or ``Independent(Normal)`` distribution, else ``None``."""
    while isinstance(fn, (dist.Independent, torch.distributions.Independent)):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.Normal):
        return GaussianStats(fn.loc, fn.scale)
    return None


def _source_distribution(msg: dict) -> object | None:
    """The distribution ``msg["value"]`` was actually drawn from, or ``None`` when it was not drawn here.

    A value replayed from a trace (the guide's, inside an ELBO or ``predict``) was drawn from that trace's
    distribution; a value set by an autoguide's ``InitMessenger`` was not drawn at all; otherwise the site's own
    distribution drew it.
    """
    value = msg["value"]
    name = msg["name"]
    for frame in reversed(_PYRO_STACK):
        if isinstance(frame, ReplayMessenger) and frame.trace is not None and name in frame.trace.nodes:
            node = frame.trace.nodes[name]
            if node["value"] is value:
                return None if node["is_observed"] else node["fn"]
    if any(isinstance(frame, InitMessenger) for frame in _PYRO_STACK):
        return None
    return msg["fn"]


class _Entry(NamedTuple):
    ref: weakref.ref
    stats: GaussianStats


class LocalReparameterization(Messenger):
    """Effect handler that lets :class:`~pyro_lowrank.models.MeanFieldLinear` sample pre-activations instead of
    weights (the local reparameterisation trick; see the module docstring for the math).

    Examples
    --------
    >>> with LocalReparameterization():  # doctest: +SKIP
    ...     loss = TraceMeanField_ELBO()(model, guide)(x, y)
    ...     loss.backward()
    """

    def __init__(self) -> None:
        super().__init__()
        self._table: dict[int, _Entry] = {}

    def __enter__(self) -> Self:
        result = super().__enter__()
        _ACTIVE.append(self)
        return result

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._table.clear()
        return super().__exit__(exc_type, exc_value, traceback)

    def __len__(self) -> int:
        """Number of live recorded tensors."""
        return len(self._table)

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["infer"].get("_deterministic"):
            return
        value = msg["value"]
        if not torch.is_tensor(value):
            return
        key = id(value)
        entry = self._table.get(key)
        if entry is not None and entry.ref() is value:
            return  # first writer wins: the model's replay of a guide draw keeps the guide's statistics
        stats = _normal_params(_source_distribution(msg))
        if stats is None:
            return
        try:
            if torch.broadcast_shapes(stats.loc.shape, stats.scale.shape, value.shape) != value.shape:
                return
        except RuntimeError:
            return
        table = self._table

        def forget(ref: weakref.ref, key: int = key) -> None:
            current = table.get(key)
            if current is not None and current.ref is ref:
                del table[key]

        table[key] = _Entry(weakref.ref(value, forget), stats)

    def lookup(self, value: torch.Tensor) -> GaussianStats | None:
        """The ``(loc, scale)`` recorded for exactly this tensor object, or ``None``."""
        entry = self._table.get(id(value))
        if entry is None or entry.ref() is not value:
            return None
        return entry.stats


def active_handler() -> LocalReparameterization | None:
    """The innermost active :class:`LocalReparameterization`, or ``None``."""
    return _ACTIVE[-1] if _ACTIVE else None


def gaussian_stats(value: torch.Tensor) -> GaussianStats | None:
    """The Gaussian statistics any active handler recorded for ``value`` (innermost first), or ``None`` (no handler
    active, or ``value`` was not drawn from a Normal: a conditioned weight, a ``Delta`` guide, a non-Gaussian prior)."""
    for handler in reversed(_ACTIVE):
        stats = handler.lookup(value)
        if stats is not None:
            return stats
    return None


def batched_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    r""":math:`x W^\top` for ``x`` of shape ``bx + (n,)`` and ``weight`` of shape ``bw + (m, n)``; the batch shapes
    broadcast right-aligned (as Pyro batch dimensions do), giving ``broadcast(bx, bw) + (m,)``.

    Weight particles ``(P, 1)`` against inputs ``(N, n)`` give ``(P, N, m)`` without copying W per datum. A weight
    without (non-singleton) batch dimensions takes the plain ``F.linear`` GEMM, the cheapest path for tiny layers.
    """
    batch = weight.shape[:-2]
    if all(size == 1 for size in batch):
        out = F.linear(x, weight.reshape(weight.shape[-2:]))
        extra = len(batch) - (x.dim() - 1)
        return out.reshape((1,) * extra + out.shape) if extra > 0 else out
    return torch.einsum("...i,...oi->...o", x, weight)


def _compact(t: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Narrow batch dimensions along which ``t`` is an expanded view (stride 0) to size 1, so that products with
    it are computed once instead of once per (identical) particle."""
    for d in range(t.dim() - event_dim):
        if t.shape[d] > 1 and t.stride(d) == 0:
            t = t.narrow(d, 0, 1)
    return t


def local_reparameterized_linear(
    x: torch.Tensor,
    weight: GaussianStats,
    bias: GaussianStats | torch.Tensor | None = None,
    particle_shape: torch.Size | tuple[int, ...] = (),
) -> torch.Tensor:
    r"""Draw the pre-activations of a mean-field Gaussian linear layer directly.

    .. math::

        \text{mean} = x \mu^\top + \mu_b, \qquad \text{var} = x^{2} (\sigma^{2})^\top + \sigma_b^2, \qquad
        \text{out} = \text{mean} + \sqrt{\text{var}} \odot \varepsilon, \quad \varepsilon \sim \mathcal N(0, I),

    with :math:`\varepsilon` of shape ``broadcast(particle_shape, bx, ...) + (m,)``: independent for every datum and
    every particle.

    Parameters
    ----------
    x : Tensor
        Inputs ``bx + (n,)``.
    weight : GaussianStats
        ``loc`` and ``scale`` of the weight, shapes ``bw + (m, n)`` (batch dimensions aligned to Pyro's plates).
    bias : GaussianStats or Tensor, optional
        Gaussian statistics of the bias (``bw + (m,)``), folded into mean and variance, or a sampled bias tensor
        that is added as is.
    particle_shape : shape
        Batch shape of the weight *sample* (e.g. ``(P, 1)`` for P vectorised particles); the noise gets at least
        this batch shape, so the output has the same shape as the weight-sampling path even when the statistics
        are shared by all particles.
    """
    loc, scale = _compact(weight.loc, 2), _compact(weight.scale, 2)
    mean = batched_linear(x, loc)
    var = batched_linear(x.square(), scale.square())
    if isinstance(bias, GaussianStats):
        mean = mean + _compact(bias.loc, 1)
        var = var + _compact(bias.scale, 1).square()
    elif bias is not None:
        mean = mean + bias
    shape = torch.broadcast_shapes(tuple(particle_shape) + (1,), mean.shape, var.shape)
    eps = torch.randn(shape, dtype=mean.dtype, device=mean.device)
    # clamp: an all-zero input row (dead ReLUs) has var = 0, where d sqrt/d var is infinite; the clamp's zero
    # gradient below `tiny` keeps the backward pass finite without changing any non-degenerate value.
    return mean + var.clamp_min(torch.finfo(var.dtype).tiny).sqrt() * eps
