r"""Singular spectra of weight matrices and what they say about low-rank approximation.

For :math:`W \in \mathbb R^{m\times n}` with singular values :math:`\sigma_1 \ge \dots \ge \sigma_p \ge 0`,
:math:`p = \min(m, n)`, and truncated SVD :math:`W_k = \sum_{i\le k} \sigma_i u_i v_i^\top`, the Eckart-Young-Mirsky
theorem states that :math:`W_k` is a best rank-k approximation in Frobenius norm,

.. math::

    \min_{\operatorname{rank} M \le k} \|W - M\|_F = \|W - W_k\|_F = \Big(\sum_{i > k} \sigma_i^2\Big)^{1/2}.

These functions turn a spectrum into tail energies, captured-energy fractions, a suggested rank and the bound of the
paper on the change of an L-Lipschitz loss when W is replaced by :math:`W_r`, and compare the singular subspaces of two
matrices by their principal angles (:func:`principal_angle_cosines`, :func:`singular_subspace_alignment`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from pyro_lowrank._validation import check_finite
from pyro_lowrank.distributions import LowRankMatrixNormal

__all__ = [
    "SubspaceAlignment", "energy_fraction", "eym_bound", "principal_angle_cosines", "singular_spectrum",
    "singular_subspace_alignment", "suggest_rank", "tail_energy",
]

WeightLike = torch.Tensor | nn.Linear | LowRankMatrixNormal


def singular_spectrum(weight: WeightLike) -> torch.Tensor:
    r"""Singular values :math:`\sigma_1 \ge \sigma_2 \ge \dots` of a weight matrix.

    Parameters
    ----------
    weight : torch.Tensor, torch.nn.Linear or LowRankMatrixNormal
        * a tensor of shape ``(..., m, n)``: its :math:`\min(m, n)` singular values (batched);
        * an ``nn.Linear``: the singular values of its (detached) ``weight``;
        * a :class:`~pyro_lowrank.distributions.LowRankMatrixNormal`: the singular values of its mean
          :math:`\mathbb E W = \mu_A \mu_B^\top`, computed from the factors without forming W: with
          :math:`\mu_A = Q_A R_A` and :math:`\mu_B = Q_B R_B`, :math:`\sigma(\mu_A\mu_B^\top) = \sigma(R_A R_B^\top)`
          (the Q's have orthonormal columns), at cost :math:`O((m + n) r^2)`. Returns r values (zero-padded when
          :math:`r > \min(m, n)`), shape ``batch_shape + (r,)``.

    Returns
    -------
    torch.Tensor
        Singular values in descending order; same dtype and device as the input. Shape ``(..., min(m, n))`` for a
        tensor or ``nn.Linear``, and ``batch_shape + (r,)`` (the rank of the factors, zero-padded) for a
        ``LowRankMatrixNormal``.

    Raises
    ------
    TypeError
        For any other type (a :class:`~pyro_lowrank.nn.LowRankLinear` has a random weight: pass
        ``layer.weight_posterior(guide)`` instead), or a non-floating tensor.
    ValueError
        If a tensor has fewer than 2 dimensions or non-finite entries.
    """
    if isinstance(weight, LowRankMatrixNormal):
        loc_a, loc_b = weight.a_loc.detach(), weight.b_loc.detach()
        r = loc_a.shape[-1]
        r_a = torch.linalg.qr(loc_a, mode="r")[1]
        r_b = torch.linalg.qr(loc_b, mode="r")[1]
        values = torch.linalg.svdvals(r_a @ r_b.transpose(-1, -2))
        if values.shape[-1] < r:
            values = torch.cat([values, values.new_zeros(values.shape[:-1] + (r - values.shape[-1],))], dim=-1)
        return values
    if isinstance(weight, nn.Linear):
        if "weight" in getattr(weight, "_pyro_samples", {}):
            raise TypeError(
                "weight is a PyroModule[nn.Linear] whose weight is a PyroSample (each access draws a new random "
                "matrix): pass a fixed tensor, e.g. the posterior mean of the weight"
            )
        return torch.linalg.svdvals(weight.weight.detach())
    if isinstance(weight, torch.Tensor):
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a real floating-point tensor, got dtype {weight.dtype}")
        if weight.dim() < 2:
            raise ValueError(
                f"weight must have shape (..., m, n) with at least 2 dimensions, got {tuple(weight.shape)}"
            )
        check_finite(weight, "weight")
        return torch.linalg.svdvals(weight)
    hint = " (for a LowRankLinear pass layer.weight_posterior(guide))" if hasattr(weight, "weight_posterior") else ""
    raise TypeError(
        "weight must be a torch.Tensor of shape (..., m, n), a torch.nn.Linear or a LowRankMatrixNormal"
        f"{hint}, got {type(weight).__name__}"
    )


def _check_singular_values(values: object, name: str = "singular_values") -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        shown = values.dtype if isinstance(values, torch.Tensor) else type(values).__name__
        raise TypeError(f"{name} must be a real floating-point torch.Tensor of shape (..., p), got {shown}")
    if values.dim() == 0 or values.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., p) with p >= 1, got {tuple(values.shape)}")
    check_finite(values, name)
    if bool((values < 0).any()):
        raise ValueError(f"{name} must be >= 0, got minimum {values.min().item():.3g}")
    if bool((values[..., 1:] > values[..., :-1]).any()):
        shown = values.flatten()[:6].tolist()
        raise ValueError(f"{name} must be sorted in descending order along the last dimension, got {shown}"
                         + (" ..." if values.numel() > 6 else ""))
    return values


def tail_energy(singular_values: torch.Tensor, relative: bool = False) -> torch.Tensor:
    r"""Best rank-k approximation errors :math:`\|W - W_k\|_F` for :math:`k = 0, \dots, p`.

    .. math::

        t_k = \Big(\sum_{i > k} \sigma_i^2\Big)^{1/2} = \|W - W_k\|_F
        = \min_{\operatorname{rank} M \le k} \|W - M\|_F \quad \text{(Eckart-Young-Mirsky)},

    so :math:`t_0 = \|W\|_F` and :math:`t_p = 0`. With ``relative=True`` the result is :math:`t_k / \|W\|_F`
    (all zeros for W = 0). The suffix sums are accumulated from the smallest singular value up, which keeps small
    tails accurate.

    Parameters
    ----------
    singular_values : torch.Tensor
        Shape ``(..., p)``, non-negative, descending (as returned by :func:`singular_spectrum`).
    relative : bool
        Divide by the Frobenius norm of W.

    Returns
    -------
    torch.Tensor
        Shape ``(..., p + 1)``; entry k is the error of the best rank-k approximation.
    """
    values = _check_singular_values(singular_values)
    squares = values.square()
    suffix = squares.flip(-1).cumsum(-1).flip(-1)  # suffix[k] = sum_{i >= k} sigma_i^2 (0-based)
    tail = torch.cat([suffix, squares.new_zeros(squares.shape[:-1] + (1,))], dim=-1).sqrt()
    if relative:
        total = tail[..., :1]
        safe = torch.where(total > 0, total, torch.ones_like(total))
        tail = torch.where(total > 0, tail / safe, torch.zeros_like(tail))
    return tail


def energy_fraction(singular_values: torch.Tensor) -> torch.Tensor:
    r"""Fraction of the squared Frobenius norm captured by the best rank-k approximation, :math:`k = 0, \dots, p`.

    .. math::

        e_k = \frac{\sum_{i \le k} \sigma_i^2}{\sum_{i=1}^p \sigma_i^2} = \frac{\|W_k\|_F^2}{\|W\|_F^2}
        = 1 - \frac{\|W - W_k\|_F^2}{\|W\|_F^2}.

    Non-decreasing in k, :math:`e_0 = 0` and :math:`e_p = 1` exactly. For W = 0 every entry is 1 by convention (the
    rank-0 approximation is already exact).

    Parameters
    ----------
    singular_values : torch.Tensor
        Shape ``(..., p)``, non-negative, descending.

    Returns
    -------
    torch.Tensor
        Shape ``(..., p + 1)``.
    """
    values = _check_singular_values(singular_values)
    cumulative = values.square().cumsum(-1)
    cumulative = torch.cat([cumulative.new_zeros(cumulative.shape[:-1] + (1,)), cumulative], dim=-1)
    total = cumulative[..., -1:]
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, cumulative / safe, torch.ones_like(cumulative))


def suggest_rank(weight_or_singular_values: WeightLike, energy: float = 0.9) -> int:
    r"""Smallest rank :math:`k \ge 1` whose best rank-k approximation keeps a fraction ``energy`` of
    :math:`\|W\|_F^2`: :math:`\min\{k \ge 1 : e_k \ge \text{energy}\}` with :math:`e_k` from :func:`energy_fraction`.

    Parameters
    ----------
    weight_or_singular_values : torch.Tensor, torch.nn.Linear or LowRankMatrixNormal
        A 1-D tensor is read as singular values (non-negative, descending); anything else goes through
        :func:`singular_spectrum` and must describe a single matrix (no batch dimensions).
    energy : float
        Target fraction in (0, 1].

    Returns
    -------
    int
        A rank in ``[1, p]``.
    """
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
    is_values = isinstance(weight_or_singular_values, torch.Tensor) and weight_or_singular_values.dim() == 1
    values = weight_or_singular_values if is_values else singular_spectrum(weight_or_singular_values)
    if values.dim() != 1:
        raise ValueError(
            "weight_or_singular_values must describe a single matrix (no batch dimensions), got a spectrum of "
            f"shape {tuple(values.shape)}"
        )
    fraction = energy_fraction(values)
    reached = (fraction[1:] >= float(energy)).nonzero()
    return int(reached[0, 0]) + 1 if reached.numel() else int(values.shape[-1])


def eym_bound(
    singular_values: torch.Tensor, rank: int, lipschitz: float = 1.0, input_norm: float = 1.0
) -> float:
    r"""Bound on the change of an L-Lipschitz loss when W is replaced by its best rank-r approximation.

    For a loss :math:`l` that is L-Lipschitz in the layer output and inputs with :math:`\|x\|_2 \le R`,

    .. math::

        |l(Wx) - l(W_r x)| \le L \|(W - W_r)x\|_2 \le L\,\|W - W_r\|_2\,\|x\|_2
        \le L\, R\, \Big(\sum_{i > r} \sigma_i^2\Big)^{1/2},

    hence :math:`|\mathbb E\, l(Wx) - \mathbb E\, l(W_r x)| \le L R (\sum_{i>r} \sigma_i^2)^{1/2}`, the
    Eckart-Young-Mirsky bound of the paper (the spectral-norm version :math:`L R \sigma_{r+1}` is tighter).

    Parameters
    ----------
    singular_values : torch.Tensor
        Shape ``(p,)``, non-negative, descending.
    rank : int
        r in ``[0, p]``.
    lipschitz : float
        L >= 0, the Lipschitz constant of the loss.
    input_norm : float
        R >= 0, a bound on the Euclidean norm of the inputs.

    Returns
    -------
    float
    """
    values = _check_singular_values(singular_values)
    if values.dim() != 1:
        raise ValueError(f"singular_values must have shape (p,), got {tuple(values.shape)}")
    p = values.shape[0]
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 0 <= int(rank) <= p:
        raise ValueError(f"rank must be an integer in [0, p] = [0, {p}], got {rank!r}")
    for value, name in ((lipschitz, "lipschitz"), (input_norm, "input_norm")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(lipschitz) * float(input_norm) * float(tail_energy(values)[int(rank)])


def _orthonormal_basis(basis: torch.Tensor, name: str, rtol: float | None) -> torch.Tensor:
    """An orthonormal basis (columns) of the column span of a 2-D ``basis``, from its SVD."""
    if not isinstance(basis, torch.Tensor) or not basis.is_floating_point():
        shown = basis.dtype if isinstance(basis, torch.Tensor) else type(basis).__name__
        raise TypeError(f"{name} must be a real floating-point torch.Tensor of shape (d, k), got {shown}")
    if basis.dim() != 2 or basis.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (d, k) with k >= 1, got {tuple(basis.shape)}")
    check_finite(basis, name)
    u, values, _ = torch.linalg.svd(basis.detach(), full_matrices=False)
    tol = (rtol if rtol is not None else max(basis.shape) * torch.finfo(basis.dtype).eps) * float(values.max())
    keep = int((values > tol).sum())
    if keep == 0:
        raise ValueError(f"{name} spans only the zero subspace (all singular values <= {tol:.3g})")
    return u[:, :keep]


def principal_angle_cosines(basis1: torch.Tensor, basis2: torch.Tensor, *, rtol: float | None = None) -> torch.Tensor:
    r"""Cosines of the principal angles between the column spans of two matrices (Björck and Golub 1973).

    With :math:`Q_1` (d x p) and :math:`Q_2` (d x q) orthonormal bases of the two spans, the principal angles
    :math:`0 \le \theta_1 \le \dots \le \theta_{\min(p, q)} \le \pi/2` satisfy

    .. math::

        \cos\theta_i = \sigma_i(Q_1^\top Q_2),

    the singular values of :math:`Q_1^\top Q_2` in descending order. All cosines are 1 when one span contains the
    other, all are 0 when the spans are orthogonal, and :math:`\sum_i \cos^2\theta_i = \lVert Q_1^\top Q_2
    \rVert_F^2` is the squared Frobenius norm of the projection of one basis onto the other span. For random
    subspaces (Haar) of dimensions p and q of :math:`\mathbb R^d`, :math:`\mathbb E \sum_i \cos^2\theta_i = pq/d`
    (the chance level).

    The inputs need not be orthonormal: each span's basis is taken from the left singular vectors of the matrix
    whose singular values exceed ``rtol`` times the largest (so dependent columns do not inflate the dimension).

    Parameters
    ----------
    basis1, basis2 : torch.Tensor
        Shapes ``(d, k1)`` and ``(d, k2)``: the columns span the two subspaces of :math:`\mathbb R^d`.
    rtol : float, optional
        Relative threshold for the numerical rank; default ``max(d, k) * eps`` of the dtype.

    Returns
    -------
    torch.Tensor
        Shape ``(min(p, q),)`` with p, q the numerical ranks: the cosines, descending, clamped to [0, 1].

    Raises
    ------
    TypeError
        Non-floating inputs.
    ValueError
        Inputs that are not 2-D, have different row counts, are non-finite or span only zero.
    """
    q1 = _orthonormal_basis(basis1, "basis1", rtol)
    q2 = _orthonormal_basis(basis2, "basis2", rtol)
    if q1.shape[0] != q2.shape[0]:
        raise ValueError(f"basis1 and basis2 must span subspaces of the same space R^d, got d = {q1.shape[0]} and "
                         f"{q2.shape[0]} rows")
    dtype = torch.promote_types(q1.dtype, q2.dtype)
    return torch.linalg.svdvals(q1.to(dtype).T @ q2.to(dtype)).clamp(0.0, 1.0)


@dataclass
class SubspaceAlignment:
    r"""Principal-angle comparison of the top-k singular subspaces of two matrices
    (:func:`singular_subspace_alignment`).

    Attributes
    ----------
    left_cosines, right_cosines : torch.Tensor
        Shape ``(k,)``: :func:`principal_angle_cosines` between the top-k left (column space, :math:`\mathbb R^m`) and
        right (row space, :math:`\mathbb R^n`) singular subspaces.
    captured_energy : float
        :math:`\lVert U_1^\top W_2 V_1 \rVert_F^2 / \lVert W_2 \rVert_F^2`: the fraction of the second matrix's
        energy inside the first matrix's top-k subspaces (at most :math:`e_k(W_2)`, the best rank-k energy, with
        equality when the subspaces coincide).
    left_captured_energy, right_captured_energy : float
        One side only: :math:`\lVert U_1^\top W_2 \rVert_F^2 / \lVert W_2 \rVert_F^2` and
        :math:`\lVert W_2 V_1 \rVert_F^2 / \lVert W_2 \rVert_F^2` (each also at most :math:`e_k(W_2)`, by Ky Fan's
        maximum principle, and at least ``captured_energy``).
    """

    left_cosines: torch.Tensor
    right_cosines: torch.Tensor
    captured_energy: float
    left_captured_energy: float
    right_captured_energy: float


def singular_subspace_alignment(weight1: torch.Tensor, weight2: torch.Tensor, rank: int) -> SubspaceAlignment:
    r"""How well the top-``rank`` singular subspaces of two m x n matrices agree.

    With truncated SVDs :math:`W_1 \approx U_1 S_1 V_1^\top` and :math:`W_2 \approx U_2 S_2 V_2^\top` (k = ``rank``
    columns each), returns the principal-angle cosines :math:`\sigma(U_1^\top U_2)` and :math:`\sigma(V_1^\top V_2)`
    and the energy of :math:`W_2` captured by :math:`W_1`'s subspaces (both sides, and each side alone),

    .. math::

        \frac{\lVert U_1^\top W_2 V_1 \rVert_F^2}{\lVert W_2 \rVert_F^2} \le e_k(W_2)
        = \frac{\sum_{i \le k} \sigma_i(W_2)^2}{\sum_i \sigma_i(W_2)^2}

    (Eckart–Young–Mirsky: no rank-k pair of subspaces captures more than the top-k singular pair).

    Parameters
    ----------
    weight1, weight2 : torch.Tensor
        Shape ``(m, n)`` each, finite, floating point.
    rank : int
        k in ``[1, min(m, n)]``.

    Returns
    -------
    SubspaceAlignment
    """
    for value, name in ((weight1, "weight1"), (weight2, "weight2")):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 2:
            shown = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a real floating-point tensor of shape (m, n), got {shown}")
        check_finite(value, name)
    if weight1.shape != weight2.shape:
        raise ValueError(f"weight1 and weight2 must have the same shape, got {tuple(weight1.shape)} and "
                         f"{tuple(weight2.shape)}")
    p = min(weight1.shape)
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= int(rank) <= p:
        raise ValueError(f"rank must be an integer in [1, min(m, n)] = [1, {p}], got {rank!r}")
    k = int(rank)
    dtype = torch.promote_types(weight1.dtype, weight2.dtype)
    w1, w2 = weight1.detach().to(dtype), weight2.detach().to(dtype)
    u1, _, v1h = torch.linalg.svd(w1, full_matrices=False)
    u2, _, v2h = torch.linalg.svd(w2, full_matrices=False)
    u1, v1, u2, v2 = u1[:, :k], v1h[:k].T, u2[:, :k], v2h[:k].T
    left = torch.linalg.svdvals(u1.T @ u2).clamp(0.0, 1.0)
    right = torch.linalg.svdvals(v1.T @ v2).clamp(0.0, 1.0)
    total = float(w2.square().sum())

    def fraction(projected: torch.Tensor) -> float:
        return min(max(float(projected.square().sum()) / total, 0.0), 1.0) if total > 0 else 1.0

    return SubspaceAlignment(left_cosines=left, right_cosines=right, captured_energy=fraction(u1.T @ w2 @ v1),
                             left_captured_energy=fraction(u1.T @ w2), right_captured_energy=fraction(w2 @ v1))
