r"""Correlations between weight entries induced by the factorisation :math:`W = A B^\top`.

Although A and B are mean-field (all factor entries independent), the entries of W are not: by the covariance
lemma (:meth:`~pyro_lowrank.distributions.LowRankMatrixNormal.covariance`)

.. math::

    \operatorname{Cov}(W_{ij}, W_{i'j'}) = \sum_k \big[\delta_{ii'}\, s_{A,ik}^2\, \mu_{B,jk}\mu_{B,j'k}
    + \delta_{jj'}\, s_{B,jk}^2\, \mu_{A,ik}\mu_{A,i'k} + \delta_{ii'}\delta_{jj'}\, s_{A,ik}^2 s_{B,jk}^2\big],

so entries in the same row or the same column are correlated, and entries sharing neither are independent.
"""

from __future__ import annotations

import numbers

import torch

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.distributions import LowRankMatrixNormal

__all__ = ["random_entries", "weight_correlation"]

_PERMUTE_LIMIT = 1 << 20


def _check_entries(entries: object, m: int, n: int) -> torch.Tensor:
    if not isinstance(entries, torch.Tensor):
        raise TypeError(f"entries must be a torch.LongTensor of shape (K, 2), got {type(entries).__name__}")
    if entries.dtype.is_floating_point or entries.dtype.is_complex or entries.dtype == torch.bool:
        raise TypeError(f"entries must hold integer (row, col) indices, got dtype {entries.dtype}")
    if entries.dim() != 2 or entries.shape[1] != 2 or entries.shape[0] == 0:
        raise ValueError(f"entries must have shape (K, 2) with K >= 1 (row, col) pairs, got {tuple(entries.shape)}")
    rows, cols = entries[:, 0], entries[:, 1]
    for index, size, name in ((rows, m, "row"), (cols, n, "column")):
        bad = (index < 0) | (index >= size)
        if bool(bad.any()):
            raise ValueError(
                f"entries must have {name} indices in [0, {size}) for a {m}x{n} weight, got "
                f"{index[bad][:5].tolist()}"
            )
    return entries.long()


def _correlation(cov: torch.Tensor) -> torch.Tensor:
    std = cov.diagonal().sqrt()
    corr = cov / (std.unsqueeze(-1) * std.unsqueeze(-2))
    corr = 0.5 * (corr + corr.transpose(-1, -2))
    return corr.fill_diagonal_(1.0)


def weight_correlation(
    dist: LowRankMatrixNormal, entries: torch.Tensor, num_samples: int | None = None
) -> dict[str, torch.Tensor]:
    r"""Correlation matrix of selected weight entries :math:`W_{i_1 j_1}, \dots, W_{i_K j_K}` under :math:`q_W`.

    The closed form is :math:`\rho_{ab} = C_{ab} / \sqrt{C_{aa} C_{bb}}` with
    :math:`C_{ab} = \operatorname{Cov}(W_{i_a j_a}, W_{i_b j_b})` from the covariance lemma (module docstring); the
    diagonal is set to exactly 1 and the matrix symmetrised. Entries sharing neither row nor column get exactly 0.
    Every variance is positive (it contains :math:`\sum_k s_{A,ik}^2 s_{B,jk}^2 > 0`).

    The Monte Carlo check draws S factor pairs :math:`(A_s, B_s) \sim q_A q_B` (the draws behind
    :meth:`~pyro_lowrank.distributions.LowRankMatrixNormal.rsample`), forms only the requested entries
    :math:`W_{s,ij} = \sum_k A_{s,ik} B_{s,jk}` and returns their empirical (Pearson) correlation; its standard error
    is about :math:`(1 - \rho^2)/\sqrt S`.

    Parameters
    ----------
    dist : LowRankMatrixNormal
        A weight posterior with empty batch shape (e.g. ``layer.weight_posterior(guide)``).
    entries : torch.LongTensor
        Shape ``(K, 2)``: the (row, column) index of each entry, e.g. from :func:`random_entries`.
    num_samples : int, optional
        S >= 2; when given, the Monte Carlo estimate is added.

    Returns
    -------
    dict
        ``"closed_form"``: ``(K, K)`` tensor; ``"monte_carlo"``: ``(K, K)`` tensor (only with ``num_samples``).
        Both in the dtype and on the device of ``dist``.
    """
    if not isinstance(dist, LowRankMatrixNormal):
        raise TypeError(f"dist must be a LowRankMatrixNormal, got {type(dist).__name__}")
    if dist.batch_shape != torch.Size():
        raise ValueError(
            f"dist must have an empty batch shape (one weight matrix), got batch_shape {tuple(dist.batch_shape)}; "
            "index the factor parameters to select one"
        )
    m, n = dist.event_shape
    entries = _check_entries(entries, m, n).to(dist.a_loc.device)
    rows, cols = entries[:, 0], entries[:, 1]
    result: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        cov = dist.covariance(rows.unsqueeze(-1), cols.unsqueeze(-1), rows.unsqueeze(-2), cols.unsqueeze(-2))
        result["closed_form"] = _correlation(cov)
        if num_samples is not None:
            num_samples = check_positive_int(num_samples, "num_samples")
            if num_samples < 2:
                raise ValueError(f"num_samples must be >= 2 to estimate a correlation, got {num_samples}")
            a, b = dist.sample_factors((num_samples,))
            values = (a[:, rows, :] * b[:, cols, :]).sum(-1)  # (S, K)
            result["monte_carlo"] = _correlation(torch.cov(values.transpose(0, 1)))
    return result


