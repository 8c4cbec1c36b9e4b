r"""A Bayesian LSTM whose packed gate matrices are low-rank factorisations, :math:`W = A B^\top`.

Layer :math:`\ell` (input width :math:`n_\ell`, :math:`n_0` = ``input_size``, :math:`n_{\ell>0} = H`) has the packed
input-to-hidden matrix :math:`W_{ih}^{(\ell)} = A_{ih} B_{ih}^\top \in \mathbb R^{4H\times n_\ell}` (rank
``rank_ih[l]``), the hidden-to-hidden matrix :math:`W_{hh}^{(\ell)} = A_{hh} B_{hh}^\top \in \mathbb R^{4H\times H}`
(rank ``rank_hh[l]``) and one bias :math:`b^{(\ell)} = b_{ih} + b_{hh} \in \mathbb R^{4H}`. With gate order
(i, f, g, o) as in :class:`torch.nn.LSTM`,

.. math::
    (\tilde i_t, \tilde f_t, \tilde g_t, \tilde o_t) = W_{ih} x_t + b + W_{hh} h_{t-1}, \qquad
    c_t = \sigma(\tilde f_t) \odot c_{t-1} + \sigma(\tilde i_t) \odot \tanh \tilde g_t, \qquad
    h_t = \sigma(\tilde o_t) \odot \tanh c_t .

The factors are sampled once per forward call (once per sequence batch) and the same W is used at every time step
(Fortunato et al. 2017, "Bayesian recurrent neural networks", Alg. 2). The input projections of all L steps are one
factored product :math:`(x B_{ih}) A_{ih}^\top` (cost :math:`N L r_{ih} (n_\ell + 4H)`); the recurrence costs
:math:`N r_{hh} (H + 4H)` per step through :math:`(h B_{hh}) A_{hh}^\top`. :math:`W_{hh}` is formed (once, not per
step) only when that is cheaper over the whole sequence, i.e. when :math:`N L r (m + n) > m n (r + N L)`.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive_int, check_rank
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.guides.init import svd_init
from pyro_lowrank.nn import linear as _linear
from pyro_lowrank.nn.linear import (
    LowRankLinear,
    align_to_plates,
    check_batched_under_plates,
    factor_matmul,
    fold_constant_batch,
    strip_batch,
)

__all__ = ["LowRankLSTM", "check_lstm"]

_COPIED = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout")


def _per_layer_ranks(rank: object, name: str, num_layers: int) -> list[object]:
    """``rank`` as one entry per layer (an int is repeated; a sequence must have ``num_layers`` entries)."""
    if rank is None:
        raise ValueError(f"{name} is required: an int rank for every layer or a sequence of {num_layers} ints, "
                         "got None")
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        return [rank] * num_layers
    if isinstance(rank, (str, bytes)) or not isinstance(rank, Sequence):
        raise ValueError(f"{name} must be an int or a sequence of {num_layers} ints (one per layer), got {rank!r}")
    if len(rank) != num_layers:
        raise ValueError(f"{name} must have one rank per layer ({num_layers}), got {len(rank)} ranks: {list(rank)}")
    return list(rank)


def _dense_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x W^T`` for ``x`` of shape ``bx + (n,)`` and ``w`` of shape ``bw + (m, n)``, folding the input batch
    dimensions against which ``w`` is constant into one GEMM (as :func:`~pyro_lowrank.nn.linear.factor_matmul`)."""
    x2, tail, keep, length = fold_constant_batch(x, w.shape[:-2])
    out = x2 @ strip_batch(w, keep, length).transpose(-1, -2)
    return out.reshape(out.shape[:-2] + tail + (w.shape[-2],))


def check_lstm(lstm: nn.Module) -> None:
    """Raise unless ``lstm`` is an ``nn.LSTM`` that a :class:`LowRankLSTM` can replace.

    Parameters
    ----------
    lstm : nn.Module
        The module to check.

    Raises
    ------
    TypeError
        If it is not an ``nn.LSTM``.
    ValueError
        If it is bidirectional or has projections (``proj_size > 0``).
    """
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"lstm must be a torch.nn.LSTM, got {type(lstm).__name__}")
    if lstm.bidirectional:
        raise ValueError("lstm must be unidirectional: LowRankLSTM supports bidirectional=False only, "
                         "got bidirectional=True")
    if lstm.proj_size > 0:
        raise ValueError(f"lstm must have no projections: LowRankLSTM supports proj_size=0 only, "
                         f"got proj_size={lstm.proj_size}")


