r"""Gauge fixing for the factorisation :math:`W = A B^\top`: a unique representative of each GL(r) orbit.

For any invertible :math:`G \in GL(r)`, :math:`(A, B) \mapsto (A G, B G^{-\top})` leaves :math:`W = A B^\top`, hence the
likelihood, unchanged. The raw factor entries are therefore not identifiable: posterior draws of A and B wander along
these orbits, and per-entry diagnostics (R-hat, ESS, traces) of A or B measure the gauge, not the posterior over W.
:func:`canonicalize` maps every pair to one representative of its orbit, computed from W alone (its compact SVD),
so factor-level views become comparable across draws and chains.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pyro_lowrank._validation import check_finite

__all__ = ["CanonicalFactors", "canonicalize"]


class CanonicalFactors(NamedTuple):
    """Result of :func:`canonicalize`.

    Attributes
    ----------
    A : torch.Tensor
        Canonical left factor :math:`A' = Q_A U S^{1/2}`, shape ``batch + (m, r)``.
    B : torch.Tensor
        Canonical right factor :math:`B' = Q_B V S^{1/2}`, shape ``batch + (n, r)``.
    singular_values : torch.Tensor
        Singular values of :math:`W = A B^\top` in descending order, shape ``batch + (r,)``.
    """

    A: torch.Tensor
    B: torch.Tensor
    singular_values: torch.Tensor


def _check_factors(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """Validate a factor pair; return both broadcast to their common batch shape and a common floating dtype."""
    for value, name in ((a, "A"), (b, "B")):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must have a real floating dtype, got {value.dtype}")
        if value.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., rows, r), got shape {tuple(value.shape)}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            "A and B must share the rank r (last dimension), "
            f"got A {tuple(a.shape)} (r={a.shape[-1]}) and B {tuple(b.shape)} (r={b.shape[-1]})"
        )
    if a.device != b.device:
        raise ValueError(f"A and B must be on the same device, got A on {a.device} and B on {b.device}")
    try:
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch shapes of A {tuple(a.shape[:-2])} and B {tuple(b.shape[:-2])} do not broadcast"
        ) from None
    check_finite(a, "A")
    check_finite(b, "B")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a = a.to(dtype).expand(batch + a.shape[-2:])
    b = b.to(dtype).expand(batch + b.shape[-2:])
    return a, b, batch


def canonicalize(A: torch.Tensor, B: torch.Tensor) -> CanonicalFactors:
    r"""Canonical representative of the gauge orbit :math:`\{(A G, B G^{-\top}) : G \in GL(r)\}`.

    With reduced QR decompositions :math:`A = Q_A R_A` and :math:`B = Q_B R_B` and the SVD
    :math:`R_A R_B^\top = U S V^\top` (singular values in descending order),

    .. math::

        A' = Q_A\, U\, S^{1/2}, \qquad B' = Q_B\, V\, S^{1/2}, \qquad
        A' B'^\top = Q_A U S V^\top Q_B^\top = Q_A R_A R_B^\top Q_B^\top = A B^\top = W.

    :math:`Q_A U` and :math:`Q_B V` are the left and right singular vectors of W and S its singular values, so
    :math:`A'` and :math:`B'` have orthogonal columns with :math:`\|A'_{:,k}\|^2 = \|B'_{:,k}\|^2 = \sigma_k`.
    The cost is :math:`O((m + n) r^2 + r^3)`; W is never formed.

    Sign convention: singular vector pairs are defined only up to a joint sign :math:`(u_k, v_k) \to (-u_k, -v_k)`.
    For each column k the pair is flipped so that the entry of largest absolute value of :math:`A'_{:,k}` is positive;
    when several entries tie for the largest absolute value, the one with the smallest row index decides (the first
    maximum, as in :func:`torch.argmax`). Zero columns are left as they are.

    Identifiability: for distinct non-zero singular values the result depends on W only, so
    ``canonicalize(A @ G, B @ G^{-T}) == canonicalize(A, B)`` up to round-off. A repeated singular value
    :math:`\sigma_k = \sigma_{k+1}` leaves a residual rotation :math:`O(d)` inside its d-dimensional singular
    subspace (the SVD itself is not unique there), and zero singular values (rank(W) < r) leave the corresponding
    columns arbitrary directions scaled to zero; the result is then one representative, not a unique one. Gradients
    through the SVD are likewise unstable near repeated singular values.

    Parameters
    ----------
    A : torch.Tensor
        Left factors, shape ``(..., m, r)``.
    B : torch.Tensor
        Right factors, shape ``(..., n, r)``; the batch dimensions broadcast against those of A.

    Returns
    -------
    CanonicalFactors
        ``A'`` of shape ``batch + (m, r)``, ``B'`` of shape ``batch + (n, r)`` and the singular values of W, shape
        ``batch + (r,)``, descending. When :math:`r > \min(m, n)` W has at most :math:`p = \min(m, n)` non-zero
        singular values: the last :math:`r - p` columns of A' and B' and singular values are zero padding.

    Raises
    ------
    TypeError
        If A or B is not a real floating-point tensor.
    ValueError
        If a factor has fewer than 2 dimensions, the ranks differ, the batch shapes do not broadcast, the devices
        differ or an entry is not finite.
    """
    a, b, batch = _check_factors(A, B)
    m, r = a.shape[-2:]
    n = b.shape[-2]
    q_a, r_a = torch.linalg.qr(a, mode="reduced")  # (m, ka), (ka, r)
    q_b, r_b = torch.linalg.qr(b, mode="reduced")  # (n, kb), (kb, r)
    u, s, vh = torch.linalg.svd(r_a @ r_b.transpose(-1, -2), full_matrices=False)  # p = min(m, n, r)
    root = s.clamp(min=0).sqrt().unsqueeze(-2)
    a_new = (q_a @ u) * root
    b_new = (q_b @ vh.transpose(-1, -2)) * root
    # sign fixing: the largest-|.| entry of each column of A' becomes positive (first maximum on ties)
    idx = a_new.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(a_new.gather(-2, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    a_new, b_new = a_new * sign, b_new * sign
    p = s.shape[-1]
    if p < r:  # r > min(m, n): pad with zero columns and zero singular values
        a_new = torch.cat([a_new, a_new.new_zeros(batch + (m, r - p))], dim=-1)
        b_new = torch.cat([b_new, b_new.new_zeros(batch + (n, r - p))], dim=-1)
        s = torch.cat([s, s.new_zeros(batch + (r - p,))], dim=-1)
    return CanonicalFactors(a_new, b_new, s)
