r"""A JIT-compiled mean-field ELBO for the ``ELBOModule`` route (module-local parameters).

The loss is Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` surrogate,

.. math::

    -\mathcal L_\beta = -\sum_{\text{observed sites}} \log p(y \mid \theta)
    + \beta \sum_{\text{latent sites}} \mathrm{KL}\big(q(\theta_j) \,\|\, p(\theta_j)\big),

with the analytic KL where one is registered and :math:`\log q - \log p` at the sampled point otherwise, averaged over
``num_particles`` (vectorised or not). Compiling changes how it is computed, never what: the model and guide are
traced once by :func:`torch.jit.trace` per input signature, and later steps replay the recorded tensor operations
without running Pyro's effect handlers, distribution objects or ``PyroModule`` attribute lookups again. Random draws are
recorded as random operations (``aten::normal``), so every call draws fresh noise from torch's global generator.

What is fixed at trace time, and therefore part of the cache key: the shapes, dtypes and devices of the tensor
arguments, the values of the other arguments (``num_data=...``), the identity of the model's and guide's parameters
and buffers (a ``.to(device)`` or a new guide re-traces), and the ``training`` flags. The KL weight :math:`\beta` of
an enclosing :class:`~pyro_lowrank.inference.KLWeight` handler is passed in as a tensor, so annealing never
re-traces. What must not vary between calls with the same key: the control flow (data-dependent branches, shapes that
depend on tensor values such as trimming padding) -- the same restriction as Pyro's own JIT ELBOs. With
``check_trace=True`` the traced graph is replayed beside the eager ELBO from the same random state twice: on the
first call (other random draws than the traced ones: catches branches on sampled values) and on the second call of
the signature (other data: catches branches and shapes that depend on the data, when that batch takes another path);
a disagreement raises. It is a check, not a proof: a data-dependent path that the first two batches share goes
unnoticed. Tensors are inputs whether passed by position or by keyword; enclosing Pyro handlers other than
``KLWeight`` are refused, because the replayed graph cannot apply them.

Why not Pyro's :class:`pyro.infer.JitTraceMeanField_ELBO`: with module-local parameters (the ``ELBOModule`` route this
library uses) it looks its parameters up in the global param store, where they are not; and in pyro 1.9.2 it
re-traces on every call (see :meth:`JitTraceMeanField_ELBO.differentiable_loss`).
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import ExitStack
from typing import Any, Callable

import pyro
import pyro.infer
import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn

from .kl_weight import KLWeight

__all__ = ["JitTraceMeanField_ELBO"]

logger = logging.getLogger(__name__)


def _state_tensors(*modules: Any) -> list[torch.Tensor]:
    """Parameters and buffers of the ``nn.Module`` s among ``modules``, each tensor once, in a fixed order."""
    seen: dict[int, torch.Tensor] = {}
    for module in modules:
        if isinstance(module, nn.Module):
            for tensor in (*module.parameters(), *module.buffers()):
                seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def _signature(value: Any, where: str) -> Any:
    """A hashable description of an argument: tensors by shape, dtype, device and grad flag, the rest by value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (list, tuple, dict, set)):
        items = value.values() if isinstance(value, dict) else value
        if any(isinstance(item, torch.Tensor) for item in items):
            raise TypeError(f"JitTraceMeanField_ELBO passes tensors to the compiled loss one by one: {where} is a "
                            f"{type(value).__name__} holding tensors; pass each tensor as its own argument")
    try:
        hash(value)
    except TypeError as error:
        raise TypeError(
            "JitTraceMeanField_ELBO traces the loss once per argument signature, so every non-tensor argument must "
            f"be hashable; {where} is of type {type(value).__name__}"
        ) from error
    return ("value", value)


def _tensor_inputs(args: tuple, kwargs: dict) -> tuple[list[int], list[str]]:
    """Positions of the tensor arguments and names of the tensor keyword arguments (sorted): the compiled loss's
    data inputs. Everything else is a constant of the trace (and part of its cache key)."""
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    names = sorted(name for name, value in kwargs.items() if isinstance(value, torch.Tensor))
    return positions, names