class LowRankLSTM(PyroModule):
    r"""Low-rank Bayesian drop-in for :class:`torch.nn.LSTM` (unidirectional, no projections).

    Parameters
    ----------
    input_size, hidden_size : int
        Input width :math:`n_0` and hidden width H.
    num_layers : int
        Number of stacked layers.
    rank_ih, rank_hh : int or sequence of int
        Ranks of :math:`W_{ih}^{(\ell)}` (in :math:`[1, \min(4H, n_\ell)]`) and :math:`W_{hh}^{(\ell)}` (in
        :math:`[1, \min(4H, H)]`): one int for all layers or one per layer. Required (``None`` is rejected).
    bias : bool
        Whether each layer has a Bayesian bias :math:`b = b_{ih} + b_{hh}` (one site of shape ``(4H,)``).
    batch_first : bool
        Inputs/outputs ``(N, L, features)`` instead of ``(L, N, features)``.
    dropout : float
        Dropout probability on the outputs of every layer but the last (training mode only), as in ``nn.LSTM``.
    prior : FactorPrior, optional
        Prior of every factor and bias entry; every submodule gets its own deep copy. Default
        ``GaussianPrior(prior_scale)``.
    prior_scale : float or "matched"
        Standard deviation of the default Gaussian prior; ``"matched"``: per gate matrix, the scale whose implied
        prior on W has the variance of the matrix's variance-matching init (see :class:`LowRankLinear`).
    init_scale_factor : float
        eta: the guide's initial standard deviation is eta times the init's factor entry scale.

    Notes
    -----
    Submodules ``ih[l]`` (:class:`LowRankLinear` ``(n_l, 4H)`` with ``sequence_dims=1``, carrying the bias) and
    ``hh[l]`` (``(H, 4H)``, no bias), so sites are named ``ih.0.A``, ``ih.0.B``, ``ih.0.bias``, ``hh.0.A``, ...
    (prefixed by the module's name in a model) and guides, ``factor_sites()`` and ``weight_posterior`` work per matrix.

    Random initialisation: variance matching with target weight variance :math:`\sigma_W^2 = 1/(3H)`, the variance
    of torch's default LSTM init :math:`U(-1/\sqrt H, 1/\sqrt H)`; the bias means are 0 except the forget gate's,
    :math:`b_{H:2H} = 1`. :meth:`from_lstm` initialises from a trained ``nn.LSTM`` by truncated SVD instead.

    ``forward(input, hx=None)`` returns ``(output, (h_n, c_n))`` exactly like ``nn.LSTM``. When the factors carry
    leading particle dimensions (vectorised ELBO particles, vectorised prediction: batch shape ``(P, 1)``) these come
    first: ``output`` ``(P, N, L, H)`` (batch-first) or ``(P, L, N, H)``, ``h_n``/``c_n`` ``(P, num_layers, N, H)``.
    Inputs that already carry them (``(P, N, L, n)``, e.g. from an earlier Bayesian layer) are accepted as well.
    An unbatched input ``(L, n)`` works as in torch outside vectorised plates and raises ``ValueError`` inside them
    (add a batch dimension of size 1).
    """

    bidirectional = False  # nn.LSTM attributes, for code that inspects them
    proj_size = 0

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        rank_ih: int | Sequence[int] | None = None,
        rank_hh: int | Sequence[int] | None = None,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        prior: FactorPrior | None = None,
        prior_scale: float | str = 1.0,
        init_scale_factor: float = 0.1,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = hidden = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout={dropout} acts between layers only and has no effect with num_layers=1",
                          UserWarning, stacklevel=2)
        # prior_scale (a positive float or "matched") is checked by every LowRankLinear below
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        widths = [self.input_size] + [hidden] * (self.num_layers - 1)
        ranks_ih = _per_layer_ranks(rank_ih, "rank_ih", self.num_layers)
        ranks_hh = _per_layer_ranks(rank_hh, "rank_hh", self.num_layers)
        rank_ih = tuple(check_rank(r, 4 * hidden, n, f"rank_ih[{l}]")
                             for l, (r, n) in enumerate(zip(ranks_ih, widths)))
        rank_hh = tuple(check_rank(r, 4 * hidden, hidden, f"rank_hh[{l}]") for l, r in enumerate(ranks_hh))

        def layer(n_in: int, rank: int, with_bias: bool, gain: float, seq: int) -> LowRankLinear:
            return LowRankLinear(n_in, 4 * hidden, rank, bias=with_bias,
                                 prior=None if prior is None else copy.deepcopy(prior), prior_scale=prior_scale,
                                 gain=gain, init_scale_factor=init_scale_factor, sequence_dims=seq)

        # variance matching: Var(mu_A mu_B^T)_ij = gain / n_in = 1 / (3H), torch's U(-1/sqrt(H), 1/sqrt(H)) variance
        self.ih = PyroModule[nn.ModuleList](
            [layer(n, r, self.bias, n / (3.0 * hidden), 1) for n, r in zip(widths, rank_ih)]
        )
        self.hh = PyroModule[nn.ModuleList]([layer(hidden, r, False, 1.0 / 3.0, 0) for r in rank_hh])
        if self.bias:
            with torch.no_grad():
                for module in self.ih:
                    module.bias_init.zero_()
                    module.bias_init[hidden : 2 * hidden] = 1.0  # forget gate open at the start

    # ------------------------------------------------------------------ construction from a trained LSTM
    @classmethod
    def from_lstm(
        cls,
        lstm: nn.LSTM,
        rank_ih: int | Sequence[int],
        rank_hh: int | Sequence[int],
        **kwargs: Any,
    ) -> "LowRankLSTM":
        r"""SVD-initialised low-rank LSTM from a trained ``nn.LSTM``.

        Each packed matrix gets :math:`\mu_A = U_r\Sigma_r^{1/2}`, :math:`\mu_B = V_r\Sigma_r^{1/2}`, so
        :math:`\mu_A\mu_B^\top` is its best rank-r approximation (Eckart-Young-Mirsky); the bias mean is
        ``bias_ih + bias_hh``. ``num_layers``, ``batch_first``, ``dropout``, ``bias``, the dtype and the device are
        copied from ``lstm``; ``kwargs`` go to the constructor (``prior``, ``prior_scale``, ``init_scale_factor``).

        Parameters
        ----------
        lstm : nn.LSTM
            The trained LSTM (unidirectional, ``proj_size=0``).
        rank_ih, rank_hh : int or sequence of int
            As in the constructor.
        **kwargs
            ``prior``, ``prior_scale``, ``init_scale_factor``.

        Returns
        -------
        LowRankLSTM
            At full ranks, its forward at the factor means reproduces ``lstm``.

        Raises
        ------
        TypeError
            If ``lstm`` is not an ``nn.LSTM``.
        ValueError
            For ``bidirectional=True`` or ``proj_size > 0`` (not supported), ranks out of range, or ``kwargs`` that
            would override a setting copied from ``lstm``.
        """
        check_lstm(lstm)
        clashes = sorted(set(kwargs) & set(_COPIED))
        if clashes:
            raise ValueError(f"{clashes} are copied from lstm and cannot be passed to from_lstm")
        weight = lstm.weight_ih_l0
        layer = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, rank_ih, rank_hh, bias=lstm.bias,
                    batch_first=lstm.batch_first, dropout=lstm.dropout, **kwargs)
        layer = layer.to(dtype=weight.dtype, device=weight.device)
        for index, (ih, hh) in enumerate(zip(layer.ih, layer.hh)):
            bias = None
            if lstm.bias:
                bias = getattr(lstm, f"bias_ih_l{index}") + getattr(lstm, f"bias_hh_l{index}")
            ih.set_factor_init(svd_init(getattr(lstm, f"weight_ih_l{index}"), ih.rank), bias)
            hh.set_factor_init(svd_init(getattr(lstm, f"weight_hh_l{index}"), hh.rank))
        return layer

    # ------------------------------------------------------------------ forward
    def _initial_state(
        self, hx: Any, x: torch.Tensor, unbatched: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h_0, c_0)`` as ``(..., num_layers, N, H)``: zeros on the input's device/dtype, or the checked ``hx``."""
        layers, n, hidden = self.num_layers, x.shape[-3], self.hidden_size
        if hx is None:
            zeros = x.new_zeros(layers, n, hidden)
            return zeros, zeros
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, torch.Tensor) for t in hx):
            raise TypeError(f"hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
        expected = (layers, hidden) if unbatched else (layers, n, hidden)
        out = []
        for name, state in zip(("h_0", "c_0"), hx):
            if state.dim() < len(expected) or tuple(state.shape[-len(expected):]) != expected:
                layout = "(num_layers, hidden_size)" if unbatched else "(num_layers, N, hidden_size)"
                raise ValueError(f"hx {name} must have shape {layout} = {expected} (optionally after particle "
                                 f"dimensions) for this input, got {tuple(state.shape)}")
            out.append(state.unsqueeze(-2) if unbatched else state)
        return out[0], out[1]

    def _recurrent_map(self, index: int, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``h -> h W_hh^T`` for layer ``index``, with the factors fetched once (``rows`` = N L per draw)."""
        hh = self.hh[index]
        a, b = align_to_plates(hh.A, 2), align_to_plates(hh.B, 2)
        if _linear.factored_is_cheaper(rows, 4 * self.hidden_size, self.hidden_size, hh.rank):
            return lambda h: factor_matmul(h, a, b)
        weight = a @ b.transpose(-1, -2)  # formed once for the whole sequence
        return lambda h: _dense_matmul(h, weight)

    @property
    def rank_ih(self) -> tuple[int, ...]:
        """Current rank of each layer's input-to-hidden matrix (it drops when rank pruning removes components)."""
        return tuple(layer.rank for layer in self.ih)

    @property
    def rank_hh(self) -> tuple[int, ...]:
        """Current rank of each layer's hidden-to-hidden matrix."""
        return tuple(layer.rank for layer in self.hh)

    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the LSTM over ``input``; returns ``(output, (h_n, c_n))`` as :class:`torch.nn.LSTM` does.

        Parameters
        ----------
        input : Tensor
            ``(N, L, input_size)`` if ``batch_first`` else ``(L, N, input_size)``, optionally after leading particle
            dimensions; or unbatched ``(L, input_size)``, which is rejected inside vectorised plates (particles):
            there the output would get the particle dimension where a next layer expects N.
        hx : (Tensor, Tensor), optional
            ``(h_0, c_0)``, each ``(num_layers, N, H)`` (``(num_layers, H)`` for unbatched input); default zeros.

        Returns
        -------
        output : Tensor
            Last layer's hidden states at every step, ``(..., N, L, H)`` / ``(..., L, N, H)`` / ``(..., L, H)``.
        (h_n, c_n) : (Tensor, Tensor)
            Final states of every layer, ``(..., num_layers, N, H)`` (``(..., num_layers, H)`` if unbatched).
        """
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        owner = f"LowRankLSTM(input_size={self.input_size})"
        check_last_dim(input, self.input_size, "input", owner)
        if input.dim() < 2:
            raise ValueError(f"{owner} expected input of shape (L, input_size) or (N, L, input_size), "
                             f"got {tuple(input.shape)}")
        unbatched = input.dim() == 2
        if unbatched:
            layout = "(1, L, input_size)" if self.batch_first else "(L, 1, input_size)"
            check_batched_under_plates(input.shape, "input", owner, layout)
            x = input.unsqueeze(0)
        else:
            x = input if self.batch_first else input.transpose(-3, -2)
        num_data, length = x.shape[-3], x.shape[-2]
        if length == 0:
            raise ValueError(f"{owner} expected at least one time step, got input of shape {tuple(input.shape)}")
        h_0, c_0 = self._initial_state(hx, x, unbatched)
        h_last, c_last = [], []
        for index in range(self.num_layers):
            projected = self.ih[index](x)  # all L input projections in one call: (..., N, L, 4H)
            recurrent = self._recurrent_map(index, num_data * length)
            h, c = h_0[..., index, :, :], c_0[..., index, :, :]
            steps = []
            for t in range(length):
                gate_i, gate_f, gate_g, gate_o = (projected[..., t, :] + recurrent(h)).chunk(4, dim=-1)
                c = torch.sigmoid(gate_f) * c + torch.sigmoid(gate_i) * torch.tanh(gate_g)
                h = torch.sigmoid(gate_o) * torch.tanh(c)
                steps.append(h)
            x = torch.stack(steps, dim=-2)
            if self.dropout > 0 and self.training and index < self.num_layers - 1:
                x = F.dropout(x, p=self.dropout, training=True)
            h_last.append(h)
            c_last.append(c)
        h_n = torch.stack(torch.broadcast_tensors(*h_last), dim=-3)
        c_n = torch.stack(torch.broadcast_tensors(*c_last), dim=-3)
        if unbatched:
            return x.squeeze(-3), (h_n.squeeze(-2), c_n.squeeze(-2))
        output = x if self.batch_first else x.transpose(-3, -2)
        return output, (h_n, c_n)

    # ------------------------------------------------------------------ bookkeeping
    def num_variational_parameters(self) -> int:
        r"""Learned numbers of a mean-field guide: :math:`2 r (m + n)` per factorised matrix plus :math:`2 \cdot 4H`
        per bias."""
        return sum(module.num_variational_parameters() for module in (*self.ih, *self.hh))

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, rank_ih={self.rank_ih}, "
                f"rank_hh={self.rank_hh}, bias={self.bias}, batch_first={self.batch_first}, "
                f"dropout={self.dropout}")
