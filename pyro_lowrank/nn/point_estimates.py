"""Deterministic parameters inside Pyro models: point estimates that every Pyro training route can update."""

from __future__ import annotations

from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from pyro.nn.module import to_pyro_module_
from torch import nn

__all__ = ["to_point_estimates_"]


def to_point_estimates_(
    module: nn.Module, *, skip: tuple[type[nn.Module], ...] = (), _tied: dict[int, nn.Parameter] | None = None
) -> nn.Module:
    r"""Make ``module`` and its submodules ``PyroModule`` s whose plain ``nn.Parameter`` s are real-valued
    ``PyroParam`` s (point estimates :math:`\hat\theta`, maximised jointly with the ELBO), in place.

    With ``pyro.settings.set(module_local_params=True)`` (set by ``import pyro_lowrank``) a plain ``nn.Parameter`` of a
    ``PyroModule`` breaks :class:`~pyro.infer.SVI`, which needs the ``unconstrained`` handle of every param site; a
    ``PyroParam`` works on both the ``ELBOModule`` route and plain ``SVI``, in module-local and global-store mode.
    The state-dict key of a converted parameter ``weight`` becomes ``weight_unconstrained`` (equal to it: the
    constraint is ``real``). Children are converted before their parent so that ``PyroModule.__setattr__``, which
    re-appends a ``PyroModule`` child, keeps the children's order (``nn.Sequential`` depends on it). Subtrees of the
    ``skip`` types are left as built; torch RNNs keep plain parameters (their forward reads a flat-weights cache), so
    a deterministic ``nn.LSTM`` left inside a converted network trains on the ``ELBOModule`` route only. Frozen
    parameters stay frozen, and a parameter shared by several modules (weight tying) stays one parameter.

    Parameters
    ----------
    module : nn.Module
        The module tree to convert in place.
    skip : tuple of types
        Module types whose subtrees are left as they are (the library's own layers).

    Returns
    -------
    nn.Module
        ``module`` itself, now a ``PyroModule``.
    """
    if isinstance(module, skip):
        return module
    tied: dict[int, nn.Parameter] = {} if _tied is None else _tied
    for child in module._modules.values():
        if child is not None:
            to_point_estimates_(child, skip=skip, _tied=tied)
    if isinstance(module, PyroModule):
        for name, child in list(module._modules.items()):
            setattr(module, name, child)  # a PyroModule parent (re)names the child's whole subtree
    else:
        to_pyro_module_(module, recurse=False)
    if isinstance(module, nn.RNNBase):
        return module  # its forward reads the parameters through the _flat_weights cache: keep them plain
    for name, value in list(module._parameters.items()):
        if value is None or name.endswith("_unconstrained"):
            continue
        delattr(module, name)
        setattr(module, name, PyroParam(value.detach().clone(), constraints.real, event_dim=value.dim()))
        key = f"{name}_unconstrained"
        if id(value) in tied:  # weight tying: the second owner gets the first owner's parameter
            module._parameters[key] = tied[id(value)]
        else:
            module._parameters[key].requires_grad_(value.requires_grad)
            tied[id(value)] = module._parameters[key]
    return module
