r"""Vectorised posterior prediction.

S posterior draws :math:`\theta_s \sim q` are taken from the guide once, in one vectorised pass (a plate over draws,
no Python loop), and the model is replayed on every input chunk with those same draws, so every predictive quantity
(mean, entropy, mutual information, intervals, log densities) is computed from the same S networks. The pointwise log
predictive density is

.. math:: \log \hat p(y_i \mid x_i) = \log \frac1S \sum_{s=1}^S p(y_i \mid x_i, \theta_s).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_lowrank._validation import check_positive_int

__all__ = [
    "PREDICTIVE_LEAF",
    "log_predictive_density",
    "max_plate_nesting",
    "per_draw_value",
    "pointwise_log_likelihood",
    "predict",
    "trace_log_likelihood",
    "vectorized_traces",
]

_DRAWS = "_num_predictive_samples"
PREDICTIVE_LEAF = "predictive_leaf"
"""``infer`` key of a sample site that nothing in the model reads (an observation model's ``obs``): :func:`predict`
does not draw it when it is not among the requested ``return_sites``."""


class _SkipUnrequestedLeaves(Messenger):
    """Record a zero placeholder instead of drawing unobserved sample sites flagged ``infer={PREDICTIVE_LEAF: True}``
    whose names are not in ``keep``: drawing y for every draw and input (a softmax and a multinomial over
    S x N x C for a classifier) is wasted when only the network output is wanted."""

    def __init__(self, keep: Sequence[str]) -> None:
        super().__init__()
        self.keep = frozenset(keep)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["name"] in self.keep:
            return
        if msg["infer"].get(PREDICTIVE_LEAF):
            fn = msg["fn"]
            msg["value"] = torch.zeros((), device=_device_of(fn)).expand(fn.shape())


def _device_of(fn: Any) -> torch.device:
    for value in vars(fn).values():
        if isinstance(value, torch.Tensor):
            return value.device
    base = getattr(fn, "base_dist", None)
    return _device_of(base) if base is not None else torch.device("cpu")


class _ZeroIfUnsamplable(Messenger):
    """Give an unobserved sample site whose distribution cannot be sampled (an improper prior such as
    :class:`~pyro_lowrank.distributions.LogUniform`, whose ``sample`` raises ``NotImplementedError``) a zero value of
    its shape: the distribution's ``placeholder()`` when it has one (its dtype and device), else zeros on ``device``.
    :func:`max_plate_nesting` reads only the plate stack of its trace, never the values."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        try:
            msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"])
        except NotImplementedError:
            fn = msg["fn"]
            while not hasattr(fn, "placeholder") and hasattr(fn, "base_dist"):
                fn = fn.base_dist
            msg["value"] = (fn.placeholder().expand(msg["fn"].shape()) if hasattr(fn, "placeholder")
                            else torch.zeros(msg["fn"].shape(), device=self.device))


def max_plate_nesting(model: Callable, *args: Any, **kwargs: Any) -> int:
    """Depth of the model's plate stack, read off one (blocked, gradient-free) trace that leaves the RNG untouched.

    Sites with an improper prior (which cannot be sampled) get a zero placeholder in that trace, on the device of the
    first tensor argument."""
    device = next((a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), torch.device("cpu"))
    with torch.no_grad(), poutine.block(), torch.random.fork_rng(devices=[]):
        trace = poutine.trace(_ZeroIfUnsamplable(device)(model)).get_trace(*args, **kwargs)
    dims = [-frame.dim for site in trace.nodes.values() if site["type"] == "sample"
            for frame in site["cond_indep_stack"] if frame.vectorized]
    return max(dims, default=0)


def vectorized_traces(
    model: Callable,
    guide: Callable,
    inputs: Sequence[tuple[tuple, dict]],
    num_samples: int,
    *,
    plate_depth: int | None = None,
    keep_sites: Sequence[str] | None = None,
) -> list[poutine.Trace]:
    """Draw S guide samples once, inside a plate over draws, and replay the model on each ``(args, kwargs)``.

    The plate sits left of the model's plates (dim ``-max_plate_nesting - 1``), so the guide's sites get shape
    ``(S, 1, ..., *site_shape)`` and broadcast through the model; every input chunk sees the same S draws.
    ``plate_depth`` is the model's plate nesting if the caller knows it (else one extra trace reads it). With
    ``keep_sites``, sites flagged ``infer={PREDICTIVE_LEAF: True}`` that are not listed are not drawn (their trace
    value is a zero placeholder).

    Parameters
    ----------
    model, guide : callable
        The Pyro model and its guide.
    inputs : sequence of (args, kwargs)
        The model's arguments for each replay; the guide is called with the first.
    num_samples : int
        S, the draws.
    plate_depth : int, optional
        The model's plate nesting.
    keep_sites : sequence of str, optional
        The sites the caller reads; unlisted predictive-leaf sites are not drawn.

    Returns
    -------
    list of pyro.poutine.Trace
        One model trace per entry of ``inputs``, all with the same S guide draws.
    """
    check_positive_int(num_samples, "num_samples")
    first_args, first_kwargs = inputs[0]
    depth = max_plate_nesting(model, *first_args, **first_kwargs) if plate_depth is None else plate_depth
    traces = []
    with torch.no_grad(), pyro.plate(_DRAWS, num_samples, dim=-depth - 1):
        guide_trace = poutine.trace(guide).get_trace(*first_args, **first_kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        if keep_sites is not None:
            replayed = _SkipUnrequestedLeaves(keep_sites)(replayed)
        for args, kwargs in inputs:
            traces.append(poutine.trace(replayed).get_trace(*args, **kwargs))
    return traces


def per_draw_value(site: dict, num_samples: int) -> torch.Tensor:
    """A site's value as ``(S, *plate_sizes, *event_shape)``: singleton dimensions of absent plates dropped."""
    value = site["value"]
    event_dim = site["fn"].event_dim
    batch = value.shape[: value.dim() - event_dim]
    plate_dims = {frame.dim for frame in site["cond_indep_stack"] if frame.vectorized and frame.name != _DRAWS}
    kept = tuple(size for pos, size in zip(range(-len(batch), 0), batch) if pos in plate_dims)
    draws = next((f for f in site["cond_indep_stack"] if f.name == _DRAWS), None)
    if draws is not None and len(batch) < -draws.dim and value.dim() >= -draws.dim:
        raise ValueError(
            f"site {site['name']!r} has event_dim={event_dim}, which swallows the dimension of the posterior draws "
            f"(value shape {tuple(value.shape)}): record it with pyro.deterministic(name, value, event_dim=k) where "
            "k counts only the per-datum event dimensions (0 for a scalar output per datum)"
        )
    if draws is None or len(batch) < -draws.dim:  # the value does not vary over the draws
        value = value.reshape(kept + value.shape[value.dim() - event_dim:])
        return value.expand((num_samples,) + value.shape)
    return value.reshape((num_samples,) + kept + value.shape[value.dim() - event_dim:])


def predict(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 100,
    *,
    return_sites: Sequence[str] = ("f",),
    batch_size: int | None = None,
    draw_batch_size: int | None = None,
    data_plate: str = "data",
    **model_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Posterior predictive draws for inputs ``x``.

    The S draws are taken from the guide in one vectorised pass per chunk of ``draw_batch_size`` draws, and the model
    is replayed with each chunk on every chunk of ``batch_size`` inputs, so every input sees the same S networks. The
    chunks bound the size of the hidden activations (draws x inputs x width), which keeps them in cache: a pass over
    all 32 draws of 1024 inputs at width 512 moves 64 MB per activation, a chunk of 4 draws 8 MB.

    Parameters
    ----------
    model, guide : callable
        A Pyro model ``model(x, y=None, **model_kwargs)`` and its trained guide.
    x : torch.Tensor
        Inputs, first dimension N.
    num_samples : int
        S, the number of posterior draws.
    return_sites : sequence of str
        Sites to return (default the network output ``"f"`` of the library's models; ``"obs"`` gives draws of y).
    batch_size : int, optional
        Evaluate the inputs in chunks of this size, reusing the same S draws for every chunk (bounded memory).
    draw_batch_size : int, optional
        Draw and evaluate the S draws in chunks of this size (default: all S at once).
    data_plate : str
        Name of the model's data plate: sites inside it are concatenated over chunks, other sites are global.

    Returns
    -------
    dict
        ``{site: tensor of shape (S, N, ...)}``, computed under ``torch.no_grad()``.
    """
    check_positive_int(num_samples, "num_samples")
    n = x.shape[0]
    chunk = n if batch_size is None else check_positive_int(batch_size, "batch_size")
    draw_chunk = num_samples if draw_batch_size is None else check_positive_int(draw_batch_size, "draw_batch_size")
    inputs = [((x[start : start + chunk],), model_kwargs) for start in range(0, n, chunk)]
    depth = max_plate_nesting(model, x[:1], **model_kwargs)  # the plate stack does not depend on the batch size
    per_chunk: dict[str, list[torch.Tensor]] = {name: [] for name in return_sites}
    for first in range(0, num_samples, draw_chunk):
        draws = min(draw_chunk, num_samples - first)
        traces = vectorized_traces(model, guide, inputs, draws, plate_depth=depth, keep_sites=return_sites)
        missing = [name for name in return_sites if name not in traces[0].nodes]
        if missing:
            sites = [name for name, site in traces[0].nodes.items() if site["type"] == "sample"]
            raise ValueError(f"return_sites {missing} are not sites of the model; its sites are {sites}")
        for name in return_sites:
            pieces = [per_draw_value(trace.nodes[name], draws) for trace in traces]
            data_dim = _data_dim(traces[0].nodes[name], data_plate)
            if len(pieces) == 1 or data_dim is None:  # a global site is the same in every chunk
                per_chunk[name].append(pieces[0])
            else:
                per_chunk[name].append(torch.cat(pieces, dim=data_dim))
    return {name: values[0] if len(values) == 1 else torch.cat(values, dim=0) for name, values in per_chunk.items()}


def _data_dim(site: dict, data_plate: str) -> int | None:
    """Position of the data plate in a ``per_draw_value`` value (``1 + `` its rank among the site's plates)."""
    plates = sorted(frame.dim for frame in site["cond_indep_stack"] if frame.vectorized and frame.name != _DRAWS)
    names = {frame.dim: frame.name for frame in site["cond_indep_stack"]}
    for position, dim in enumerate(plates):
        if names[dim] == data_plate:
            return 1 + position
    return None


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
    (trace,) = vectorized_traces(model, guide, [((x, y), model_kwargs)], num_samples)
    return trace_log_likelihood(trace, num_samples, data_plate=data_plate)


def trace_log_likelihood(trace: poutine.Trace, num_samples: int, *, data_plate: str = "data") -> torch.Tensor:
    r"""Pointwise :math:`\log p(y_i \mid x_i, \theta_s)`, shape ``(S, N)``, from a model trace of
    :func:`vectorized_traces` in which the observations were conditioned on.

    Summed over every observed site; the data dimension is that of the plate named ``data_plate`` (all other batch
    dimensions are summed out).
    """
    total = None
    for site in trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"] or site["infer"].get("_deterministic"):
            continue
        if site_is_subsample(site):
            continue
        log_prob = site["fn"].log_prob(site["value"])
        dims = {frame.name: frame.dim for frame in site["cond_indep_stack"]}
        log_prob = log_prob.reshape((1,) * max(0, -dims[_DRAWS] - log_prob.dim()) + log_prob.shape)
        keep = [log_prob.dim() + dims[_DRAWS]]
        if data_plate in dims:
            keep.append(log_prob.dim() + dims[data_plate])
        elif log_prob.dim() > 1:
            plates = sorted(name for name in dims if name != _DRAWS)
            raise ValueError(
                f"data_plate must name the plate of the observed site {site['name']!r}, one of {plates}; "
                f"got {data_plate!r}"
            )
        summed = [d for d in range(log_prob.dim()) if d not in keep]
        log_prob = log_prob.sum(summed) if summed else log_prob
        log_prob = log_prob.expand(num_samples, *log_prob.shape[1:])
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
