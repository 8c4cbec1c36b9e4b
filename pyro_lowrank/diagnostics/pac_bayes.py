r"""PAC-Bayes complexity: the KL divergence of a trained guide from the prior, and McAllester's bound.

For a posterior Q and a prior P over parameters fixed before seeing the N i.i.d. training points, and a loss bounded
in [0, 1], with probability at least :math:`1 - \delta` over the sample (McAllester 1999, Maurer 2004),

.. math::

    L(Q) \le \hat L(Q) + \sqrt{\frac{\mathrm{KL}(Q\,\|\,P) + \ln(2\sqrt N/\delta)}{2N}},

where :math:`L(Q) = \mathbb E_{\theta\sim Q} \mathbb E_{(x,y)}\, l(\theta; x, y)` and :math:`\hat L(Q)` is its
empirical counterpart on the training set. For a low-rank layer the KL is taken on the factors:
:math:`\mathrm{KL}(q_A q_B \| p_A p_B)` has O(r(m + n)) terms, against O(mn) for a full-rank mean-field layer.
"""

from __future__ import annotations

import math
import warnings
import numbers
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform

from pyro_lowrank._validation import check_positive_int, check_probability

__all__ = ["mcallester_bound", "posterior_kl"]


def _base(fn: Any) -> Any:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def _guide_distribution(name: str, model_site: dict, guide_trace: Any) -> Any:
    """The guide's distribution of a model site, undoing AutoNormal's auxiliary-site + Delta construction."""
    fn = guide_trace.nodes[name]["fn"]
    if not isinstance(_base(fn), dist.Delta):
        return fn
    aux = guide_trace.nodes.get(f"{name}_unconstrained")
    if aux is None or aux["type"] != "sample":
        raise ValueError(
            f"guide site {name!r} is a point mass (Delta) with no auxiliary site {name + '_unconstrained'!r}: "
            "KL(q || p) needs the guide's distribution of the site; supported guides emit it (FactorGuide, "
            "hand-written guides) or an AutoNormal-style auxiliary Normal; got a Delta (e.g. AutoDelta, "
            "AutoDiagonalNormal, AutoMultivariateNormal)"
        )
    transform = biject_to(model_site["fn"].support)
    base = transform
    while isinstance(base, IndependentTransform):
        base = base.base_transform
    if isinstance(base, ComposeTransform) and not base.parts:  # identity (real support): q is the auxiliary Normal
        return aux["fn"]
    return dist.TransformedDistribution(aux["fn"], transform)


def _site_kl(q: Any, p: Any, num_samples: int) -> torch.Tensor:
    try:
        return kl_divergence(q, p).sum()
    except NotImplementedError:
        draws = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
        return (q.log_prob(draws) - p.log_prob(draws)).mean(0).sum()


