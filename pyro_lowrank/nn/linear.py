r"""A Bayesian linear layer whose weight is the product of two random factors, :math:`W = A B^\top`.

Model: :math:`A \sim p_A` on :math:`\mathbb R^{m\times r}`, :math:`B \sim p_B` on :math:`\mathbb R^{n\times r}`,
:math:`b \sim p_b` on :math:`\mathbb R^m`, and :math:`y = x W^\top + b = (x B) A^\top + b`. A, B and the bias are one
Pyro sample site each (``to_event``), never one site per entry. The forward pass evaluates ``(x @ B) @ A.T`` at cost
batch * r * (m + n) instead of forming W (batch * m * n + m * n * r); it forms W only when that is cheaper (full rank
and large batches).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.nn import PyroModule, PyroSample
from pyro.poutine.runtime import get_plates
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive, check_positive_int, check_rank
from pyro_lowrank.distributions import FactorPrior, GaussianPrior, LowRankMatrixNormal
from pyro_lowrank.guides.init import FactorInit, svd_init, variance_matching_init

__all__ = [
    "LowRankLinear", "align_to_plates", "check_batched_under_plates", "factor_matmul", "factored_is_cheaper",
    "fold_constant_batch", "select_rank_columns", "strip_batch", "vectorized_plate_depth",
]


def factored_is_cheaper(batch: int, out_features: int, in_features: int, rank: int) -> bool:
    """Whether ``(x B) A^T`` (batch r (m+n) multiply-adds) beats forming W (m n r + batch m n)."""
    return batch * rank * (out_features + in_features) <= out_features * in_features * (rank + batch)


def vectorized_plate_depth() -> int:
    """How many batch dimensions the active vectorised plates span (0 outside vectorised plates)."""
    return max((-frame.dim for frame in get_plates() if frame.vectorized and frame.dim is not None), default=0)


def align_to_plates(
    value: torch.Tensor, event_dim: int, sequence_dims: int = 0, depth: int | None = None
) -> torch.Tensor:
    """Give a global site's value the batch rank of the active plate stack by padding singletons on the right.

    Under vectorisation (``Trace_ELBO(vectorize_particles=True)``, ``Predictive(parallel=True)``) a global site must
    have batch shape ``(S, 1, ..., 1)`` with its draws at the outermost plate's dimension. Pyro's ``Predictive``
    reshapes posterior samples ignoring event dimensions, so matrix-valued sites arrive as ``(S, m, r)``; this puts
    their draws back at the outermost plate dimension. Values that already have the full rank pass unchanged.

    ``sequence_dims`` singleton dimensions are then inserted just before the event dimensions of a value that has
    batch dimensions. They line the factors up with inputs of shape ``plates + (L, ..., features)`` whose per-datum
    dimensions (time steps, token positions) sit between the plate dimensions and the features: factors of batch
    shape ``(P, 1)`` become ``(P, 1, 1)`` and broadcast against inputs ``(N, L, n)`` to give ``(P, N, L, m)``.
    ``depth`` (:func:`vectorized_plate_depth`) may be passed by a caller that aligns several values at once.
    """
    depth = vectorized_plate_depth() if depth is None else depth
    batch_dim = value.dim() - event_dim
    if 0 < batch_dim < depth:
        value = value.reshape(value.shape[:batch_dim] + (1,) * (depth - batch_dim) + value.shape[batch_dim:])
        batch_dim = depth
    if sequence_dims and batch_dim > 0:
        value = value.reshape(value.shape[:batch_dim] + (1,) * sequence_dims + value.shape[batch_dim:])
    return value


def check_batched_under_plates(shape: torch.Size | tuple[int, ...], name: str, owner: str, batched: str) -> None:
    """Reject an unbatched (2-D) input while vectorised plates are active.

    Under vectorised particles (``pyro.plate("particles", P, dim=-2)`` from ``Trace_ELBO(vectorize_particles=True)``
    or :func:`~pyro_lowrank.predictive.predict`) the factors have batch shape ``(P, 1)``, so a sequence layer given
    an unbatched ``(L, n)`` input returns ``(P, L, H)``, which the next sequence layer would read as a batch of P
    sequences (giving ``(P, P, L, H)``). Outside vectorised plates unbatched inputs are accepted, as in torch.

    Parameters
    ----------
    shape : torch.Size or tuple of int
        Shape of the unbatched input.
    name : str
        The argument named in the error (``"input"``, ``"query"``).
    owner : str
        The module named in the error.
    batched : str
        The batched layout to suggest, e.g. ``"(1, L, input_size)"``.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If any vectorised plate (a plate frame with a ``dim``) is active.
    """
    plates = [frame.name for frame in get_plates() if frame.vectorized]
    if plates:
        raise ValueError(
            f"{owner} got an unbatched {name} of shape {tuple(shape)} inside the vectorised plate(s) {plates}: "
            f"its output would carry the plate dimension where a following sequence layer expects the batch "
            f"dimension N. Add a batch dimension of size 1, i.e. pass {name} of shape {batched}"
        )


def fold_constant_batch(x: torch.Tensor, weight_batch: torch.Size | tuple[int, ...]) -> tuple[torch.Tensor, tuple, int, int]:
    """Fold the trailing batch dimensions of ``x`` (shape ``bx + (n,)``) against which weights of batch shape
    ``weight_batch`` are constant (size 1 or absent) into the rows of one matrix.

    Returns ``(x2, tail, keep, length)``: ``x2`` of shape ``bx[:-k] + (rows, n)``, the folded sizes ``tail``, the number
    of leading batch dimensions ``keep`` a weight must be reshaped to (:func:`strip_batch`), and the broadcast batch
    rank ``length``. The product of ``x2`` with the stripped weights is unfolded by
    ``out.reshape(out.shape[:-2] + tail + (m,))``. This turns the usual cases (no particles, or vectorised particles
    ``(P, 1)`` with inputs ``(N, n)`` or ``(N, L, n)``) into (batched) GEMMs without per-datum copies of the weights.
    """
    n = x.shape[-1]
    bx = tuple(x.shape[:-1])
    bw = tuple(weight_batch)
    length = max(len(bw), len(bx))
    padded = (1,) * (length - len(bw)) + bw
    k = 0
    while k < len(bx) and padded[length - 1 - k] == 1:
        k += 1
    tail = bx[len(bx) - k:]
    rows = 1
    for size in tail:
        rows *= size
    return x.reshape(bx[: len(bx) - k] + (rows, n)), tail, length - k, length


def strip_batch(t: torch.Tensor, keep: int, length: int, event_dim: int = 2) -> torch.Tensor:
    """Reshape a weight of shape ``batch + event`` (``event_dim`` trailing dimensions) to the ``keep`` leading batch
    dimensions of the ``length``-dimensional broadcast batch computed by :func:`fold_constant_batch`."""
    event = tuple(t.shape[t.dim() - event_dim:])
    tb = (1,) * (length - (t.dim() - event_dim)) + tuple(t.shape[: t.dim() - event_dim])
    return t.reshape(tb[:keep] + event)


def factor_matmul(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``x (A B^T)^T + bias`` for ``x`` of shape ``bx + (n,)`` and factors of shapes ``bw + (m, r)``, ``bw + (n, r)``.

    The result has shape ``broadcast(bx, bw) + (m,)``: each input vector meets the factors of its own batch entry.
    ``bias`` (shape ``bw + (m,)``, same batch as the factors) is added inside the second product (``addmm`` /
    ``baddbmm``, or an in-place add), which saves one pass over the output, the largest tensor of the layer.
    For speed, the trailing input batch dimensions against which the factors are constant (size 1 or absent in
    ``bw``) are folded into the rows of one matrix product (:func:`fold_constant_batch`), so the usual cases, no
    particles or vectorised particles ``bw = (P, 1)`` with inputs ``(N, n)``, run as (batched) GEMMs
    ``(N, n) @ (n, r)`` and never materialise per-datum copies of the factors. W is formed only when
    :func:`factored_is_cheaper` says it pays.

    ``out`` (no autograd): a contiguous tensor of the result's shape to write into. It may be ``x`` itself (a hidden
    activation that is not needed afterwards): the factored path reads x only to form x B, before writing.

    Parameters
    ----------
    x : torch.Tensor
        Inputs ``bx + (n,)``.
    a, b : torch.Tensor
        Factors ``bw + (m, r)`` and ``bw + (n, r)``.
    bias : torch.Tensor, optional
        ``bw + (m,)``.
    out : torch.Tensor, optional
        Where to write the result (inference only).

    Returns
    -------
    torch.Tensor
        ``broadcast(bx, bw) + (m,)`` (``out`` itself when given).

    Raises
    ------
    ValueError
        ``out`` or ``bias`` of a shape that does not match the product.
    RuntimeError
        ``out`` given while autograd records any of the operands.
    """
    if out is not None:
        return _factor_matmul_into(x, a, b, bias, out)
    n = x.shape[-1]
    m, r = a.shape[-2:]
    x2, tail, keep, length = fold_constant_batch(x, torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    a2, b2 = strip_batch(a, keep, length), strip_batch(b, keep, length)
    factored = factored_is_cheaper(x2.numel() // max(n, 1), m, n, r)
    if factored and x2.dim() == 2 and b2.dim() == 3:
        # Inputs shared by a batch of P factor draws: one GEMM (rows, n) @ (n, P r) instead of P GEMMs against
        # P broadcast copies of x.
        draws = b2.shape[0]
        xb = (x2 @ b2.transpose(0, 1).reshape(n, draws * r)).reshape(x2.shape[0], draws, r).transpose(0, 1)
        left, right = xb, a2.transpose(-1, -2)
    elif factored:
        left, right = x2 @ b2, a2.transpose(-1, -2)
    else:
        left, right = x2, (a2 @ b2.transpose(-1, -2)).transpose(-1, -2)
    if bias is None:
        out = left @ right
    else:
        bias2 = strip_batch(bias, keep, length, event_dim=1).unsqueeze(-2)
        shape = torch.broadcast_shapes(left.shape[:-1] + right.shape[-1:], bias2.shape)
        if left.dim() == 2 and right.dim() == 2 and bias2.dim() == 2:
            out = torch.addmm(bias2, left, right)
        elif left.dim() == right.dim() == bias2.dim() == 3 and left.shape[0] == right.shape[0] == shape[0]:
            out = torch.baddbmm(bias2, left, right)
        else:
            out = left @ right
            out = out.add_(bias2) if out.shape == shape and not torch.is_grad_enabled() else out + bias2
    return out.reshape(out.shape[:-2] + tail + (m,))


def _factor_matmul_into(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> torch.Tensor:
    """:func:`factor_matmul` writing into ``out`` (see there); falls back to a copy where it cannot write in place."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, a, b, bias, out)):
        raise RuntimeError("factor_matmul(out=...) is for inference: it does not support autograd")
    n = x.shape[-1]
    m, r = a.shape[-2:]
    x2, tail, keep, length = fold_constant_batch(x, torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    a2, b2 = strip_batch(a, keep, length), strip_batch(b, keep, length)
    if (not out.is_contiguous() or not factored_is_cheaper(x2.numel() // max(n, 1), m, n, r)
            or (x2.dim() == 2 and b2.dim() == 3)):
        result = factor_matmul(x, a, b, bias)
        if result.shape != out.shape:
            raise ValueError(f"out must have shape {tuple(result.shape)}, got {tuple(out.shape)}")
        return out.copy_(result)
    left, right = x2 @ b2, a2.transpose(-1, -2)  # x is read here, before anything is written to out
    shape = torch.broadcast_shapes(left.shape[:-2], right.shape[:-2]) + (left.shape[-2], m)
    expected = tuple(shape[:-2]) + tuple(tail) + (m,)
    if tuple(out.shape) != expected:
        raise ValueError(f"out must have shape {expected}, got {tuple(out.shape)}")
    bias2 = None if bias is None else strip_batch(bias, keep, length, event_dim=1).unsqueeze(-2)
    if bias2 is not None and torch.broadcast_shapes(shape, bias2.shape) != shape:
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not broadcast to the output {tuple(shape)}")
    view = out.view(shape)
    if bias2 is not None and left.dim() == 3 and right.dim() == 3 and left.shape[0] == right.shape[0] == shape[0]:
        torch.baddbmm(bias2, left, right, out=view)
    else:
        torch.matmul(left, right, out=view)
        if bias2 is not None:
            view.add_(bias2)
    return out


def select_rank_columns(layer: nn.Module, keep: torch.Tensor | list[int]) -> None:
    """Keep the rank components ``keep`` of a layer with init buffers ``a_init`` (m x r), ``b_init`` (n x r) and an
    int ``rank``: slice the buffers' columns and set ``rank = len(keep)`` (rank pruning).

    Raises
    ------
    ValueError
        ``keep`` not 1 to ``rank`` distinct integer indices in ``[0, rank)`` (a boolean mask included).
    """
    keep = torch.as_tensor(keep, device=layer.a_init.device).flatten()
    if keep.dtype == torch.bool or keep.is_floating_point() or keep.is_complex():
        raise ValueError(f"keep must hold integer indices of rank components, got dtype {keep.dtype}")
    keep = keep.long()
    if (keep.numel() < 1 or bool((keep < 0).any()) or bool((keep >= layer.rank).any())
            or keep.unique().numel() != keep.numel()):
        raise ValueError(f"keep must hold between 1 and {layer.rank} distinct indices in [0, {layer.rank}), got "
                         f"{keep.tolist()}")
    layer.a_init = layer.a_init.index_select(-1, keep)
    layer.b_init = layer.b_init.index_select(-1, keep)
    layer.rank = keep.numel()


def _prior_a(layer: "LowRankLinear"):
    return layer.prior((layer.out_features, layer.rank))


def _prior_b(layer: "LowRankLinear"):
    return layer.prior((layer.in_features, layer.rank))


def _prior_bias(layer: "LowRankLinear"):
    return layer.prior((layer.out_features,))


class LowRankLinear(PyroModule):
    r"""Low-rank Bayesian linear layer, ``y = x (A B^T)^T + bias``, with sample sites ``A``, ``B`` and ``bias``.

    Parameters
    ----------
    in_features, out_features : int
        n and m.
    rank : int
        r in [1, min(m, n)].
    bias : bool
        Whether to add a Bayesian bias (one site of shape ``(m,)``).
    prior : FactorPrior, optional
        Prior of every factor and bias entry; default ``GaussianPrior(prior_scale)``. Its constants are buffers.
    prior_scale : float or "matched"
        Standard deviation of the default Gaussian prior. ``"matched"``: :math:`s = (\text{gain} / (n r))^{1/4}`, the
        entry scale of the variance-matching initialisation, so that the implied prior on W has the He variance
        :math:`\operatorname{Var} W_{ij} = r s^4 = \text{gain} / n` at every width and rank (N(0, 1) factors give
        :math:`\operatorname{Var} W_{ij} = r`, a prior on W that widens with the rank).
    gain : float
        Target weight variance gain/in_features for the variance-matching init (2 = He, for ReLU).
    init_scale_factor : float
        eta: the guide's initial standard deviation is eta * s, s the factor entry scale of the init.
    sequence_dims : int or None
        Number of per-datum dimensions (time steps, token positions) between the data dimension and the features
        of the inputs: 0 for inputs ``(N, n)``, 1 for ``(N, L, n)``. It only matters when the factors carry particle
        dimensions (vectorised ELBO particles, vectorised prediction); see :func:`align_to_plates`. ``None``: infer
        it as ``x.dim() - 2`` from every call made without vectorised particles (a guide's set-up, a training step
        with one particle) and use the last inferred value under particles.

    Notes
    -----
    Inputs of shape ``(..., n)`` work with factors carrying leading particle dimensions (vectorised ELBO particles or
    ``Predictive(parallel=True)``): the factors' batch dimensions broadcast against the input's leading dimensions.
    The initial factor means live in the buffers ``a_init`` and ``b_init`` (and ``bias_init``); guides read them
    through :func:`pyro_lowrank.guides.init_to_factors`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        prior: FactorPrior | None = None,
        prior_scale: float | str = 1.0,
        gain: float = 2.0,
        init_scale_factor: float = 0.1,
        sequence_dims: int | None = 0,
    ) -> None:
        super().__init__()
        if sequence_dims is not None and (
            isinstance(sequence_dims, bool) or not isinstance(sequence_dims, int) or sequence_dims < 0
        ):
            raise ValueError(f"sequence_dims must be a non-negative integer or None (infer), got {sequence_dims!r}")
        self.sequence_dims = sequence_dims
        self._inferred_sequence_dims: int | None = None
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.rank = check_rank(rank, out_features, in_features)
        check_positive(init_scale_factor, "init_scale_factor")
        if prior is None:
            if isinstance(prior_scale, str):
                if prior_scale != "matched":
                    raise ValueError(f"prior_scale must be a positive float or 'matched', got {prior_scale!r}")
                check_positive(gain, "gain")
                prior_scale = (gain / (self.in_features * self.rank)) ** 0.25
            prior = GaussianPrior(prior_scale)
        if not isinstance(prior, nn.Module) or not callable(prior):
            raise TypeError(f"prior must be a FactorPrior module (shape -> distribution), got {type(prior).__name__}")
        self.prior = prior
        self.init_scale_factor = float(init_scale_factor)
        self.A = PyroSample(_prior_a)
        self.B = PyroSample(_prior_b)
        self.bias = PyroSample(_prior_bias) if bias else None
        self.register_buffer("a_init", torch.empty(out_features, self.rank))
        self.register_buffer("b_init", torch.empty(in_features, self.rank))
        self.register_buffer("bias_init", torch.zeros(out_features) if bias else None)
        self.set_factor_init(variance_matching_init(out_features, in_features, self.rank, gain))

    # ------------------------------------------------------------------ initialisation
    def set_factor_init(self, init: FactorInit, bias: torch.Tensor | None = None) -> None:
        """Set the initial factor means (and optionally the bias) that guides start from."""
        for name, value, expected in (
            ("a_loc", init.a_loc, self.a_init.shape),
            ("b_loc", init.b_loc, self.b_init.shape),
        ):
            if value.shape != expected:
                raise ValueError(f"init.{name} must have shape {tuple(expected)}, got {tuple(value.shape)}")
        with torch.no_grad():
            self.a_init.copy_(init.a_loc)
            self.b_init.copy_(init.b_loc)
            if bias is not None and self.bias_init is not None:
                self.bias_init.copy_(bias.detach().reshape(self.bias_init.shape))
        self.init_scale = self.init_scale_factor * init.entry_scale

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, **kwargs: Any) -> "LowRankLinear":
        r"""SVD-initialised layer from a trained ``nn.Linear``: :math:`\mu_A\mu_B^\top` is its best rank-r
        approximation and the bias mean is its bias. ``kwargs`` go to the constructor (``prior``, ...)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None, **kwargs)
        layer = layer.to(dtype=linear.weight.dtype, device=linear.weight.device)
        layer.set_factor_init(svd_init(linear.weight, layer.rank), linear.bias)
        return layer

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial means of this layer's sites, keyed by full Pyro site name (read by guides)."""
        values = {self.site_name("A"): self.a_init, self.site_name("B"): self.b_init}
        if self.bias_init is not None:
            values[self.site_name("bias")] = self.bias_init
        return values

    def initial_scales(self) -> dict[str, float]:
        """Initial guide standard deviations of this layer's sites, ``init_scale_factor * s``."""
        return {name: self.init_scale for name in self.initial_values()}

    def select_rank_components(self, weight: str, keep: torch.Tensor) -> None:
        """Keep only the rank components ``keep`` (indices of columns of A and B): the rank becomes ``len(keep)``, the
        init buffers are sliced, and the prior sites take the new shapes at the next call (rank pruning,
        :func:`~pyro_lowrank.guides.prune_ranks`)."""
        if weight != "weight":
            raise ValueError(f"weight must be 'weight' for LowRankLinear, got {weight!r}")
        select_rank_columns(self, keep)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x (A B^T)^T + bias`` for ``x`` of shape ``(..., in_features)``; returns ``(..., out_features)``.

        ``out`` (inference only): write the result into this tensor, which may be ``x`` itself when the layer is
        square and ``x`` is not needed afterwards (see :func:`factor_matmul`).

        The factors' batch dimensions (particles, plates) broadcast against ``x.shape[:-1]``, right-aligned, as for
        any Pyro sample: factors of batch shape ``(P, 1)`` and ``x`` of shape ``(N, n)`` give ``(P, N, m)``.
        """
        check_last_dim(x, self.in_features, "x", f"LowRankLinear(in_features={self.in_features})")
        depth = vectorized_plate_depth()  # the plate stack is read once per call
        seq = self.resolve_sequence_dims(x.dim() - 2, depth)
        a, b = align_to_plates(self.A, 2, seq, depth), align_to_plates(self.B, 2, seq, depth)
        bias = None if self.bias is None else align_to_plates(self.bias, 1, seq, depth)
        if bias is None or bias.shape[:-1] == torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]):
            return factor_matmul(x, a, b, bias, out=out)
        result = factor_matmul(x, a, b) + bias  # a bias batched differently from the factors (an unusual guide)
        return result if out is None else out.copy_(result)

    def resolve_sequence_dims(self, per_datum_dims: int, depth: int | None = None) -> int:
        """The per-datum dimensions to line the factors up with (see ``sequence_dims``).

        Parameters
        ----------
        per_datum_dims : int
            What the current input implies when it carries no particle dimensions (``x.dim() - 2`` for features
            ``(N, ..., n)``); recorded when no vectorised plate is active, where it is exact.
        depth : int, optional
            :func:`vectorized_plate_depth`, if the caller has it already.

        Returns
        -------
        int
            ``sequence_dims`` when it was given, else the inferred value.

        Raises
        ------
        ValueError
            If ``sequence_dims=None`` and the first call is made under vectorised particles, where the input's
            leading dimensions are ambiguous (particles or data).
        """
        if self.sequence_dims is not None:
            return self.sequence_dims
        if (vectorized_plate_depth() if depth is None else depth) == 0:
            self._inferred_sequence_dims = max(per_datum_dims, 0)
        elif self._inferred_sequence_dims is None:
            raise ValueError(
                f"{type(self).__name__} '{self._pyro_name}' has sequence_dims=None and was first called under "
                "vectorised particles, where it cannot tell particle from data dimensions: run the model once "
                "without particles (a guide's first call does) or pass sequence_dims explicitly"
            )
        return self._inferred_sequence_dims

    # ------------------------------------------------------------------ posterior
    def site_name(self, name: str) -> str:
        """Full Pyro site name of ``"A"``, ``"B"`` or ``"bias"`` for this layer (e.g. ``"layers.0.A"``)."""
        return f"{self._pyro_name}.{name}" if self._pyro_name else name

    def factor_sites(self) -> dict[str, tuple[str, str]]:
        """The layer's factorised weights as ``{weight name: (site of A, site of B)}``, ``W = A B^T``.

        Diagnostics (:func:`pyro_lowrank.diagnostics.to_inference_data`) find low-rank layers through this method, so a
        layer with several factorised matrices (LSTM gates) lists each one.
        """
        return {"weight": (self.site_name("A"), self.site_name("B"))}

    def weight_posterior(self, guide: Any) -> LowRankMatrixNormal:
        """q_W = T#(q_A x q_B) read from a trained mean-field guide (FactorGuide, AutoNormal, AutoDiagonalNormal)."""
        return LowRankMatrixNormal.from_guide(guide, self._pyro_name)

    def num_variational_parameters(self) -> int:
        """Learned numbers of a mean-field guide over this layer: 2 r (m + n) plus 2 m for the bias."""
        count = 2 * self.rank * (self.in_features + self.out_features)
        return count + (2 * self.out_features if self.bias_init is not None else 0)

    def extra_repr(self) -> str:
        extra = f", sequence_dims={self.sequence_dims}" if self.sequence_dims != 0 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias_init is not None}{extra}")
