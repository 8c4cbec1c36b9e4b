r"""One interface for every method we compare: fit on data, return predictive draws, count parameters, time training.

A method turns inputs into *predictive draws*: S per-draw predictive distributions for each input, the form every metric
of :mod:`pyro_lowrank.metrics` consumes, so all methods are scored by the same code.

* classification (``likelihood="categorical"``): ``{"probs": (S, N, C)}``, per-draw class probabilities
  :math:`p_s(y \mid x_i)`;
* regression (``likelihood="gaussian"``): ``{"mean": (S, N), "scale": (S, N)}``, per-draw Gaussians
  :math:`\mathcal N(\mu_{s,i}, \sigma_{s,i}^2)` (the predictive is their equal-weight mixture).

Methods with a finite set of members (a deterministic net: S = 1; a deep ensemble: S = M) return that many draws
whatever ``num_samples`` asks for; sampling-based methods return ``num_samples`` draws.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from pyro_lowrank._validation import check_choice, check_positive, check_positive_int
from pyro_lowrank.predictive import predict

from ..fit import fit
from .architecture import Architecture, MLPArchitecture

__all__ = ["LIKELIHOODS", "Method", "PyroMethod", "count_parameters", "outputs_to_draws"]

logger = logging.getLogger(__name__)

LIKELIHOODS = ("categorical", "gaussian")

Data = tuple[torch.Tensor, torch.Tensor]


def outputs_to_draws(f: torch.Tensor, likelihood: str, noise_scale: float | torch.Tensor = 1.0) -> dict[str, torch.Tensor]:
    r"""Per-draw network outputs ``f`` to predictive draws: softmax of logits ``(S, N, C)`` for ``"categorical"``;
    means ``(S, N)`` (a trailing output dimension of 1 is dropped) with the noise scale broadcast for ``"gaussian"``."""
    likelihood = check_choice(likelihood, "likelihood", LIKELIHOODS)
    if likelihood == "categorical":
        if f.dim() != 3:
            raise ValueError(f"categorical outputs must have shape (S, N, C), got {tuple(f.shape)}")
        return {"probs": torch.softmax(f, dim=-1)}
    if f.dim() == 3 and f.shape[-1] == 1:
        f = f.squeeze(-1)
    if f.dim() != 2:
        raise ValueError(f"gaussian outputs must have shape (S, N) or (S, N, 1), got {tuple(f.shape)}")
    scale = torch.as_tensor(noise_scale, dtype=f.dtype, device=f.device).detach()
    return {"mean": f, "scale": scale.expand_as(f).clone()}


def count_parameters(modules: Iterable[nn.Module]) -> int:
    """Number of learned scalars (``requires_grad`` parameters), each tensor counted once across ``modules``."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                seen[id(p)] = p.numel()
    return sum(seen.values())


