r"""A Pyro effect handler that weights the KL term of the ELBO.

Inside ``KLWeight(beta)`` every latent (non-observed) sample site of both the model and the guide has its ``scale``
multiplied by beta, so :math:`\log p(\theta) - \log q(\theta)` (or the analytic KL that
:class:`~pyro.infer.TraceMeanField_ELBO` computes from the guide site's scale) is multiplied by beta while the
likelihood is untouched:

.. math:: \mathcal L_\beta = \mathbb E_q[\log p(y \mid \theta)] - \beta\, \mathrm{KL}(q(\theta) \,\|\, p(\theta)).

beta < 1 early in training ("KL annealing") avoids the posterior collapsing onto the prior before the likelihood has
shaped the means.
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

__all__ = ["KLWeight", "linear_kl_schedule"]


class KLWeight(Messenger):
    """Multiply the scale of latent sample sites by ``beta`` (observed sites and subsample sites untouched)."""

    def __init__(self, beta: float | torch.Tensor) -> None:
        super().__init__()
        if isinstance(beta, torch.Tensor):
            # A tensor weight: the compiled ELBO (JitTraceMeanField_ELBO) passes beta as an input of its graph, so
            # annealing changes it without re-tracing. It is not validated here (that would read its value).
            if beta.numel() != 1:
                raise ValueError(f"kl_weight must be a scalar, got a tensor of shape {tuple(beta.shape)}")
            self.beta: float | torch.Tensor = beta
            return
        if not beta >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {beta!r}")
        self.beta = float(beta)

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["infer"].get("_deterministic"):
            return
        if msg["infer"].get("_do_not_trace") or site_is_subsample(msg):
            return
        msg["scale"] = self.beta * msg["scale"]


def linear_kl_schedule(step: int, kl_weight: float, anneal_steps: int) -> float:
    """beta_t = kl_weight * min(1, (t + 1) / anneal_steps); constant ``kl_weight`` when ``anneal_steps == 0``."""
    if anneal_steps <= 0:
        return kl_weight
    return kl_weight * min(1.0, (step + 1) / anneal_steps)
