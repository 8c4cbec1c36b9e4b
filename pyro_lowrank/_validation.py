"""Argument checks shared by the library: every failure names the argument, the expected and the actual value."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch


def check_rank(rank: object, rows: int, cols: int, name: str = "rank") -> int:
    """Return ``rank`` as an ``int`` after checking that it is an integer in ``[1, min(rows, cols)]``.

    Raises
    ------
    ValueError
        If ``rank`` is not an integer (``bool`` excluded) or lies outside ``[1, min(rows, cols)]``.
    """
    limit = min(rows, cols)
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise ValueError(
            f"{name} must be an integer in [1, min(m, n)] = [1, {limit}] for a {rows}x{cols} matrix, "
            f"got {rank!r} of type {type(rank).__name__}"
        )
    rank = int(rank)
    if not 1 <= rank <= limit:
        raise ValueError(
            f"{name} must be an integer in [1, min(m, n)] = [1, {limit}] for a {rows}x{cols} matrix, got {rank}"
        )
    return rank


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` after checking that it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive(value: float | torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless every entry of ``value`` is finite and strictly positive."""
    tensor = torch.as_tensor(value)
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
        bad = tensor[~(torch.isfinite(tensor) & (tensor > 0))] if tensor.dim() else tensor
        shown = bad.flatten()[:3].tolist() if bad.dim() else bad.item()
        raise ValueError(f"{name} must be finite and > 0 everywhere, got non-positive or non-finite values {shown}")


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` after checking that it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_probability(value: float, name: str, *, open_interval: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` lies in (0, 1) (or [0, 1] with ``open_interval=False``)."""
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``tensor`` contains NaN or +-Inf, reporting how many entries are bad."""
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        num_nan = int(torch.isnan(tensor).sum())
        num_inf = int(torch.isinf(tensor).sum())
        raise ValueError(
            f"{name} must contain only finite values, got {num_nan} NaN and {num_inf} Inf "
            f"among {tensor.numel()} entries (shape {tuple(tensor.shape)})"
        )


def check_last_dim(x: torch.Tensor, expected: int, name: str, owner: str) -> None:
    """Raise ``ValueError`` unless ``x`` has at least one dimension and ``x.shape[-1] == expected``."""
    if x.dim() == 0 or x.shape[-1] != expected:
        raise ValueError(
            f"{owner} expected {name} with last dimension {expected}, got shape {tuple(x.shape)}"
        )


def check_xy(data: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)`` after checking that ``data`` is a pair of tensors with the same non-zero number of rows,
    finite ``x`` and, when floating, finite ``y`` (the messages name ``name``, e.g. ``data`` or ``val_data``)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{name} must be a tuple (x, y) of tensors, got {type(data).__name__}")
    x, y = data
    if not torch.is_tensor(x) or not torch.is_tensor(y):
        raise ValueError(f"{name} must hold tensors, got ({type(x).__name__}, {type(y).__name__})")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{name}: x and y must have the same non-zero number of rows, got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    label = "x" if name == "data" else "x_val"
    check_finite(x, f"{name}[0] ({label})")
    if y.dtype.is_floating_point:
        check_finite(y, f"{name}[1] ({label.replace('x', 'y')})")
    return x, y
