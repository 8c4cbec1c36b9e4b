r"""Vectorised posterior prediction.

S posterior draws :math:`\theta_s \sim q` are taken from the guide once, in one vectorised pass (a plate over draws,
no Python loop), and the model is replayed on every input chunk with those same draws, so every predictive quantity
(mean, entropy, mutual information, intervals, log densities) is computed from the same S networks. The pointwise log
predictive density is

.. math:: \log \hat p(y_i \mid x_i) = \log \frac1S \sum_{s=1}^S p(y_i \mid x_i, \theta_s).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from pyro.infer import Predictive

from pyro_lowrank._validation import check_positive_int

__all__ = ["log_predictive_density", "pointwise_log_likelihood", "posterior_draws", "predict"]


def posterior_draws(guide: Callable, *args: Any, num_samples: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    """S joint draws of every latent site from the guide, in one vectorised pass: ``{site: (S, *site_shape)}``."""
    check_positive_int(num_samples, "num_samples")
    with torch.no_grad():
        return Predictive(guide, num_samples=num_samples, parallel=True)(*args, **kwargs)


def predict(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 100,
    *,
    return_sites: Sequence[str] | None = ("f",),
    batch_size: int | None = None,
    **model_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Posterior predictive draws for inputs ``x``.

    Parameters
    ----------
    model, guide : callable
        A Pyro model ``model(x, y=None, **model_kwargs)`` and its trained guide.
    x : torch.Tensor
        Inputs, first dimension N.
    num_samples : int
        S, the number of posterior draws.
    return_sites : sequence of str, optional
        Sites to return (default the network output ``"f"`` of the library's models); ``None`` returns
        :class:`~pyro.infer.Predictive`'s default (all sample sites).
    batch_size : int, optional
        Evaluate the inputs in chunks of this size, reusing the same S draws for every chunk (bounded memory).

    Returns
    -------
    dict
        ``{site: tensor of shape (S, N, ...)}``, in ``torch.no_grad()``.
    """
    check_positive_int(num_samples, "num_samples")
    n = x.shape[0]
    chunk = n if batch_size is None else check_positive_int(batch_size, "batch_size")
    sites = None if return_sites is None else list(return_sites)
    with torch.no_grad():
        draws = posterior_draws(guide, x[:chunk], num_samples=num_samples, **model_kwargs)
        predictive = Predictive(model, posterior_samples=draws, parallel=True, return_sites=sites)
        pieces = [predictive(x[start : start + chunk], **model_kwargs) for start in range(0, n, chunk)]
    if len(pieces) == 1:
        return pieces[0]
    return {name: torch.cat([piece[name] for piece in pieces], dim=1) for name in pieces[0]}


def pointwise_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 100,
    *,
    data_plate: str = "data",
    **model_kwargs: Any,
) -> torch.Tensor:
    r""":math:`\log p(y_i \mid x_i, \theta_s)` for S guide draws, shape ``(S, N)``.

    Summed over every observed site; the data dimension is that of the plate named ``data_plate`` (all other batch
    dimensions are summed out).
    """
    check_positive_int(num_samples, "num_samples")
    with torch.no_grad():
        draws = posterior_draws(guide, x, y, num_samples=num_samples, **model_kwargs)
        predictive = Predictive(model, posterior_samples=draws, parallel=True)
        trace = predictive.get_vectorized_trace(x, y, **model_kwargs)
        total = None
        for name, site in trace.nodes.items():
            # latent sites are observed here too (conditioned on the guide's draws): skip them
            if site["type"] != "sample" or not site["is_observed"] or name in draws:
                continue
            if site["infer"].get("_deterministic"):
                continue
            if type(site["fn"]).__name__ == "_Subsample":
                continue
            log_prob = site["fn"].log_prob(site["value"])
            dims = {frame.name: frame.dim for frame in site["cond_indep_stack"]}
            particle_dim = log_prob.dim() + dims["_num_predictive_samples"]
            keep = [particle_dim]
            if data_plate in dims:
                keep.append(log_prob.dim() + dims[data_plate])
            summed = [d for d in range(log_prob.dim()) if d not in keep]
            log_prob = log_prob.sum(summed) if summed else log_prob
            if log_prob.dim() == 1:
                log_prob = log_prob.unsqueeze(-1)
            total = log_prob if total is None else total + log_prob
    if total is None:
        raise ValueError("the model has no observed sample site: pass y so that the likelihood is observed")
    return total


def log_predictive_density(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 100,
    **kwargs: Any,
) -> torch.Tensor:
    r"""Pointwise :math:`\log \frac1S\sum_s p(y_i\mid x_i,\theta_s)`, shape ``(N,)``; its negative mean is the
    predictive NLL."""
    log_lik = pointwise_log_likelihood(model, guide, x, y, num_samples, **kwargs)
    return torch.logsumexp(log_lik, dim=0) - math.log(log_lik.shape[0])

