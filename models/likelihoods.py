r"""Observation models for the reference networks.

Each likelihood maps the network output ``f`` (shape ``(..., N, k)``) to one observed site ``obs`` inside the data
plate and converts predictive draws of ``f`` into predictive quantities:

* :class:`GaussianLikelihood`: :math:`y \sim \mathcal N(f, \sigma^2)` with a fixed or learned noise scale
  (learned noise is a point estimate, a positive ``PyroParam``: type-II maximum likelihood inside the ELBO);
* :class:`BernoulliLikelihood`: :math:`y \sim \text{Bernoulli}(\operatorname{sigmoid} f)`;
* :class:`CategoricalLikelihood`: :math:`y \sim \text{Categorical}(\operatorname{softmax} f)`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam

from pyro_lowrank._validation import check_positive, check_positive_int
from pyro_lowrank.predictive import PREDICTIVE_LEAF

__all__ = ["BernoulliLikelihood", "CategoricalLikelihood", "GaussianLikelihood", "Likelihood", "make_likelihood"]


class Likelihood(PyroModule):
    """Base class. ``num_outputs`` is the width the network must produce; ``event_dim`` that of ``f`` per datum."""

    num_outputs: int = 1
    event_dim: int = 0

    def link_input(self, f: torch.Tensor) -> torch.Tensor:
        """Network output ``(..., N, num_outputs)`` to the per-datum parameter (``(..., N)`` or ``(..., N, C)``)."""
        return f.squeeze(-1)

    def check_targets(self, y: torch.Tensor) -> None:
        """Raise ``ValueError`` when ``y`` has values outside the likelihood's support."""

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class GaussianLikelihood(Likelihood):
    r""":math:`y \sim \mathcal N(f, \sigma^2)`.

    Parameters
    ----------
    noise_scale : float
        sigma (the initial value when learned), > 0.
    learn_noise : bool
        Learn sigma as a positive point-estimated parameter.
    """

    def __init__(self, noise_scale: float = 1.0, learn_noise: bool = False) -> None:
        super().__init__()
        check_positive(noise_scale, "noise_scale")
        self.learn_noise = bool(learn_noise)
        if self.learn_noise:
            self.noise_scale = PyroParam(torch.tensor(float(noise_scale)), constraints.positive)
        else:
            self.register_buffer("noise_scale", torch.tensor(float(noise_scale)))

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return pyro.sample("obs", dist.Normal(f, self.noise_scale), obs=y, infer={PREDICTIVE_LEAF: True})


class BernoulliLikelihood(Likelihood):
    r""":math:`y \sim \text{Bernoulli}(\operatorname{sigmoid} f)` with targets in {0, 1}."""

    def check_targets(self, y: torch.Tensor) -> None:
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"y must contain only 0 and 1 for a Bernoulli likelihood, got values {y.unique()[:5].tolist()}")

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return pyro.sample("obs", dist.Bernoulli(logits=f), obs=None if y is None else y.to(f.dtype), infer={PREDICTIVE_LEAF: True})

    @staticmethod
    def class_probs(f: torch.Tensor) -> torch.Tensor:
        """Per-draw class probabilities ``(..., 2)`` from logit draws ``(...)``."""
        p = torch.sigmoid(f)
        return torch.stack([1 - p, p], dim=-1)


class CategoricalLikelihood(Likelihood):
    r""":math:`y \sim \text{Categorical}(\operatorname{softmax} f)` with integer targets in [0, C)."""

    event_dim = 1

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_outputs = check_positive_int(num_classes, "num_classes")

    def link_input(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def check_targets(self, y: torch.Tensor) -> None:
        if y.dtype.is_floating_point or bool(((y < 0) | (y >= self.num_outputs)).any()):
            raise ValueError(
                f"y must hold integer class labels in [0, {self.num_outputs}), got dtype {y.dtype} and range "
                f"[{y.min().item()}, {y.max().item()}]"
            )

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return pyro.sample("obs", dist.Categorical(logits=f), obs=y, infer={PREDICTIVE_LEAF: True})

    @staticmethod
    def class_probs(f: torch.Tensor) -> torch.Tensor:
        """Per-draw class probabilities from logit draws ``(..., C)``."""
        return torch.softmax(f, dim=-1)


def make_likelihood(likelihood: str | Likelihood, num_outputs: int = 1, **kwargs) -> Likelihood:
    """Build a likelihood by name: ``"gaussian"``, ``"bernoulli"`` or ``"categorical"`` (needs ``num_outputs``)."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    if likelihood == "gaussian":
        return GaussianLikelihood(**kwargs)
    if likelihood == "bernoulli":
        return BernoulliLikelihood()
    if likelihood == "categorical":
        return CategoricalLikelihood(num_outputs)
    raise ValueError(f"likelihood must be 'gaussian', 'bernoulli', 'categorical' or a Likelihood, got {likelihood!r}")
