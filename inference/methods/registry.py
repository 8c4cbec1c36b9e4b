"""Build any compared method by name: ``make_method("lowrank", in_features=64, hidden_features=[128], rank=16, ...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .base import Method

__all__ = ["available_methods", "make_method", "register_method"]

_REGISTRY: dict[str, type[Method]] = {}

M = TypeVar("M", bound=type[Method])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` subclass under ``name`` (also stored as its ``name``)."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def make_method(name: str, **config: Any) -> Method:
    """Construct the method registered as ``name`` with ``config`` (architecture, training and method settings).

    Raises ``ValueError`` naming the known methods for an unknown ``name``; unknown configuration keys raise the
    constructor's ``TypeError``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"name must be one of the registered methods {available_methods()}, got {name!r}")
    return _REGISTRY[name](**config)