def posterior_kl(model: Callable, guide: Callable, *args: Any, num_samples: int = 256, **kwargs: Any) -> torch.Tensor:
    r""":math:`\mathrm{KL}(q \,\|\, p) = \sum_{\text{latent sites } s} \mathrm{KL}(q_s \,\|\, p_s)` of a guide from the
    model's prior.

    The guide is traced once with ``(*args, **kwargs)``, the model is replayed on that trace, and for every latent
    model site (sample site that is neither observed, nor a plate's subsample site, nor a ``pyro.deterministic``
    record) the guide's distribution :math:`q_s` is compared with the model's :math:`p_s`:

    .. math::

        \mathrm{KL}(q_s \| p_s) = \mathbb E_{q_s}[\log q_s(\theta) - \log p_s(\theta)]
        \approx \frac1S \sum_{t=1}^S \log q_s(\theta_t) - \log p_s(\theta_t), \quad \theta_t \sim q_s,

    in closed form (:func:`pyro.distributions.kl.kl_divergence`, summed over all elements) when it is registered,
    e.g. Gaussian guide against Gaussian prior, and by the unbiased Monte Carlo estimate with ``S = num_samples``
    otherwise, e.g. against the scale-mixture prior. Summing over sites is exact for a guide that factorises over
    sites (mean field, as for :class:`~pyro_lowrank.guides.FactorGuide`); the prior factorises by construction.

    For the library's models the sites are the factors A, B and the biases, so this is the factor KL
    :math:`\sum_\ell \mathrm{KL}(q_{A_\ell} q_{B_\ell} \| p_{A_\ell} p_{B_\ell}) + \mathrm{KL}(q_{b_\ell}\|p_{b_\ell})`.
    A KL on the weights W itself is undefined: for :math:`r < \min(m, n)` the pushforward :math:`q_W` lives on the
    Lebesgue-null set of rank-r matrices and has no density. By the data-processing inequality the factor KL
    upper-bounds :math:`\mathrm{KL}(q_W \| p_W)` against the pushed-forward prior, so it is a valid PAC-Bayes
    complexity term.

    Notes
    -----
    * Model sites absent from the guide (e.g. ``obs`` when no targets are passed) are sampled from the model's own
      conditional :math:`p(z\mid\theta)` and contribute nothing; pass the targets to make ``obs`` observed.
    * Site scales (``poutine.scale``, KL annealing, minibatch subsampling factors) are ignored: the result is the
      unscaled KL of the traced sites.
    * :class:`~pyro.infer.autoguide.AutoNormal` is supported (its per-site Delta is undone through its auxiliary
      ``{name}_unconstrained`` Normal); guides whose sites are point masses (AutoDelta, AutoDiagonalNormal, ...)
      are refused.
    * Everything runs under :func:`torch.no_grad` and :func:`pyro.poutine.block`: nothing is recorded by outer
      handlers and no gradient flows. A guide that has never been run is set up by the call (its parameters are
      created), as by any first call; run or train it first.

    Parameters
    ----------
    model, guide : callable
        The Pyro model and its (trained) guide.
    *args, **kwargs
        Passed to both, e.g. ``posterior_kl(model, guide, x, y)``.
    num_samples : int
        Monte Carlo draws per site without a closed-form KL.

    Returns
    -------
    torch.Tensor
        A scalar (0-dim) tensor, on the device and in the dtype of the sites' KLs.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    if not callable(model) or not callable(guide):
        raise TypeError(f"model and guide must be callable, got {type(model).__name__} and {type(guide).__name__}")
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        total: torch.Tensor | None = None
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            if site["infer"].get("_deterministic", False) or name not in guide_trace.nodes:
                continue
            q = _guide_distribution(name, site, guide_trace)
            kl = _site_kl(q, site["fn"], num_samples)
            total = kl if total is None else total + kl.to(total)
    return torch.zeros(()) if total is None else total


def _as_float(value: object, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or a 1-element tensor, got {type(value).__name__}")
    return float(value)


def mcallester_bound(empirical_risk: float | torch.Tensor, kl: float | torch.Tensor, num_data: int,
                     delta: float = 0.05) -> float:
    r"""McAllester's PAC-Bayes bound on the expected risk of the Gibbs predictor Q.

    .. math::

        L(Q) \le \hat L(Q) + \sqrt{\frac{\mathrm{KL}(Q\,\|\,P) + \ln\!\big(2\sqrt N / \delta\big)}{2N}}

    holds with probability at least :math:`1 - \delta` for a loss bounded in [0, 1] (e.g. the 0-1 error) and a prior
    P chosen independently of the N training points. The right-hand side can exceed 1, i.e. be vacuous.

    Parameters
    ----------
    empirical_risk : float or 1-element tensor
        :math:`\hat L(Q)` in [0, 1], the training loss averaged over Q and the data.
    kl : float or 1-element tensor
        :math:`\mathrm{KL}(Q\|P) \ge 0`, e.g. from :func:`posterior_kl`. A negative value (possible for a Monte
        Carlo estimate when Q is close to P) is replaced by 0 with a ``RuntimeWarning``.
    num_data : int
        N >= 1, the number of training points.
    delta : float
        Confidence parameter in (0, 1).

    Returns
    -------
    float
    """
    risk = _as_float(empirical_risk, "empirical_risk")
    kl_value = _as_float(kl, "kl")
    if not 0.0 <= risk <= 1.0:
        raise ValueError(f"empirical_risk must lie in [0, 1] (the loss must be bounded in [0, 1]), got {risk!r}")
    if not math.isfinite(kl_value):
        raise ValueError(f"kl must be a finite number >= 0, got {kl_value!r}")
    if kl_value < 0:  # a Monte Carlo KL estimate (non-conjugate priors) can dip below the true KL >= 0
        warnings.warn(f"kl={kl_value!r} is negative (a Monte Carlo estimate?); using 0, the smallest valid KL",
                      RuntimeWarning, stacklevel=2)
        kl_value = 0.0
    num_data = check_positive_int(num_data, "num_data")
    delta = _as_float(delta, "delta")
    check_probability(delta, "delta")
    return risk + math.sqrt((kl_value + math.log(2.0 * math.sqrt(num_data) / delta)) / (2.0 * num_data))
