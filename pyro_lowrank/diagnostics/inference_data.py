r"""ArviZ conversion of a fitted low-rank Bayesian network.

The variational posterior is sampled once: S draws :math:`\theta_s \sim q` are taken from the guide in one vectorised
pass (:func:`pyro_lowrank.predictive.vectorized_traces`) and the model is replayed with those same draws twice, once
with the observations conditioned on (for the pointwise log likelihood :math:`\log p(y_i \mid x_i, \theta_s)`) and once
without (for posterior predictive draws :math:`\tilde y_{s,i} \sim p(y \mid x_i, \theta_s)`). Every group of the
returned :class:`arviz.InferenceData` therefore comes from the same S networks.

The factorisation :math:`W = A B^\top` is invariant under :math:`(A, B) \mapsto (A G, B G^{-\top})` for any invertible
:math:`G`, so raw factor entries are not identifiable and their summaries (means, :math:`\hat R`, ESS) are meaningless.
The ``posterior`` group holds gauge-invariant summaries of each factorised weight instead: its singular values
:math:`\sigma_1(W_s) \ge \dots \ge \sigma_r(W_s)` (from the QR route of
:func:`~pyro_lowrank.diagnostics.canonicalize`, never forming W), its Frobenius norm
:math:`\lVert W_s\rVert_F = (\sum_k \sigma_k^2)^{1/2}` and, for small matrices, its entries. Latent sites that are not
factors (biases, a learned noise scale) are identifiable and are kept as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.diagnostics.canonical import canonicalize
from pyro_lowrank.predictive import (
    per_draw_value,
    trace_log_likelihood,
    vectorized_traces,
)

if TYPE_CHECKING:
    import arviz

__all__ = ["to_inference_data", "weight_summaries"]


def _factorised_weights(model: nn.Module) -> dict[str, tuple[str, str]]:
    """``{weight variable prefix: (A site, B site)}`` for every module of ``model`` exposing ``factor_sites()``."""
    weights = {}
    for name, module in model.named_modules():
        sites = getattr(module, "factor_sites", None)
        if not callable(sites):
            continue
        for weight_name, pair in sites().items():
            weights[f"{name}.{weight_name}" if name else weight_name] = pair
    return weights


def weight_summaries(
    a: torch.Tensor, b: torch.Tensor, prefix: str, max_weight_entries: int = 64
) -> dict[str, torch.Tensor]:
    r"""Gauge-invariant per-draw summaries of :math:`W_s = A_s B_s^\top` for factor draws ``a`` (S, m, r), ``b`` (S, n, r).

    Returns ``{prefix.singular_values: (S, r), prefix.frobenius_norm: (S,)}`` and, when :math:`mn \le`
    ``max_weight_entries``, ``{prefix: (S, m, n)}`` with the entries of :math:`W_s`.
    """
    singular_values = canonicalize(a, b).singular_values
    out = {
        f"{prefix}.singular_values": singular_values,
        f"{prefix}.frobenius_norm": singular_values.square().sum(-1).sqrt(),
    }
    if a.shape[-2] * b.shape[-2] <= max_weight_entries:
        out[prefix] = a @ b.transpose(-1, -2)
    return out


def to_inference_data(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 500,
    *,
    num_chains: int = 1,
    obs_site: str = "obs",
    data_plate: str = "data",
    max_weight_entries: int = 64,
    **model_kwargs: Any,
) -> arviz.InferenceData:
    r"""Posterior, posterior predictive, observed data and pointwise log likelihood as ArviZ ``InferenceData``.

    Parameters
    ----------
    model : callable
        A Pyro model ``model(x, y=None, **model_kwargs)``. When it is an ``nn.Module``, its low-rank layers (modules
        exposing ``factor_sites()``, like :class:`~pyro_lowrank.nn.LowRankLinear`) are summarised through W; every
        other latent site is reported as it is.
    guide : callable
        Its trained guide.
    x, y : torch.Tensor
        Inputs (N, ...) and observed targets (N, ...).
    num_samples : int
        S, the number of posterior draws (split into ``num_chains`` chains).
    num_chains : int
        The draws of a variational posterior are independent, so splitting them into chains only lets ArviZ compute
        :math:`\hat R`/ESS (which then check the Monte Carlo sample, not convergence). Must divide ``num_samples``.
    obs_site : str
        The model's observed site; it names the ``posterior_predictive``, ``observed_data`` and ``log_likelihood``
        variable (so ``az.plot_ppc`` and ``az.loo`` find it).
    data_plate : str
        The model's data plate; its dimension is the ``log_likelihood`` data dimension (named after it).
    max_weight_entries : int
        Weights with at most this many entries also get their entries in the posterior group.

    Returns
    -------
    arviz.InferenceData
        Groups ``posterior``, ``posterior_predictive``, ``observed_data``, ``log_likelihood``; arrays on CPU.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    num_chains = check_positive_int(num_chains, "num_chains")
    if num_samples % num_chains:
        raise ValueError(f"num_chains must divide num_samples={num_samples}, got num_chains={num_chains}")
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    if model_kwargs.get("subsample_size") is not None:
        raise ValueError(
            "subsample_size must be None: the conditioned and the predictive replay would subsample different "
            f"minibatches; pass the points to evaluate as x, got subsample_size={model_kwargs['subsample_size']}"
        )
    if y is None or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must hold one target per input: expected first dimension {x.shape[0]}, got "
            f"{None if y is None else tuple(y.shape)}"
        )
    conditioned, unconditioned = vectorized_traces(model, guide, [((x, y), model_kwargs), ((x,), model_kwargs)], num_samples)
    if obs_site not in conditioned.nodes or not conditioned.nodes[obs_site]["is_observed"]:
        observed = [n for n, s in conditioned.nodes.items() if s["type"] == "sample" and s["is_observed"]]
        raise ValueError(f"obs_site must name the model's observed site, one of {observed}; got {obs_site!r}")

    factor_site_names = set()
    posterior: dict[str, torch.Tensor] = {}
    layers = _factorised_weights(model) if isinstance(model, nn.Module) else {}
    for prefix, (a_site, b_site) in layers.items():
        if a_site not in conditioned.nodes or b_site not in conditioned.nodes:
            continue  # a layer that forward() did not use has no draws and no influence on the predictions
        factor_site_names.update((a_site, b_site))
        a = per_draw_value(conditioned.nodes[a_site], num_samples)
        b = per_draw_value(conditioned.nodes[b_site], num_samples)
        posterior.update(weight_summaries(a, b, prefix, max_weight_entries))
    for name, site in conditioned.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in factor_site_names:
            continue
        if site["infer"].get("_deterministic") or site["infer"].get("is_auxiliary") or site_is_subsample(site):
            continue
        posterior[name] = per_draw_value(site, num_samples)

    groups = {
        "posterior": posterior,
        "posterior_predictive": {obs_site: per_draw_value(unconditioned.nodes[obs_site], num_samples)},
        "log_likelihood": {obs_site: trace_log_likelihood(conditioned, num_samples, data_plate=data_plate)},
    }
    return _build_inference_data(groups, {obs_site: y}, num_chains, data_dim=data_plate, obs_site=obs_site)


def _build_inference_data(
    groups: dict[str, dict[str, torch.Tensor]],
    observed: dict[str, torch.Tensor],
    num_chains: int,
    *,
    data_dim: str,
    obs_site: str,
) -> arviz.InferenceData:
    """The single place that talks to ArviZ: per-draw tensors (S, ...) become (chain, draw, ...) arrays.

    An ArviZ 1.x (``arviz_base``, DataTree) path replaces only this function (``arviz_base.from_dict`` takes the same
    nested ``{group: {var: array}}`` mapping).
    """
    import arviz as az

    def reshape(value: torch.Tensor) -> Any:
        array = value.detach().cpu().numpy()
        return array.reshape((num_chains, array.shape[0] // num_chains) + array.shape[1:])

    arrays = {group: {name: reshape(value) for name, value in variables.items()} for group, variables in groups.items()}
    dims = {obs_site: [data_dim]}
    for name in groups["posterior"]:
        if name.endswith(".singular_values"):
            dims[name] = [f"{name[: -len('.singular_values')]}.rank"]
    return az.from_dict(
        **arrays,
        observed_data={name: value.detach().cpu().numpy() for name, value in observed.items()},
        dims=dims,
    )