def _check_handlers() -> None:
    """Refuse to run under Pyro handlers other than :class:`KLWeight`: the compiled graph would ignore them."""
    others = [type(handler).__name__ for handler in _PYRO_STACK if not isinstance(handler, KLWeight)]
    if others:
        raise RuntimeError(
            f"JitTraceMeanField_ELBO replays a recorded graph and cannot apply the enclosing Pyro handlers {others} "
            "(only KLWeight is passed through, as an input of the graph); call it outside them, or use "
            "TraceMeanField_ELBO"
        )


def _active_kl_weight() -> float:
    """Product of the ``beta`` of every enclosing :class:`KLWeight` handler (1 when there is none)."""
    beta = 1.0
    for handler in _PYRO_STACK:
        if isinstance(handler, KLWeight):
            beta *= float(handler.beta)
    return beta


class JitTraceMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):
    """:class:`~pyro.infer.TraceMeanField_ELBO`, compiled with :func:`torch.jit.trace` (see the module docstring).

    Use it where ``TraceMeanField_ELBO`` is used: ``loss_fn = JitTraceMeanField_ELBO(...)(model, guide)`` is an
    ``nn.Module`` whose ``forward(*args, **kwargs)`` returns the differentiable negative ELBO, and
    ``fit(model, guide, data, elbo=JitTraceMeanField_ELBO(...))`` trains with it.

    Parameters
    ----------
    check_trace : bool
        Replay the traced graph beside the eager ELBO from the same random state on the first and the second call
        of each signature, and raise a ``RuntimeError`` if they disagree (control flow that depends on sampled
        values or on the data cannot be traced; see the module docstring).
    **kwargs
        As :class:`~pyro.infer.TraceMeanField_ELBO` (``num_particles``, ``vectorize_particles``,
        ``max_plate_nesting``, ...), plus Pyro's ``ignore_jit_warnings`` and ``jit_options``.

    Notes
    -----
    With module-local parameters (``pyro.settings.get("module_local_params")``, which importing pyro_lowrank turns
    on), the model and guide must be ``nn.Module`` s and their parameters must exist after one eager call (lazy
    autoguides are set up by that call). With the global param store, it defers to Pyro's implementation, with the
    re-tracing bug of pyro 1.9.2 worked around (and without ``KLWeight``). Compiled graphs are cached on the ELBO
    object and hold their model and guide: use one ELBO object per training run.
    """

    def __init__(self, *, check_trace: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_trace = bool(check_trace)
        self._traced: dict[tuple, Callable] = {}
        self._unchecked_keys: set[tuple] = set()
        self._global_closures: dict[tuple[int, int], Callable] = {}

    def clear_cache(self) -> None:
        """Forget every compiled graph (``fit`` calls it after rank pruning replaced the parameter tensors: graphs
        keyed by the old tensors can never be hit again)."""
        self._traced.clear()
        self._unchecked_keys.clear()
        self._global_closures.clear()

    # ------------------------------------------------------------------ the loss
    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The negative ELBO from the compiled graph of this call's signature (compiled on first use).

        Parameters
        ----------
        model, guide : nn.Module
            The Pyro model and guide (``PyroModule`` s / autoguides).
        *args, **kwargs
            The model's arguments. Tensors (positional or keyword) are inputs of the graph; any other value is a
            constant of it and part of the cache key.

        Returns
        -------
        torch.Tensor
            A scalar with a gradient with respect to the model's and guide's parameters.

        Raises
        ------
        TypeError
            A non-``nn.Module`` model or guide, an unhashable non-tensor argument, or a container of tensors.
        RuntimeError
            Enclosing Pyro handlers other than ``KLWeight``, or a traced graph that disagrees with the eager ELBO.
        """
        _check_handlers()
        if not pyro.settings.get("module_local_params"):
            return self._global_store_loss(model, guide, *args, **kwargs)
        for role, module in (("model", model), ("guide", guide)):
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"JitTraceMeanField_ELBO with module-local parameters needs the {role} to be an nn.Module "
                    f"(a PyroModule or an autoguide), got {type(module).__name__}"
                )
        beta = _active_kl_weight()
        tensors = _state_tensors(model, guide)  # read once per call: the cache key and the graph's inputs
        key = self._key(model, guide, tensors, args, kwargs)
        traced = self._traced.get(key)
        if traced is None:
            # The first call of a signature is computed eagerly (it also sets up a lazy guide's parameters), so it
            # draws from the generator exactly as the eager ELBO would; the trace and its check run on a forked
            # generator. A compiled fit therefore consumes the same random stream as an eager one.
            loss = self._eager_loss(model, guide, args, kwargs, beta)
            key = self._key(model, guide, _state_tensors(model, guide), args, kwargs)  # a lazy guide's are new
            self._traced[key] = self._compile(model, guide, args, kwargs)
            self._unchecked_keys.add(key)
            return loss
        if key in self._unchecked_keys:
            # The second call of a signature checks the graph on other data: branches and shapes that depend on
            # the data (not only on random draws) show up here.
            self._unchecked_keys.discard(key)
            if self.check_trace:
                self._check(traced, self._loss_fn(model, guide, args, kwargs), self._inputs(tensors, args, kwargs),
                            args)
        return traced(*self._inputs(tensors, args, kwargs, beta))

    @staticmethod
    def _inputs(tensors: list[torch.Tensor], args: tuple, kwargs: dict, beta: float = 1.0) -> tuple:
        """The graph's inputs: the state tensors, beta as a tensor, the tensor arguments."""
        reference = next((t for t in tensors if t.is_floating_point()), None)
        beta_tensor = torch.tensor(beta, dtype=reference.dtype if reference is not None else None,
                                   device=reference.device if reference is not None else None)
        positions, names = _tensor_inputs(args, kwargs)
        return (*tensors, beta_tensor, *(args[i] for i in positions), *(kwargs[name] for name in names))

    def _global_store_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _active_kl_weight() != 1.0:
            raise NotImplementedError(
                "JitTraceMeanField_ELBO with the global param store bakes the KL weight into its graph; use "
                "module-local parameters (import pyro_lowrank) for KLWeight"
            )
        # Workaround for pyro 1.9.2: JitTraceMeanField_ELBO.differentiable_loss tests
        # `getattr(self, "_loss_and_surrogate_loss", None) is None` but stores the compiled closure in
        # `self._differentiable_loss`, so the test never passes and every call builds (and traces) a new compiled
        # function. Pointing the tested attribute at the stored closure makes later calls reuse it; one closure is
        # kept per (model, guide) pair, because Pyro's closure captures the pair it was built for.
        pair = (id(model), id(guide))
        self._differentiable_loss = self._global_closures.get(pair)
        self._loss_and_surrogate_loss = self._differentiable_loss
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self._global_closures[pair] = self._differentiable_loss
        return loss

    @staticmethod
    def _key(model: nn.Module, guide: nn.Module, tensors: list[torch.Tensor], args: tuple, kwargs: dict) -> tuple:
        return (
            id(model), id(guide), tuple(m.training for m in (*model.modules(), *guide.modules())),
            tuple(id(t) for t in tensors),
            tuple(_signature(a, f"positional argument {i}") for i, a in enumerate(args)),
            tuple(sorted((name, _signature(value, f"keyword argument {name!r}")) for name, value in kwargs.items())),
        )

    # ------------------------------------------------------------------ compilation
    def _eager_loss(self, model: Callable, guide: Callable, args: tuple, kwargs: dict,
                    beta: torch.Tensor | float) -> torch.Tensor:
        """The surrogate negative ELBO computed by Pyro, with the KL weight ``beta`` (enclosing KLWeight handlers
        are neutralised so that ``beta`` is applied exactly once)."""
        loss = 0.0
        with ExitStack() as stack:
            stack.enter_context(_neutral_kl_weights())
            stack.enter_context(KLWeight(beta))
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                _, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
                loss = loss + surrogate / self.num_particles
        return loss

    def _loss_fn(self, model: nn.Module, guide: nn.Module, args: tuple, kwargs: dict) -> Callable:
        """The eager ELBO as a function of the graph's inputs (state tensors, beta, tensor arguments)."""
        num_state = len(_state_tensors(model, guide))
        positions, names = _tensor_inputs(args, kwargs)

        def loss_fn(*inputs: torch.Tensor) -> torch.Tensor:
            data = inputs[num_state + 1:]
            call_args = list(args)
            for position, value in zip(positions, data[: len(positions)]):
                call_args[position] = value
            call_kwargs = dict(kwargs)
            call_kwargs.update(zip(names, data[len(positions):]))
            return self._eager_loss(model, guide, tuple(call_args), call_kwargs, inputs[num_state])

        return loss_fn

    def _compile(self, model: nn.Module, guide: nn.Module, args: tuple, kwargs: dict) -> Callable:
        loss_fn = self._loss_fn(model, guide, args, kwargs)
        inputs = self._inputs(_state_tensors(model, guide), args, kwargs)
        with warnings.catch_warnings(), pyro.validation_enabled(False):
            warnings.simplefilter("ignore")  # TracerWarnings about Python values taken from tensors (shapes)
            # Traced with autograd on, whatever the caller's mode: the graph must be the differentiable one (without
            # autograd, layers take inference-only paths such as in-place products).
            with torch.random.fork_rng(devices=_cuda_devices(args)), torch.enable_grad():
                options = {k: v for k, v in (self.jit_options or {}).items() if k != "check_trace"}
                traced = torch.jit.trace(loss_fn, inputs, check_trace=False, **options)
        logger.debug("traced the ELBO of %s/%s for a new signature", type(model).__name__, type(guide).__name__)
        if self.check_trace:
            self._check(traced, loss_fn, inputs, args)
        return traced

    def _check(self, traced: Callable, loss_fn: Callable, inputs: tuple, args: tuple) -> None:
        devices = _cuda_devices(args)
        with torch.enable_grad(), warnings.catch_warnings(), pyro.validation_enabled(False):
            warnings.simplefilter("ignore")
            with torch.random.fork_rng(devices=devices):
                torch.rand(())  # a random state other than the traced call's, so that frozen branches can show
                state = torch.random.get_rng_state()
                cuda_states = [torch.cuda.get_rng_state(device) for device in devices]
                eager = float(loss_fn(*inputs))
                torch.random.set_rng_state(state)
                for device, cuda_state in zip(devices, cuda_states):
                    torch.cuda.set_rng_state(cuda_state, device)
                compiled = float(traced(*inputs))
        agree = math.isclose(eager, compiled, rel_tol=1e-4, abs_tol=1e-4)
        if not (agree or (math.isnan(eager) and math.isnan(compiled))):
            raise RuntimeError(
                f"the traced ELBO ({compiled}) differs from the eager ELBO ({eager}) from the same random state: the "
                "model or guide is not traceable (control flow or shapes that depend on tensor values, e.g. trimmed "
                "padding, or random numbers drawn outside torch). Use TraceMeanField_ELBO for this model."
            )


class _neutral_kl_weights:
    """Set the ``beta`` of every enclosing :class:`KLWeight` handler to 1 for the duration (restored on exit)."""

    def __enter__(self) -> "_neutral_kl_weights":
        self.saved = [(handler, handler.beta) for handler in _PYRO_STACK if isinstance(handler, KLWeight)]
        for handler, _ in self.saved:
            handler.beta = 1.0
        return self

    def __exit__(self, *exc: Any) -> None:
        for handler, beta in self.saved:
            handler.beta = beta


def _cuda_devices(args: tuple) -> list[int]:
    return sorted({a.device.index or 0 for a in args if isinstance(a, torch.Tensor) and a.is_cuda})
