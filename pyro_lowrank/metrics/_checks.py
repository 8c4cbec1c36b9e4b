"""Input checks and dtype/device plumbing shared by the metric modules.

Every check raises ``ValueError`` whose message names the argument, what was expected and what was received
(``TypeError`` when an argument that must be a tensor is not one). The general-purpose checks live in
:mod:`pyro_lowrank._validation`; this module adds the metric-specific ones (class probabilities, labels, Gaussian
draws, levels) on top of them. Shapes are checked before values.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch

from pyro_lowrank._validation import check_choice, check_finite, check_probability

__all__ = [
    "as_float64",
    "check_choice",
    "check_labels",
    "check_level",
    "check_levels",
    "check_nonempty_1d",
    "check_probs",
    "check_regression",
    "check_targets",
    "output",
    "prob_tolerance",
]


def as_float64(x: torch.Tensor) -> torch.Tensor:
    """Detached float64 copy of ``x`` for the arithmetic; on MPS (no float64 support) the copy lives on the CPU."""
    x = x.detach()
    if x.device.type == "mps":
        x = x.cpu()
    return x.to(torch.float64)


def output(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a float64 result to ``device`` (the input's device); float32 on MPS, which has no float64."""
    if device.type == "mps":
        return t.to(device=device, dtype=torch.float32)
    return t.to(device)


def prob_tolerance(dtype: torch.dtype) -> float:
    """Allowed deviation of a probability vector's sum from 1: 1e-2 for 16-bit floats, 1e-3 otherwise."""
    return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3


def _check_label_shape(y: object, num_data: int, name: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({num_data},), got {type(y).__name__}")
    if y.shape != (num_data,):
        raise ValueError(f"{name} must have shape ({num_data},) to match probs, got {tuple(y.shape)}")
    return y


def check_probs(probs: object, name: str = "probs", y: object = None) -> torch.Tensor:
    """Check per-draw class probabilities of shape ``(S, N, C)`` and return them as float64.

    Requirements: a floating tensor with three non-empty dimensions, finite, non-negative entries whose sums over the
    last axis are within :func:`prob_tolerance` of 1. When labels ``y`` are given, their shape ``(N,)`` is checked
    after the shape of ``probs`` and before its values (the labels' values are :func:`check_labels`' job).
    """
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (S, N, C), got {type(probs).__name__}")
    if probs.dim() != 3:
        raise ValueError(f"{name} must have shape (S, N, C) (draws, data, classes), got {tuple(probs.shape)}")
    if probs.numel() == 0:
        raise ValueError(f"{name} must be non-empty with shape (S, N, C), got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of probabilities, got dtype {probs.dtype}")
    if y is not None:
        _check_label_shape(y, probs.shape[1], "y")
    check_finite(probs, name)
    p = as_float64(probs)
    minimum = float(p.min())
    if minimum < 0:
        raise ValueError(f"{name} must be non-negative probabilities, got minimum {minimum:.6g}")
    deviation = float((p.sum(-1) - 1).abs().max())
    tol = prob_tolerance(probs.dtype)
    if deviation > tol:
        raise ValueError(
            f"{name} must sum to 1 over the last (class) axis within {tol:g}, got a maximum deviation of "
            f"{deviation:.6g} (pass probabilities, e.g. softmax(logits, -1), not logits)"
        )
    return p


def check_labels(y: object, num_data: int, num_classes: int, device: torch.device, name: str = "y") -> torch.Tensor:
    """Check integer class labels of shape ``(N,)`` with values in ``[0, C)``; return them as int64 on ``device``.

    Floating tensors are accepted when every value is integral (e.g. labels stored as float); bool is rejected.
    """
    y = _check_label_shape(y, num_data, name)
    if y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name} must hold integer class labels in [0, {num_classes}), got dtype {y.dtype}")
    y = y.detach()
    if y.is_floating_point():
        check_finite(y, name)
        fractional = y != y.round()
        if bool(fractional.any()):
            raise ValueError(
                f"{name} must hold integer class labels in [0, {num_classes}), got non-integer value "
                f"{float(y[fractional][0]):g}"
            )
    y = y.to(device=device, dtype=torch.int64)
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name} must hold class labels in [0, {num_classes}) for probs with {num_classes} classes, "
            f"got values in [{low}, {high}]"
        )
    return y


def check_nonempty_1d(x: object, name: str, length: int | None = None) -> torch.Tensor:
    """Check a finite, non-empty, real 1-D tensor (of ``length`` entries if given); return it as float64."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if length is not None and x.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    if x.is_floating_point():
        check_finite(x, name)
    return as_float64(x)


def check_regression(means: object, scales: object | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check per-draw Gaussian predictive means (and scales) of shape ``(S, N)``; return them as float64."""
    if not isinstance(means, torch.Tensor):
        raise TypeError(f"means must be a torch.Tensor of shape (S, N), got {type(means).__name__}")
    if means.dim() != 2:
        raise ValueError(f"means must have shape (S, N) (draws, data), got {tuple(means.shape)}")
    if means.numel() == 0:
        raise ValueError(f"means must be non-empty with shape (S, N), got {tuple(means.shape)}")
    check_finite(means, "means")
    if scales is None:
        return as_float64(means), None
    if not isinstance(scales, torch.Tensor):
        raise TypeError(f"scales must be a torch.Tensor of shape (S, N), got {type(scales).__name__}")
    if scales.shape != means.shape:
        raise ValueError(f"scales must have the shape of means {tuple(means.shape)}, got {tuple(scales.shape)}")
    check_finite(scales, "scales")
    s = as_float64(scales)
    minimum = float(s.min())
    if minimum <= 0:
        raise ValueError(f"scales must be > 0 (Gaussian standard deviations), got minimum {minimum:.6g}")
    return as_float64(means), s


def check_targets(y: object, num_data: int, name: str = "y") -> torch.Tensor:
    """Check finite real regression targets of shape ``(N,)``; return them as float64."""
    return check_nonempty_1d(y, name, length=num_data)


def check_level(level: object, name: str = "level") -> float:
    """Return ``level`` as a float after checking that it is a real number in (0, 1) (a one-element tensor is fine)."""
    if isinstance(level, torch.Tensor) and level.numel() == 1 and not level.is_complex():
        level = level.item()
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise ValueError(f"{name} must be a real number in (0, 1), got {level!r} of type {type(level).__name__}")
    check_probability(float(level), name)
    return float(level)


def check_levels(
    levels: Iterable[float] | torch.Tensor, name: str, *, include_one: bool = False
) -> list[float]:
    """Check a non-empty 1-D collection of levels in (0, 1) (or (0, 1] with ``include_one``); return a list."""
    if isinstance(levels, torch.Tensor):
        if levels.dim() > 1:
            raise ValueError(f"{name} must be a scalar or 1-D, got shape {tuple(levels.shape)}")
        values = [float(v) for v in levels.detach().cpu().reshape(-1)]
    elif isinstance(levels, numbers.Real) and not isinstance(levels, bool):
        values = [float(levels)]
    else:
        try:
            values = [float(v) for v in levels]  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a 1-D sequence of real numbers, got {levels!r}") from exc
    if not values:
        raise ValueError(f"{name} must be non-empty, got {levels!r}")
    interval = "(0, 1]" if include_one else "(0, 1)"
    for v in values:
        ok = math.isfinite(v) and 0.0 < v and (v <= 1.0 if include_one else v < 1.0)
        if not ok:
            raise ValueError(f"{name} must lie in {interval}, got {v!r}")
    return values
