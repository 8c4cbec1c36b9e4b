r"""The paper's low-rank Bayesian LSTM forecaster (Beijing air quality: 2 layers, H = 64, 24 h windows).

Model, for a window :math:`x_{i,1:L} \in \mathbb R^{L\times d}` and target :math:`y_i \in \mathbb R^{k}`
(k = ``horizon``):

.. math::
    h_{i,1:L} = \mathrm{LSTM}_{W}(x_{i,1:L}), \qquad f_i = A_o B_o^\top h_{i,L} + b_o, \qquad
    y_i \mid f_i \sim \mathcal N(f_i, \sigma^2 I_k),

where every packed gate matrix of the LSTM is :math:`W = A B^\top` (:class:`~pyro_lowrank.nn.lstm.LowRankLSTM`,
ranks ``rank_ih``/``rank_hh``; the paper's r = 14/20) and the head is a rank-``head_rank``
:class:`~pyro_lowrank.nn.linear.LowRankLinear`. The factors are global sites sampled once per minibatch (and reused at
every time step); only ``f`` and ``obs`` sit in the data plate, which scales the likelihood by N / B for minibatches
(the data plate and likelihood wiring are those of :class:`~pyro_lowrank.models.supervised.SupervisedModel`).
:math:`\sigma` is a positive point estimate (``PyroParam``, type-II maximum likelihood inside the ELBO) or fixed.
The predictive distribution of :math:`y_i` given S posterior draws :math:`f_i^{(s)}` has mean
:math:`\bar f_i` and variance :math:`\operatorname{Var}_s f_i^{(s)} + \sigma^2`.
"""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_lowrank._validation import check_positive_int, check_rank
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.predictive import PREDICTIVE_LEAF
from pyro_lowrank.nn.linear import LowRankLinear
from pyro_lowrank.nn.lstm import LowRankLSTM

from .likelihoods import GaussianLikelihood
from .supervised import SupervisedModel

__all__ = ["ForecastGaussianLikelihood", "LowRankLSTMForecaster"]


class ForecastGaussianLikelihood(GaussianLikelihood):
    r""":math:`y \sim \mathcal N(f, \sigma^2 I_k)` for k = ``horizon`` outputs per datum (event dim 1 when k > 1).

    Parameters
    ----------
    horizon : int
        k, the number of outputs per datum.
    noise_scale : float
        sigma (its initial value when learned), > 0.
    learn_noise : bool
        Learn sigma as a positive point estimate (``PyroParam``).
    """

    def __init__(self, horizon: int, noise_scale: float = 1.0, learn_noise: bool = True) -> None:
        super().__init__(noise_scale, learn_noise)
        self.num_outputs = check_positive_int(horizon, "horizon")
        self.event_dim = 0 if self.num_outputs == 1 else 1

    def link_input(self, f: torch.Tensor) -> torch.Tensor:
        """``(..., N, 1) -> (..., N)`` for one step ahead; ``(..., N, k)`` unchanged otherwise."""
        return f.squeeze(-1) if self.event_dim == 0 else f

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""Sample (or observe) ``obs`` :math:`\sim \mathcal N(f, \sigma^2 I_k)`.

        Parameters
        ----------
        f : Tensor
            The mean, ``(..., N)`` for k = 1 or ``(..., N, k)`` (after :meth:`link_input`), particle dims first.
        y : Tensor, optional
            Observed targets ``(N,)`` or ``(N, k)``; ``None`` samples them.

        Returns
        -------
        Tensor
            The site's value: ``y`` when observed, else a draw of the shape of ``f``. Called inside the data plate,
            the site's log density :math:`\sum_j \log \mathcal N(y_{ij}; f_{ij}, \sigma^2)` is one term per datum
            (the k outputs form the event when k > 1).
        """
        return pyro.sample("obs", dist.Normal(f, self.noise_scale).to_event(self.event_dim), obs=y,
                           infer={PREDICTIVE_LEAF: True})


class _ForecastNetwork(PyroModule):
    """Windows ``(N, L, input_size)`` to ``(..., N, horizon)``: the head applied to the LSTM's last hidden state."""

    def __init__(self, lstm: LowRankLSTM, head: LowRankLinear) -> None:
        super().__init__()
        self.lstm = lstm
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(x)
        return self.head(output[..., -1, :])

    def num_variational_parameters(self) -> int:
        return self.lstm.num_variational_parameters() + self.head.num_variational_parameters()