class Method(abc.ABC):
    """Base class of the compared methods.

    Parameters
    ----------
    in_features : int, optional
        Input width of the MLP every method is built on (with ``hidden_features``).
    hidden_features : sequence of int, optional
        Hidden widths of that MLP.
    architecture : Architecture, optional
        Instead of ``in_features``/``hidden_features``: the network every method is built on (an LSTM, a
        Transformer, ...; see :mod:`.architecture`). Methods that cannot handle it raise ``NotImplementedError``.
    likelihood : {"categorical", "gaussian"}
        Classification or regression.
    num_classes : int, optional
        C, required for ``"categorical"``.
    noise_scale : float
        Fixed observation noise standard deviation for ``"gaussian"`` (shared by all methods, so the comparison is
        about the weight uncertainty).
    num_epochs, batch_size, lr : training settings.
    patience : int, optional
        Validation early stopping: when :meth:`fit` gets ``val``, stop after this many epochs without a better
        validation loss (Pyro methods: predictive NLL; torch-trained networks: their training loss, i.e. NLL or
        MSE). With ``val`` the best epoch's state is restored even when ``patience`` is None; without ``val`` it is
        ignored and every method trains for ``num_epochs``.
    predict_batch_size : int, optional
        :meth:`predictive_draws` evaluates the inputs in chunks of this size (bounded memory; each chunk gets its
        own weight draws, which leaves every input's S-draw predictive distribution unchanged in law).
    seed : int
        Seed of initialisation and minibatch order (reproducible on CPU).
    progress : bool
        Show tqdm progress bars.

    Attributes
    ----------
    training_seconds : float
        Wall time of :meth:`fit` (NaN before fitting).
    """

    name: str = "method"

    def __init__(
        self,
        in_features: int | None = None,
        hidden_features: Sequence[int] | None = None,
        *,
        architecture: Architecture | None = None,
        likelihood: str = "categorical",
        num_classes: int | None = None,
        noise_scale: float = 1.0,
        num_epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        patience: int | None = None,
        predict_batch_size: int | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if architecture is None:
            if in_features is None or hidden_features is None:
                raise ValueError("give in_features and hidden_features (an MLP) or an architecture, got "
                                 f"in_features={in_features!r}, hidden_features={hidden_features!r}")
            architecture = MLPArchitecture(in_features, hidden_features)
        elif in_features is not None or hidden_features is not None:
            raise ValueError("give either an architecture or in_features/hidden_features, not both")
        if not isinstance(architecture, Architecture):
            raise TypeError(f"architecture must be an Architecture, got {type(architecture).__name__}")
        self.architecture = architecture
        self.is_mlp = isinstance(architecture, MLPArchitecture)
        self.in_features = architecture.in_features if self.is_mlp else None
        self.hidden_features = architecture.hidden_features if self.is_mlp else None
        self.likelihood = check_choice(likelihood, "likelihood", LIKELIHOODS)
        if self.likelihood == "categorical":
            if num_classes is None:
                raise ValueError("num_classes is required for likelihood='categorical', got None")
            self.num_classes = check_positive_int(num_classes, "num_classes")
        elif num_classes is not None:
            raise ValueError(f"num_classes is only used with likelihood='categorical', got num_classes={num_classes}")
        else:
            self.num_classes = None
        check_positive(noise_scale, "noise_scale")
        self.noise_scale = float(noise_scale)
        self.num_epochs = check_positive_int(num_epochs, "num_epochs")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        check_positive(lr, "lr")
        self.lr = float(lr)
        self.patience = None if patience is None else check_positive_int(patience, "patience")
        self.predict_batch_size = (None if predict_batch_size is None
                                   else check_positive_int(predict_batch_size, "predict_batch_size"))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.progress = bool(progress)
        self.training_seconds = float("nan")
        self.device: torch.device = torch.device("cpu")
        self.dtype: torch.dtype = torch.get_default_dtype()
        self._fitted = False

    @property
    def out_features(self) -> int:
        """Network output width: C for classification, 1 for regression."""
        return self.num_classes if self.likelihood == "categorical" else 1

    def _check_inputs(self, x: object, name: str) -> torch.Tensor:
        return self.architecture.check_inputs(x, name)

    def build_network(self, *, dropout: float = 0.0) -> nn.Module:
        """A fresh torch network of the shared architecture with this task's outputs, on the training device."""
        return self.place(self.architecture.network(self.out_features, dropout=dropout))

    def _mlp_only(self, what: str) -> None:
        """Raise ``NotImplementedError`` unless the architecture is an MLP (``what``: the unsupported piece)."""
        if not self.is_mlp:
            raise NotImplementedError(f"{self.name}: {what} is implemented for MLP architectures only, got "
                                      f"{self.architecture!r}")

    def _check_data(self, data: Data, name: str) -> Data:
        x, y = data
        self._check_inputs(x, f"{name} x")
        if not isinstance(y, torch.Tensor) or y.shape != x.shape[:1]:
            raise ValueError(f"{name} y must have shape ({x.shape[0]},) to match x, got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
        if self.likelihood == "categorical":
            labels_ok = not y.is_floating_point() or bool((y == y.round()).all())
            if not labels_ok or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(f"{name} y must hold integer class labels in [0, {self.num_classes}), got values "
                                 f"in [{float(y.min()):g}, {float(y.max()):g}]")
        elif not bool(torch.isfinite(y).all()):
            raise ValueError(f"{name} y must be finite regression targets, got NaN or Inf")
        return x, y

    def place(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the device and floating dtype of the training inputs (set by :meth:`fit`)."""
        return module.to(device=self.device, dtype=self.dtype)

    def fit(self, train: Data, val: Data | None = None) -> "Method":
        """Fit on ``train = (x, y)`` (``val`` for early stopping, see ``patience``, or model selection); sets
        :attr:`training_seconds` and returns ``self``. Networks live on the device and dtype of ``train``'s x."""
        train = self._check_data(train, "train")
        if val is not None:
            val = self._check_data(val, "val")
        x = train[0]
        self.device = x.device
        self.dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        self.training_seconds = float(self._fit(train, val))
        self._fitted = True
        logger.info("%s fitted in %.2f s (%d parameters)", self.name, self.training_seconds, self.num_parameters)
        return self

    def _early_stopping(self, val: Data | None) -> dict[str, Any]:
        """The ``val_data``/``patience`` arguments of a training loop (``patience`` only applies with ``val``)."""
        return {"val_data": val, "patience": self.patience if val is not None else None}

    def predictive_draws(self, x: torch.Tensor, num_samples: int = 100) -> dict[str, torch.Tensor]:
        """Predictive draws for inputs ``x`` (see the module docstring), computed without gradients."""
        if not self._fitted:
            raise RuntimeError(f"{self.name}: call fit(train, val) before predictive_draws")
        num_samples = check_positive_int(num_samples, "num_samples")
        x = self._check_inputs(x, "x")
        x = x.to(device=self.device, dtype=self.dtype) if x.is_floating_point() else x.to(self.device)
        chunk = self.predict_batch_size or max(x.shape[0], 1)
        if x.shape[0] == 0:
            raise ValueError(f"x must hold at least one input, got shape {tuple(x.shape)}")
        with torch.no_grad():
            parts = [self._predictive_draws(x[i : i + chunk], num_samples) for i in range(0, x.shape[0], chunk)]
        if len(parts) == 1:
            return parts[0]
        return {key: torch.cat([part[key] for part in parts], dim=1) for key in parts[0]}

    @property
    @abc.abstractmethod
    def num_parameters(self) -> int:
        """Learned and stored scalars (for Bayesian methods: every variational parameter; for ensembles: all
        members)."""

    @abc.abstractmethod
    def _fit(self, train: Data, val: Data | None) -> float:
        """Train and return the wall time in seconds."""

    @abc.abstractmethod
    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        """Predictive draws (called under ``torch.no_grad()``)."""

    def _draws(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        return outputs_to_draws(f, self.likelihood, self.noise_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, architecture={self.architecture!r})"


class PyroMethod(Method):
    """A method given by a Pyro model/guide pair: trained by :func:`pyro_lowrank.inference.fit` (ELBOModule route,
    minibatch plate scaling, KL annealing, validation early stopping) and predicted by
    :func:`pyro_lowrank.predictive.predict` (S guide draws in one vectorised pass).

    Subclasses implement :meth:`build` returning ``(model, guide)``; the model must follow the library's convention
    ``model(x, y=None, *, num_data=None)`` with a data plate named ``"data"`` and record the network output as the
    deterministic site ``"f"``. ``num_parameters`` counts the guide's parameters plus the model's learned ones.

    Extra parameters: ``kl_anneal_epochs`` (linear KL warm-up), ``num_particles`` (ELBO particles),
    ``val_num_samples``; ``patience`` (early stopping on the validation NLL) is :class:`Method`'s.
    """

    def __init__(self, *args: Any, kl_anneal_epochs: float = 0.0, num_particles: int = 1, val_num_samples: int = 16,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kl_anneal_epochs = float(kl_anneal_epochs)
        self.num_particles = check_positive_int(num_particles, "num_particles")
        self.val_num_samples = check_positive_int(val_num_samples, "val_num_samples")
        self.model: nn.Module | None = None
        self.guide: nn.Module | None = None

    @abc.abstractmethod
    def build(self, train: Data) -> tuple[nn.Module, nn.Module]:
        """Construct ``(model, guide)`` (may use the training data, e.g. for an SVD initialisation)."""

    def make_elbo(self) -> Any:
        """The ELBO :func:`~pyro_lowrank.inference.fit` trains with (``None``: its default, the mean-field ELBO)."""
        return None

    def _fit(self, train: Data, val: Data | None) -> float:
        torch.manual_seed(self.seed)
        self.model, self.guide = self.build(train)
        result = fit(
            self.model,
            self.guide,
            train,
            num_epochs=self.num_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            num_particles=self.num_particles,
            elbo=self.make_elbo(),
            kl_anneal_epochs=self.kl_anneal_epochs,
            **self._early_stopping(val),
            val_num_samples=self.val_num_samples,
            seed=self.seed,
            progress=self.progress,
        )
        self.fit_result = result
        return result.seconds

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        f = predict(self.model, self.guide, x, num_samples=num_samples)["f"]
        return self._draws(f)

    @property
    def num_parameters(self) -> int:
        if self.model is None:
            raise RuntimeError(f"{self.name}: the model is built by fit(); num_parameters is known after fitting")
        return count_parameters([self.model, self.guide])
