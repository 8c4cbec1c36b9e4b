r"""SWAG: stochastic weight averaging Gaussian (Maddox et al., NeurIPS 2019) for any ``nn.Module``.

Starting from a pre-trained network, SGD is run with a constant (or cyclic) learning rate and an iterate
:math:`\theta_i \in \mathbb R^P` is *collected* once per epoch (or every ``collect_every`` steps). SWAG keeps

* the running first moment (the SWA solution) :math:`\bar\theta = \frac1n \sum_{i=1}^n \theta_i`,
* the running second moment :math:`\overline{\theta^2} = \frac1n \sum_{i=1}^n \theta_i^2` (element-wise),
* the last :math:`K` (``max_rank``) deviation columns :math:`\hat D = [\theta_i - \bar\theta_i]`, where
  :math:`\bar\theta_i` is the running mean *after* collecting :math:`\theta_i` (the mean of the first :math:`i`
  iterates; this is the reference implementation's ``collect_model``),

and defines the Gaussian posterior

.. math::

    q(\theta) = \mathcal N\!\Big(\bar\theta,\; s\,\big(\Sigma_\text{diag} + \tfrac{1}{K-1} \hat D \hat D^\top\big)\Big),
    \qquad \Sigma_\text{diag} = \operatorname{diag}\big(\max(\overline{\theta^2} - \bar\theta^2, \epsilon)\big),

sampled without forming any :math:`P \times P` matrix:

.. math::

    \theta = \bar\theta + \sqrt{s}\,\Big(\Sigma_\text{diag}^{1/2} z_1 + \tfrac{1}{\sqrt{K-1}} \hat D z_2\Big),
    \qquad z_1 \sim \mathcal N(0, I_P),\; z_2 \sim \mathcal N(0, I_K).

**Scale convention** (that of ``wjmaddox/swa_gaussian``, ``SWAG.sample_fullrank``): ``scale`` :math:`s` multiplies the
*covariance*, so the random part of a sample is multiplied by :math:`\sqrt s`. The paper's posterior
:math:`\Sigma_\text{SWAG} = \frac12(\Sigma_\text{diag} + \frac{1}{K-1}\hat D\hat D^\top)`, i.e. the draw
:math:`\bar\theta + \frac{1}{\sqrt2}\Sigma_\text{diag}^{1/2} z_1 + \frac{1}{\sqrt{2(K-1)}}\hat D z_2`, is ``scale=0.5``
(the default here and the value the reference experiments use); the :math:`\frac12` is *not* applied a second time.
``scale=1`` gives the unhalved covariance. :math:`K` is the number of deviation columns actually stored
(``max_rank`` once at least ``max_rank`` iterates have been collected; the reference divides by ``max_rank - 1``
even before, which only differs while fewer than ``max_rank`` iterates exist); with :math:`K \le 1` the low-rank term
is dropped. :math:`\epsilon` is ``var_clamp`` (1e-30, as in the reference).

Learning-rate schedules of :meth:`SWAG.fit` (plain SGD with momentum):

* ``"constant"``: every step uses ``lr`` (the SWAG paper's setting);
* ``"cyclic"``: within each collection period of :math:`c` steps the rate decays linearly from ``lr_max`` to ``lr``,
  :math:`\alpha_t = (1 - u_t)\,\alpha_\text{max} + u_t\,\alpha`, :math:`u_t = ((t - 1) \bmod c + 1)/c`, so the
  iterate is collected at the end of the cycle where the rate equals ``lr`` (Izmailov et al., 2018).

BatchNorm is out of scope: a module containing a batch-norm layer is rejected, because a sampled :math:`\theta` would
need its running statistics recomputed on the training data (the reference's ``bn_update``) before every prediction.

Storage: ``num_parameters`` :math:`= 2P + KP` (first moment, second moment, :math:`K` deviation columns), :math:`P`
the number of trainable scalars of the module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm import tqdm

from pyro_lowrank._validation import check_choice, check_finite, check_positive, check_positive_int

from .deterministic import LOSSES

__all__ = ["SCHEDULES", "SWAG"]

SCHEDULES = ("constant", "cyclic")


class SWAG(nn.Module):
    r"""SWAG posterior over the trainable parameters of ``module`` (see the module docstring for the math).

    The wrapped ``module`` is a submodule, so ``swag.to(device)`` moves it together with the SWAG statistics and
    ``swag.state_dict()`` checkpoints both (the deviation buffer is resized on load). ``swag(x)`` runs the module at
    its *current* parameters.

    Parameters
    ----------
    module : nn.Module
        The (pre-trained) network. Only parameters with ``requires_grad=True`` are modelled; their flattened order is
        that of ``module.parameters()`` (``parameters_to_vector``). Batch-norm layers are rejected (``TypeError``).
    max_rank : int
        :math:`K`, the number of most recent deviation columns kept (20 in the paper).
    var_clamp : float
        Lower clamp :math:`\epsilon` of the diagonal variance.

    Attributes
    ----------
    mean, sq_mean : tensor (P,)
        Running first and second moments :math:`\bar\theta`, :math:`\overline{\theta^2}`.
    num_collected : int
        Number of iterates collected so far (:math:`n`).

    Examples
    --------
    >>> swag = SWAG(net, max_rank=20)
    >>> swag.fit((x, y), likelihood="categorical", num_epochs=40, lr=0.01)   # collects one iterate per epoch
    >>> f = swag.sample_outputs(x_test, num_samples=30)                      # (30, N, C) outputs at SWAG draws
    """

    def __init__(self, module: nn.Module, max_rank: int = 20, var_clamp: float = 1e-30) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        for name, sub in module.named_modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                raise TypeError(
                    f"module contains the batch-norm layer {name or '<root>'!r} ({type(sub).__name__}); SWAG here does "
                    "not support BatchNorm, whose running statistics would have to be recomputed on the training data "
                    "for every sampled theta. Use a network without BatchNorm (or LayerNorm)."
                )
        self.module = module
        self.max_rank = check_positive_int(max_rank, "max_rank")
        check_positive(var_clamp, "var_clamp")
        self.var_clamp = float(var_clamp)
        params = self._params()
        if not params:
            raise ValueError("module has no trainable parameters (requires_grad=True); SWAG has nothing to model")
        theta = parameters_to_vector(params).detach()
        self.register_buffer("mean", torch.zeros_like(theta))
        self.register_buffer("sq_mean", torch.zeros_like(theta))
        self.register_buffer("_deviations", theta.new_zeros((0, theta.numel())))  # rows = columns of D
        self.register_buffer("_num_collected", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------------------------------------ statistics
    def _params(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    @property
    def num_features(self) -> int:
        """:math:`P`, the number of modelled (trainable) scalars."""
        return self.mean.numel()

    @property
    def num_collected(self) -> int:
        """Number of iterates collected so far."""
        return int(self._num_collected)

    @property
    def rank(self) -> int:
        """:math:`K`, the number of deviation columns stored (``min(num_collected, max_rank)``)."""
        return self._deviations.shape[0]

    @property
    def num_parameters(self) -> int:
        r"""Stored scalars :math:`2P + KP`: first moment, second moment and the :math:`K` deviation columns."""
        return (2 + self.rank) * self.num_features

    @torch.no_grad()
    def collect(self) -> None:
        r"""Collect the module's current parameters :math:`\theta_n` as the next iterate.

        Updates :math:`\bar\theta \leftarrow \frac{n}{n+1}\bar\theta + \frac{1}{n+1}\theta_n` (same for the second
        moment), appends the column :math:`\theta_n - \bar\theta` (new mean) and drops the oldest column beyond
        ``max_rank``.
        """
        theta = parameters_to_vector(self._params()).detach().to(self.mean)
        if theta.numel() != self.num_features:
            raise ValueError(
                f"the module now has {theta.numel()} trainable scalars, SWAG was built for {self.num_features}"
            )
        n = self.num_collected
        self.mean.mul_(n / (n + 1.0)).add_(theta / (n + 1.0))
        self.sq_mean.mul_(n / (n + 1.0)).add_(theta.square() / (n + 1.0))
        deviations = torch.cat([self._deviations, (theta - self.mean).unsqueeze(0)])
        self._deviations = deviations[-self.max_rank :].clone()
        self._num_collected.add_(1)

    def swa_mean(self) -> torch.Tensor:
        r"""The SWA solution :math:`\bar\theta`, shape (P,)."""
        self._check_collected()
        return self.mean.clone()

    def variance(self) -> torch.Tensor:
        r"""Diagonal variance :math:`\max(\overline{\theta^2} - \bar\theta^2, \epsilon)`, shape (P,)."""
        self._check_collected()
        return (self.sq_mean - self.mean.square()).clamp_min(self.var_clamp)

    @property
    def deviations(self) -> torch.Tensor:
        r""":math:`\hat D`, shape (P, K): column :math:`k` is :math:`\theta_i - \bar\theta_i` of the :math:`k`-th most
        recent kept iterate (oldest first)."""
        return self._deviations.T.clone()

    def covariance(self, scale: float = 0.5, cov: bool = True) -> torch.Tensor:
        r"""Dense :math:`s(\Sigma_\text{diag} + \frac{1}{K-1}\hat D\hat D^\top)`, shape (P, P) (for checks on small
        networks; sampling never forms it)."""
        check_positive(scale, "scale")
        sigma = torch.diag(self.variance())
        if cov and self.rank > 1:
            d = self._deviations
            sigma = sigma + d.T @ d / (self.rank - 1)
        return scale * sigma

    def _check_collected(self) -> None:
        if self.num_collected == 0:
            raise RuntimeError("SWAG has collected no iterates yet; call fit(...) or collect() first")

    # ------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        *,
        scale: float = 0.5,
        cov: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Draw :math:`\theta = \bar\theta + \sqrt{s}(\Sigma_\text{diag}^{1/2} z_1 + \hat D z_2/\sqrt{K-1})`.

        Parameters
        ----------
        num_samples : int, optional
            S; ``None`` returns a single vector of shape (P,), otherwise (S, P).
        scale : float
            :math:`s`, multiplies the covariance (0.5 = the paper's :math:`\Sigma_\text{SWAG}`).
        cov : bool
            Include the low-rank term (``False``: SWAG-diagonal).
        generator : torch.Generator, optional
            Random number generator on the statistics' device.
        """
        self._check_collected()
        check_positive(scale, "scale")
        shape = (1 if num_samples is None else check_positive_int(num_samples, "num_samples"),)
        mean = self.mean
        z1 = torch.randn(shape + mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        noise = self.variance().sqrt() * z1
        if cov and self.rank > 1:
            z2 = torch.randn(shape + (self.rank,), generator=generator, device=mean.device, dtype=mean.dtype)
            noise = noise + z2 @ self._deviations / math.sqrt(self.rank - 1)
        theta = mean + math.sqrt(scale) * noise
        return theta[0] if num_samples is None else theta

    @torch.no_grad()
    def load_sample(self, theta: torch.Tensor | None = None) -> None:
        r"""Write a parameter vector into the module (``vector_to_parameters``); ``None`` loads the SWA mean."""
        theta = self.swa_mean() if theta is None else theta
        if theta.shape != self.mean.shape:
            raise ValueError(f"theta must have shape {tuple(self.mean.shape)}, got {tuple(theta.shape)}")
        vector_to_parameters(theta.to(self.mean, copy=True), self._params())  # params become views of it

    @torch.no_grad()
    def sample_outputs(
        self,
        x: torch.Tensor,
        num_samples: int = 30,
        *,
        scale: float = 0.5,
        cov: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Module outputs at ``num_samples`` SWAG draws, stacked to shape (S, N, ...).

        The module's parameters are restored afterwards (also on error); its train/eval mode is set to ``eval``
        during the passes and restored.
        """
        thetas = self.sample(num_samples, scale=scale, cov=cov, generator=generator)
        params = self._params()
        saved = parameters_to_vector(params).detach().clone()
        was_training = self.module.training
        self.module.eval()
        try:
            outputs = []
            for theta in thetas:
                vector_to_parameters(theta, params)
                outputs.append(self.module(x))
            return torch.stack(outputs)
        finally:
            vector_to_parameters(saved, params)
            self.module.train(was_training)

    def forward(self, *args, **kwargs):
        """Run the wrapped module at its current parameters."""
        return self.module(*args, **kwargs)

    # -------------------------------------------------------------------------------------------------- training
    def fit(
        self,
        data: tuple[torch.Tensor, torch.Tensor],
        *,
        likelihood: str = "categorical",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        num_epochs: int = 40,
        batch_size: int = 128,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: str = "constant",
        lr_max: float | None = None,
        collect_every: int | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> float:
        r"""Run the SWAG phase of SGD on ``data`` and collect iterates; returns the wall time in seconds.

        The module is assumed pre-trained (SWAG starts from a good solution; the paper pre-trains with the usual
        schedule). SGD with momentum runs ``num_epochs`` epochs of shuffled minibatches of the mean minibatch loss,
        and the iterate is collected at the end of every epoch, or every ``collect_every`` optimiser steps when
        given (steps are counted across epochs).

        Parameters
        ----------
        data : (x, y)
            Training tensors on the module's device.
        likelihood : {"categorical", "bernoulli", "gaussian"}
            Selects the loss (cross-entropy, BCE with logits, MSE), as in ``train_deterministic``.
        loss_fn : callable, optional
            ``loss_fn(f, y)`` overriding ``likelihood``.
        num_epochs : int
            Epochs of the SWAG phase.
        lr : float
            The SGD rate (``"constant"``), or the rate at the end of every cycle where the iterate is collected
            (``"cyclic"``).
        momentum, weight_decay : float
            SGD settings (``weight_decay`` acts as a Gaussian prior; the reference uses 1e-4 to 5e-4 on CIFAR).
        schedule : {"constant", "cyclic"}
            See the module docstring.
        lr_max : float, optional
            Rate at the start of every cycle; required for ``"cyclic"``.
        collect_every : int, optional
            Collect every this many steps instead of once per epoch (also the cycle length of ``"cyclic"``).
        seed : int, optional
            Seed of the minibatch order.
        """
        schedule = check_choice(schedule, "schedule", SCHEDULES)
        if loss_fn is None:
            likelihood = check_choice(likelihood, "likelihood", tuple(LOSSES))
            loss_fn = LOSSES[likelihood]
        x, y = data
        check_finite(x, "data[0] (x)")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"data[1] (y) must have {x.shape[0]} entries to match x, got shape {tuple(y.shape)}")
        num_epochs = check_positive_int(num_epochs, "num_epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        check_positive(lr, "lr")
        steps_per_epoch = math.ceil(x.shape[0] / batch_size)
        period = steps_per_epoch if collect_every is None else check_positive_int(collect_every, "collect_every")
        if schedule == "cyclic":
            if lr_max is None:
                raise ValueError("lr_max is required for schedule='cyclic', got None")
            check_positive(lr_max, "lr_max")

        generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        params = self._params()
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        start = time.perf_counter()
        self.module.train()
        step = 0
        for _ in tqdm(range(num_epochs), desc="swag", disable=not progress, leave=False):
            perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
            for begin in range(0, x.shape[0], batch_size):
                step += 1
                if schedule == "cyclic":
                    u = ((step - 1) % period + 1) / period
                    for group in opt.param_groups:
                        group["lr"] = (1.0 - u) * lr_max + u * lr
                index = perm[begin : begin + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(self.module(x[index]), y[index])
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"SWAG SGD loss became non-finite ({float(loss)}); lower lr")
                loss.backward()
                opt.step()
                if collect_every is not None and step % period == 0:
                    self.collect()
            if collect_every is None:
                self.collect()
        self.module.eval()
        return time.perf_counter() - start

    # -------------------------------------------------------------------------------------------- serialisation
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # torch hook
        key = prefix + "_deviations"
        if key in state_dict:  # the number of stored columns varies: resize before the copy
            self._deviations = self._deviations.new_zeros(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