class LowRankLSTMForecaster(SupervisedModel):
    """Low-rank Bayesian LSTM forecaster: batch-first :class:`LowRankLSTM`, last hidden state, low-rank head, Gaussian
    likelihood (see the module docstring for the model); a :class:`SupervisedModel` around that network.

    Parameters
    ----------
    input_size : int
        Features per time step (15 for Beijing).
    hidden_size, num_layers : int
        LSTM width H and depth.
    rank_ih, rank_hh : int or sequence of int
        Ranks of the packed input-to-hidden and hidden-to-hidden matrices (one int or one per layer).
    horizon : int
        k, the number of future values predicted per window.
    head_rank : int
        Rank of the ``(k, H)`` output matrix, in ``[1, min(k, H)]``.
    noise_scale, learn_noise : float, bool
        sigma, fixed or its initial value when learned.
    prior, prior_scale : FactorPrior, float
        Factor prior of every layer (each gets its own copy); default Gaussian with ``prior_scale``.
    init_scale_factor : float
        eta, the guide's initial standard deviation relative to the init entry scale.
    dropout : float
        Inter-layer dropout of the LSTM (training mode only).

    Notes
    -----
    ``forward(x, y=None, *, num_data=None, subsample_size=None)`` takes windows ``x`` ``(N, L, input_size)`` and
    targets ``y`` ``(N,)`` (horizon 1) or ``(N, horizon)``; it records the deterministic site ``f`` and the observed
    site ``obs`` in the data plate and returns ``f`` (with leading particle dimensions under vectorisation). The
    submodules are ``network.lstm`` and ``network.head`` (sites ``network.lstm.ih.0.A``, ``network.head.A``, ...)
    and ``likelihood`` (a :class:`ForecastGaussianLikelihood`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        rank_ih: int | list[int] = 14,
        rank_hh: int | list[int] = 20,
        horizon: int = 1,
        head_rank: int = 1,
        noise_scale: float = 1.0,
        learn_noise: bool = True,
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        init_scale_factor: float = 0.1,
        dropout: float = 0.0,
    ) -> None:
        horizon = check_positive_int(horizon, "horizon")
        hidden_size = check_positive_int(hidden_size, "hidden_size")
        head_rank = check_rank(head_rank, horizon, hidden_size, "head_rank")
        lstm = LowRankLSTM(input_size, hidden_size, num_layers, rank_ih, rank_hh, batch_first=True, dropout=dropout,
                           prior=prior, prior_scale=prior_scale, init_scale_factor=init_scale_factor)
        # linear read-out of a tanh-bounded state: target weight variance 1 / H (gain 1)
        head = LowRankLinear(hidden_size, horizon, head_rank, prior=copy.deepcopy(prior), prior_scale=prior_scale,
                             gain=1.0, init_scale_factor=init_scale_factor)
        super().__init__(_ForecastNetwork(lstm, head),
                         likelihood=ForecastGaussianLikelihood(horizon, noise_scale, learn_noise))
        self.horizon = horizon
        self.input_size = lstm.input_size

    @property
    def lstm(self) -> LowRankLSTM:
        """The batch-first :class:`LowRankLSTM` (``network.lstm``)."""
        return self.network.lstm

    @property
    def head(self) -> LowRankLinear:
        """The low-rank ``(horizon, H)`` read-out (``network.head``)."""
        return self.network.head

    @property
    def noise_scale(self) -> torch.Tensor:
        """The current observation noise sigma (learned or fixed)."""
        return self.likelihood.noise_scale

    def num_variational_parameters(self) -> int:
        """Learned numbers of a mean-field guide over the LSTM and head factors (sigma, a point estimate, excluded)."""
        return self.network.num_variational_parameters()

    # ------------------------------------------------------------------ data
    def _check_shapes(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.input_size or x.shape[1] == 0:
            raise ValueError(f"x must have shape (N, L, input_size={self.input_size}) with L >= 1, "
                             f"got {tuple(x.shape)}")
        if y is not None:
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
            expected = (x.shape[0],) if self.horizon == 1 else (x.shape[0], self.horizon)
            if tuple(y.shape) != expected:
                raise ValueError(f"y must have shape {expected} to match x (N={x.shape[0]}, horizon={self.horizon}), "
                                 f"got {tuple(y.shape)}")

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Validate a dataset once (``fit`` calls this): shapes, finite values and floating targets."""
        super().check_data(x, y)
        if y is not None and not y.dtype.is_floating_point:
            raise ValueError(f"y must be real-valued (a floating dtype) for a Gaussian likelihood, got {y.dtype}")

    def extra_repr(self) -> str:
        return f"horizon={self.horizon}, learn_noise={self.likelihood.learn_noise}"
