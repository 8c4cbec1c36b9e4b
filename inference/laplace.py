r"""Laplace approximations of a trained network through laplace-torch (``aleximmer/Laplace``), thin wrappers.

Around the MAP :math:`\theta_*` of a trained network, laplace-torch forms the Gaussian posterior
:math:`q(\theta) = \mathcal N(\theta_*, P^{-1})`, :math:`P = \frac{1}{\sigma^2 T} H + P_0`, with :math:`\sigma` the
regression noise (1 for classification), :math:`T` the temperature (1) and :math:`P_0 = \lambda I` the Gaussian prior
precision. Everything below is laplace-torch's own code; this module only chooses settings, builds the data loaders
and converts the outputs to the library's predictive draws.

* **Curvature** :math:`H`: the generalised Gauss-Newton matrix (laplace-torch's default ``CurvlinopsGGN`` backend)
  summed over the *whole* training set (``fit`` adds every minibatch's curvature of the summed loss; ``n_data`` = N),

  .. math:: H = \sum_{n=1}^N J_n^\top \Lambda_n J_n, \qquad
            \Lambda_n = \operatorname{diag}(p_n) - p_n p_n^\top \ \text{(softmax)}, \quad \Lambda_n = 1 \
            \text{(Gaussian)},

  with :math:`J_n = \partial f(x_n; \theta) / \partial \theta` at :math:`\theta_*`. For a network that fits its
  training set almost perfectly, :math:`p_n` is nearly one-hot and :math:`\Lambda_n \approx 0`: the data barely
  constrain most weights, so :math:`q` is close to the prior there and the predictive spread is set by :math:`\lambda`.
* **Weights**: ``subset_of_weights="last_layer"`` (only the last ``nn.Linear``; the rest is a fixed feature map) or
  ``"all"``.
* **Hessian structure** (``hessian_structure=None`` picks the default): ``"kron"`` (K-FAC) for the last layer, whose
  Kronecker factors are tiny, and ``"diag"`` for all weights, the cheapest full-network choice on CPU (``"kron"`` and
  ``"full"`` are accepted too; ``"full"`` costs :math:`O(P^2)` memory and an :math:`O(P^3)` inverse).
* **Prior precision** :math:`\lambda`, tuned after the curvature pass (``tuning_method``):

  - ``"gridsearch"`` (default; laplace-torch's recommended post-hoc route,
    ``optimize_prior_precision(method="gridsearch", val_loader=...)``): every :math:`\lambda` of the log grid
    :math:`10^a, \dots, 10^b` (``log_prior_prec_min``, ``log_prior_prec_max``, ``grid_size`` points) is scored by the
    negative log-likelihood of the *validation* data under the GLM predictive, and the best is kept. Classification
    scores the predictive mean with ``link_approx`` (``"probit"``, deterministic:
    :math:`\bar p = \operatorname{softmax}\big(\mu / \sqrt{1 + \frac\pi8 \operatorname{diag}\Sigma}\big)`; or
    ``"mc"``, the mean of softmaxed GLM samples as in :meth:`LaplaceApproximation.predictive_samples`); regression
    scores :math:`-\log \mathcal N(y; \mu, \Sigma + \sigma^2)`. The score is passed to laplace-torch as a plain callable
    ``loss``: its default running metric (``RunningNLLMetric``) is never reset between grid points in laplace-torch
    0.3, so every score would be the running mean over the grid so far and the search would return the largest grid
    value whatever the data. On the digits comparison (MAP trained without weight decay) the search picks
    :math:`\lambda \approx 5.6 \cdot 10^2` for the last layer and :math:`10^3` for all weights (test NLL 0.030 and
    0.031 vs. 0.027 for the MAP network, ECE at or below the MAP network's, OOD AUROC by mutual information 0.95).
    Such a :math:`\lambda` is not the prior the network was trained under (Adam's weight decay :math:`w` on the mean
    loss is the prior precision :math:`N w`, 0.086 for :math:`w = 10^{-4}`): post-hoc tuning is an empirical
    correction of the posterior's spread without retraining, which laplace-torch's authors endorse on empirical
    grounds (aleximmer/Laplace issues 108 and 280).
  - ``"marglik"``: ``marglik_steps`` Adam steps (rate ``marglik_lr``) on :math:`\log\lambda` maximising the Laplace
    log marginal likelihood :math:`\log p(\mathcal D \mid \theta_*) - \frac12 (\theta_*^\top P_0 \theta_* +
    \log\det P - \log\det P_0)` (``prior_structure`` ``"scalar"``, ``"layerwise"`` or ``"diag"``). For a scalar
    prior its stationary point is MacKay's :math:`\lambda = \gamma / \lVert\theta_*\rVert^2` with the effective number
    of parameters :math:`\gamma = \sum_i h_i / (h_i + \lambda)` (eigenvalues :math:`h_i` of :math:`H`). *Post hoc* on
    a network trained without a matching prior this goes wrong for classification: the near-interpolating fit makes
    :math:`H` (hence :math:`\gamma`) small while :math:`\lVert\theta_*\rVert^2` keeps the initialisation scale of the
    weights the data never constrained, so :math:`\lambda` comes out small (about 3 on the digits comparison, i.e. a
    prior standard deviation of 0.55 per weight) and the predictive is badly under-confident (NLL 0.09 for the last
    layer and 0.94 for all weights, vs. 0.027 for the MAP network). laplace-torch's authors recommend the marginal
    likelihood for the prior precision *during* training, not after it; here it is the fallback when no validation
    data are given (with a warning).

  The regression noise :math:`\sigma` is never tuned: it is the fixed ``noise_scale`` shared by all compared methods.
* **Predictive**: the linearised (GLM) predictive :math:`f(x) \sim \mathcal N(f(x; \theta_*), J_x P^{-1} J_x^\top)`
  (``pred_type="glm"``). Classification draws are ``predictive_samples(x, pred_type="glm", n_samples=S)``, which
  returns softmax probabilities of shape (S, N, C) (their mean is the Monte Carlo estimate of the predictive that
  ``"probit"`` approximates in closed form); regression draws are the f-samples of ``functional_samples`` (S, N, 1)
  with the fixed noise :math:`\sigma`, so the predictive is the mixture of :math:`\mathcal N(f_s, \sigma^2)` with
  variance :math:`J P^{-1} J^\top + \sigma^2`.

  laplace-torch draws ``(output_dim, S)`` standard normals *once* for the whole batch
  (``laplace.utils.normal_samples``): draw :math:`s` is :math:`f_s(x_i) = \mu_i + L_i z_s` with the same :math:`z_s`
  for every input. Each input's marginal is exact, so per-input metrics (NLL, ECE, entropy, mutual information,
  intervals) are unaffected, but draws are not independent across inputs (nor the joint GLM posterior over the batch).

Stored numbers (``num_parameters``): the :math:`P` network weights (the MAP; for the last-layer variant the frozen
feature extractor is part of the model, so all :math:`P` count), plus the Hessian approximation as laplace-torch stores
it (``"kron"``: every Kronecker factor, :math:`m^2 + n^2` for an :math:`m \times n` weight and :math:`m^2` for its
bias; ``"diag"``: one number per modelled parameter; ``"full"``: the dense :math:`P_s \times P_s` matrix), plus the
tuned prior precision (1 for a scalar prior).

laplace-torch is an optional dependency (``pip install laplace-torch``); it is imported on first use.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import torch
from torch import nn

from pyro_lowrank._validation import check_choice, check_positive, check_positive_int

__all__ = ["HESSIAN_STRUCTURES", "SUBSETS_OF_WEIGHTS", "TUNING_METHODS", "LaplaceApproximation", "hessian_numel"]

SUBSETS_OF_WEIGHTS = ("last_layer", "all")
HESSIAN_STRUCTURES = ("kron", "diag", "full")
DEFAULT_HESSIAN = {"last_layer": "kron", "all": "diag"}
PRIOR_STRUCTURES = ("scalar", "layerwise", "diag")
TUNING_METHODS = ("gridsearch", "marglik")
LINK_APPROXIMATIONS = ("probit", "mc")
#: default prior-precision grid: 10^-2 ... 10^6, three values per decade
DEFAULT_LOG_PRIOR_PREC_MIN, DEFAULT_LOG_PRIOR_PREC_MAX, DEFAULT_GRID_SIZE = -2.0, 6.0, 25
_LIKELIHOODS = {"categorical": "classification", "gaussian": "regression"}

logger = logging.getLogger(__name__)


def _import_laplace() -> Any:
    try:
        with warnings.catch_warnings():  # its asdl dependency calls the deprecated torch.jit.script at import
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
            import laplace
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Laplace baselines need laplace-torch: pip install 'pyro-lowrank[laplace]' (or laplace-torch)"
        ) from error
    return laplace


def hessian_numel(la: Any) -> int:
    """Numbers laplace-torch stores for the Hessian approximation of a fitted ``la``: the Kronecker factors
    (``H_facs``, each a full square matrix) for K-FAC, otherwise the ``H`` tensor (diagonal or dense)."""
    facs = getattr(la, "H_facs", None)
    if facs is not None:
        return sum(factor.numel() for block in facs.kfacs for factor in block)
    H = getattr(la, "H", None)
    if isinstance(H, torch.Tensor):
        return H.numel()
    raise TypeError(f"cannot count the Hessian numbers of {type(la).__name__} (H is {type(H).__name__})")


class LaplaceApproximation:
    r"""Fit and query a laplace-torch posterior around a trained network (see the module docstring).

    Parameters
    ----------
    net : nn.Module
        The trained network mapping ``x`` (N, D) to logits (N, C) or means (N, 1); its parameters are the MAP.
        ``"all"`` works on ``net`` itself (do not change its weights afterwards); ``"last_layer"`` on a copy.
    likelihood : {"categorical", "gaussian"}
        Classification or regression (laplace-torch's ``"classification"`` / ``"regression"``).
    subset_of_weights : {"last_layer", "all"}
    hessian_structure : {"kron", "diag", "full"}, optional
        Default ``"kron"`` for the last layer, ``"diag"`` for all weights.
    noise_scale : float
        Regression observation noise :math:`\sigma` (laplace-torch's ``sigma_noise``; ignored for classification).
    prior_precision : float
        Initial prior precision :math:`\lambda`: the value used when ``tune_prior_precision=False`` and the marglik
        starting point (the grid search does not use it). The tuned value is :attr:`prior_precision` after
        :meth:`fit`.
    tune_prior_precision : bool
        Tune :math:`\lambda` after the curvature pass.
    tuning_method : {"gridsearch", "marglik"}
        ``"gridsearch"`` (default): minimise the validation NLL of the GLM predictive over a log grid; needs
        ``val`` in :meth:`fit` and falls back to ``"marglik"`` with a warning without it. ``"marglik"``: maximise
        the Laplace marginal likelihood of the training data (under-confident post hoc on a network trained without
        the prior; module docstring).
    log_prior_prec_min, log_prior_prec_max, grid_size : float, float, int
        The grid :math:`10^{a}, \dots, 10^{b}` of ``grid_size`` log-spaced values (``"gridsearch"``). The default
        :math:`10^{-2} \dots 10^{6}` (25 values, three per decade) reaches far beyond laplace-torch's :math:`10^{4}`:
        a near-interpolating network can need a tight posterior. A value tuned to an end of the grid is logged (at
        the top the validation data prefer a posterior collapsed to the MAP network).
    link_approx : {"probit", "mc"}
        Classification predictive scored by the grid search: the deterministic probit approximation (default) or the
        Monte Carlo mean of ``n_samples`` softmaxed GLM draws (the draws :meth:`predictive_samples` returns; noisier
        scores, so a noisier choice of :math:`\lambda`).
    n_samples : int
        GLM draws per input for ``link_approx="mc"``.
    prior_structure : {"scalar", "layerwise", "diag"}
        Structure of the marglik-tuned prior precision (the grid search tunes a scalar).
    marglik_steps, marglik_lr : int, float
        Adam steps and rate on :math:`\log\lambda` (``"marglik"``).
    batch_size : int
        Minibatch size of the curvature pass and of the validation predictive.

    Attributes
    ----------
    la : laplace.BaseLaplace
        The fitted laplace-torch object (``None`` before :meth:`fit`).
    tuning_used : str or None
        The tuning actually run by :meth:`fit` (``"gridsearch"``, ``"marglik"`` or ``None`` for no tuning).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        likelihood: str = "categorical",
        subset_of_weights: str = "last_layer",
        hessian_structure: str | None = None,
        noise_scale: float = 1.0,
        prior_precision: float = 1.0,
        tune_prior_precision: bool = True,
        tuning_method: str = "gridsearch",
        log_prior_prec_min: float = DEFAULT_LOG_PRIOR_PREC_MIN,
        log_prior_prec_max: float = DEFAULT_LOG_PRIOR_PREC_MAX,
        grid_size: int = DEFAULT_GRID_SIZE,
        link_approx: str = "probit",
        n_samples: int = 100,
        prior_structure: str = "scalar",
        marglik_steps: int = 100,
        marglik_lr: float = 0.1,
        batch_size: int = 128,
    ) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        self.net = net
        self.likelihood = check_choice(likelihood, "likelihood", tuple(_LIKELIHOODS))
        self.subset_of_weights = check_choice(subset_of_weights, "subset_of_weights", SUBSETS_OF_WEIGHTS)
        if hessian_structure is None:
            hessian_structure = DEFAULT_HESSIAN[self.subset_of_weights]
        self.hessian_structure = check_choice(hessian_structure, "hessian_structure", HESSIAN_STRUCTURES)
        check_positive(noise_scale, "noise_scale")
        self.noise_scale = float(noise_scale)
        check_positive(prior_precision, "prior_precision")
        self.init_prior_precision = float(prior_precision)
        self.tune_prior_precision = bool(tune_prior_precision)
        self.tuning_method = check_choice(tuning_method, "tuning_method", TUNING_METHODS)
        self.log_prior_prec_min, self.log_prior_prec_max = float(log_prior_prec_min), float(log_prior_prec_max)
        if not (math.isfinite(self.log_prior_prec_min) and math.isfinite(self.log_prior_prec_max)
                and self.log_prior_prec_min < self.log_prior_prec_max):
            raise ValueError("log_prior_prec_min must be finite and below the finite log_prior_prec_max, got "
                             f"{log_prior_prec_min!r} and {log_prior_prec_max!r}")
        self.grid_size = check_positive_int(grid_size, "grid_size")
        if self.grid_size < 2:
            raise ValueError(f"grid_size must be at least 2, got {grid_size}")
        self.link_approx = check_choice(link_approx, "link_approx", LINK_APPROXIMATIONS)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.prior_structure = check_choice(prior_structure, "prior_structure", PRIOR_STRUCTURES)
        if self.tuning_method == "gridsearch" and self.prior_structure != "scalar":
            raise ValueError(f"prior_structure must be 'scalar' for tuning_method='gridsearch' (laplace-torch's grid "
                             f"search tunes one value), got {prior_structure!r}; use tuning_method='marglik'")
        self.marglik_steps = check_positive_int(marglik_steps, "marglik_steps")
        check_positive(marglik_lr, "marglik_lr")
        self.marglik_lr = float(marglik_lr)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.la: Any = None
        self.tuning_used: str | None = None

    # ---------------------------------------------------------------------------------------------------- fitting
    def _targets(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.likelihood == "categorical":
            return y.long()
        return y.to(dtype).reshape(y.shape[0], -1)  # laplace-torch wants regression targets shaped like f: (N, 1)

    def _loader(self, data: tuple[torch.Tensor, torch.Tensor], name: str) -> Any:
        from torch.utils.data import DataLoader, TensorDataset

        x, y = data
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} y must have {x.shape[0]} entries to match x, got shape {tuple(y.shape)}")
        y = self._targets(y, next(self.net.parameters()).dtype)
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, shuffle=False)

    def _validation_nll(self) -> Any:
        """The grid-search score as a plain callable (laplace-torch then scores all validation outputs at once and
        afresh for every grid value): mean NLL of the predictive probabilities, or the Gaussian NLL of the GLM
        predictive plus the fixed noise for regression."""
        if self.likelihood == "categorical":
            def nll(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.nll_loss(probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), y)
            return nll
        noise_var = self.noise_scale**2

        def gaussian_nll(f_mu: torch.Tensor, f_var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            var = f_var.reshape(f_mu.shape) + noise_var
            return 0.5 * (torch.log(2 * math.pi * var) + (y - f_mu) ** 2 / var).mean()
        return gaussian_nll

    def fit(
        self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> float:
        """Build ``laplace.Laplace(...)``, ``fit`` it on ``train = (x, y)`` (the GGN summed over all of it) and tune
        the prior precision (on ``val = (x, y)`` for the grid search); returns the wall time in seconds."""
        laplace = _import_laplace()
        train_loader = self._loader(train, "train")
        val_loader = self._loader(val, "val") if val is not None else None
        tuning = self.tuning_method if self.tune_prior_precision else None
        if tuning == "gridsearch" and val_loader is None:
            warnings.warn("LaplaceApproximation: tuning_method='gridsearch' needs validation data (fit(train, val)); "
                          "falling back to the post-hoc marginal likelihood, which tends to be under-confident for "
                          "a network trained without the prior", UserWarning, stacklevel=2)
            tuning = "marglik"
        start = time.perf_counter()
        self.net.eval()
        la = laplace.Laplace(
            self.net,
            _LIKELIHOODS[self.likelihood],
            subset_of_weights=self.subset_of_weights,
            hessian_structure=self.hessian_structure,
            sigma_noise=self.noise_scale if self.likelihood == "gaussian" else 1.0,
            prior_precision=self.init_prior_precision,
        )
        la.fit(train_loader)
        with warnings.catch_warnings():
            # laplace-torch reminds classification users to match link_approx with prediction: the grid search
            # scores link_approx (documented above), the marglik uses no link at all
            warnings.filterwarnings("ignore", message="By default `link_approx`", category=UserWarning)
            if tuning == "marglik":
                la.optimize_prior_precision(
                    pred_type="glm",
                    method="marglik",
                    n_steps=self.marglik_steps,
                    lr=self.marglik_lr,
                    init_prior_prec=self.init_prior_precision,
                    prior_structure=self.prior_structure,
                )
            elif tuning == "gridsearch":
                la.optimize_prior_precision(
                    pred_type="glm",
                    method="gridsearch",
                    val_loader=val_loader,
                    loss=self._validation_nll(),
                    log_prior_prec_min=self.log_prior_prec_min,
                    log_prior_prec_max=self.log_prior_prec_max,
                    grid_size=self.grid_size,
                    link_approx=self.link_approx,
                    n_samples=self.n_samples,
                )
                self._log_grid_edge(la)
        self.la, self.tuning_used = la, tuning
        return time.perf_counter() - start

    def _log_grid_edge(self, la: Any) -> None:
        # An end of the grid is usually a flat end of the validation NLL rather than a missed optimum: it tends to the
        # MAP network's NLL as the prior precision grows, and stops changing once H dominates it as it shrinks.
        log_prec = math.log10(float(la.prior_precision.reshape(-1)[0]))
        for end, side in ((self.log_prior_prec_min, "lower"), (self.log_prior_prec_max, "upper")):
            if abs(log_prec - end) < 1e-4:
                logger.info("LaplaceApproximation: the tuned prior precision is the %s end 10^%g of the grid "
                            "(widen log_prior_prec_min/max to check for a better value beyond it)", side, end)

    @property
    def prior_precision(self) -> torch.Tensor:
        r"""The prior precision :math:`\lambda` in use after :meth:`fit` (the tuned value): laplace-torch's
        ``prior_precision``, shape (1,) for a scalar prior, (layers,) or (P,) for a layer-wise or diagonal one."""
        return self._check_fitted().prior_precision.detach().clone()

    def _check_fitted(self) -> Any:
        if self.la is None:
            raise RuntimeError("LaplaceApproximation: call fit(train) first")
        return self.la

    # ------------------------------------------------------------------------------------------------ predictive
    def functional_samples(
        self, x: torch.Tensor, num_samples: int = 100, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """GLM f-samples (logits or means), shape (S, N, out)."""
        la = self._check_fitted()
        num_samples = check_positive_int(num_samples, "num_samples")
        return la.functional_samples(x, pred_type="glm", n_samples=num_samples, generator=generator)

    def predictive_samples(
        self, x: torch.Tensor, num_samples: int = 100, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """laplace-torch's ``predictive_samples(pred_type="glm")``: softmax probabilities (S, N, C) for
        classification, f-samples (S, N, 1) for regression (it applies no noise)."""
        la = self._check_fitted()
        num_samples = check_positive_int(num_samples, "num_samples")
        return la.predictive_samples(x, pred_type="glm", n_samples=num_samples, generator=generator)

    def predictive_draws(
        self, x: torch.Tensor, num_samples: int = 100, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The library's predictive draws: ``{"probs": (S, N, C)}`` or ``{"mean": (S, N), "scale": (S, N)}``
        (f-samples with the fixed noise ``noise_scale``)."""
        if self.likelihood == "categorical":
            return {"probs": self.predictive_samples(x, num_samples, generator)}
        f = self.functional_samples(x, num_samples, generator).squeeze(-1)
        return {"mean": f, "scale": torch.full_like(f, self.noise_scale)}

    def glm_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Closed-form GLM moments of f, ``la(x, pred_type="glm")`` before any link: the MAP output
        :math:`f(x;\theta_*)` (N, out) and the functional covariance :math:`J_x P^{-1} J_x^\top` (N, out, out).
        Add :math:`\sigma^2` for the regression predictive variance."""
        la = self._check_fitted()
        if self.likelihood == "gaussian":
            return la(x, pred_type="glm")  # public route: (f_mu, f_var) for regression
        # classification: the public call applies the link; the pre-link moments are this (private) method's output
        return la._glm_predictive_distribution(x)

    # ------------------------------------------------------------------------------------------------- counting
    @property
    def num_parameters(self) -> int:
        """Network weights + the stored Hessian approximation + the prior precision entries (module docstring)."""
        la = self._check_fitted()
        network = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        return network + hessian_numel(la) + la.prior_precision.numel()