def random_entries(
    rows: int,
    cols: int,
    num_entries: int,
    generator: torch.Generator | None = None,
    shared: bool = True,
) -> torch.Tensor:
    r"""Pick ``num_entries`` distinct weight entries, by default so that the correlation heat map shows structure.

    With ``shared=True`` an anchor entry :math:`(i_0, j_0)` is drawn uniformly and the entries are, in this order:

    1. about a third in row :math:`i_0` (distinct random columns, starting with :math:`j_0`): correlated through A;
    2. about a third in column :math:`j_0` (distinct random rows other than :math:`i_0`): correlated through B;
    3. the rest uniformly among the remaining entries: mostly sharing neither row nor column, hence independent.

    Groups 1 and 2 are capped at ``cols`` and ``rows - 1`` entries. With ``shared=False`` all entries are uniform
    without replacement.

    Parameters
    ----------
    rows, cols : int
        m and n, the weight's shape.
    num_entries : int
        K in ``[1, rows * cols]``.
    generator : torch.Generator, optional
        Source of randomness (CPU), for reproducibility.
    shared : bool
        Whether to plant same-row and same-column groups.

    Returns
    -------
    torch.LongTensor
        Shape ``(K, 2)`` of distinct (row, column) pairs, on the CPU.
    """
    rows = check_positive_int(rows, "rows")
    cols = check_positive_int(cols, "cols")
    num_entries = check_positive_int(num_entries, "num_entries")
    if num_entries > rows * cols:
        raise ValueError(f"num_entries must be <= rows * cols = {rows * cols}, got {num_entries}")
    if not isinstance(shared, (bool, numbers.Integral)):
        raise TypeError(f"shared must be a bool, got {type(shared).__name__}")

    def randperm(size: int) -> list[int]:
        return torch.randperm(size, generator=generator).tolist()

    chosen: list[tuple[int, int]] = []
    if shared:
        i0 = int(torch.randint(rows, (1,), generator=generator))
        j0 = int(torch.randint(cols, (1,), generator=generator))
        group = num_entries // 3
        other_cols = [j for j in randperm(cols) if j != j0]
        chosen += [(i0, j) for j in ([j0] + other_cols)[: max(1, min(group, cols))]]
        chosen += [(i, j0) for i in [i for i in randperm(rows) if i != i0][: min(group, rows - 1)]]
    taken = {i * cols + j for i, j in chosen}
    remaining = num_entries - len(chosen)
    if rows * cols <= _PERMUTE_LIMIT:  # small matrix: a random order of all entries
        chosen += [divmod(f, cols) for f in randperm(rows * cols) if f not in taken][:remaining]
        remaining = 0
    while remaining > 0:  # large matrix, K small (a heat map): rejection sampling of distinct flat indices
        for flat in torch.randint(rows * cols, (2 * remaining + 16,), generator=generator).tolist():
            if flat not in taken and remaining > 0:
                taken.add(flat)
                chosen.append(divmod(flat, cols))
                remaining -= 1
    return torch.tensor(chosen, dtype=torch.long).reshape(-1, 2)
