r"""The benchmark's cases: one training step or one predictive pass of each compared route, as zero-argument callables.

Every route trains the same MLP (widths ``784-512-512-10`` by default, a categorical likelihood, batch 128 of a
dataset of N = 60000, Adam with learning rate 1e-3) on the same random minibatch:

* ``deterministic``: ``nn.Linear`` layers and ``F.cross_entropy`` (the reference of every ratio);
* ``low-rank``: :class:`~pyro_lowrank.models.LowRankMLP` (A and B one sample site each per layer) with
  :class:`~pyro_lowrank.guides.FactorGuide`, trained through the ``ELBOModule`` route with the compiled
  :class:`~pyro_lowrank.inference.JitTraceMeanField_ELBO` (``eager``: Pyro's ``TraceMeanField_ELBO``);
* ``low-rank AutoNormal``: the same model with Pyro's ``AutoNormal`` (started at the factors' init);
* ``mean-field``: our full-rank mean-field BBB, :class:`~pyro_lowrank.models.MeanFieldMLP` (local
  reparameterisation) with ``FactorGuide``, compiled ELBO;
* ``standard Pyro``: the route of Pyro's tutorials, ``PyroModule[nn.Linear]`` with a ``PyroSample`` prior on every
  weight and bias, ``AutoNormal``, ``Trace_ELBO`` and ``SVI`` with ``pyro.optim.Adam`` (global param store);
* ``bayesian-torch``: ``LinearReparameterization`` layers, loss = cross-entropy + KL / N (when installed).

Prediction: S draws of the network for 1024 inputs with our :func:`~pyro_lowrank.predictive.predict`, with
``pyro.infer.Predictive`` on the standard route (sequential: ``parallel=True`` cannot broadcast ``nn.Linear`` over
draws), and a loop of S bayesian-torch forwards; one deterministic forward is the reference.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_lowrank.guides import FactorGuide, init_to_factors
from pyro_lowrank.models import DeterministicMLP, LowRankMLP, MeanFieldMLP
from pyro_lowrank.predictive import predict

from ..jit_elbo import JitTraceMeanField_ELBO

__all__ = ["Case", "bayesian_torch_available", "prediction_cases", "training_cases"]


@dataclass
class Case:
    """A benchmarked callable and what it learns: ``parameters`` counts the optimised numbers."""

    fn: Callable[[], object]
    parameters: int
    notes: dict = field(default_factory=dict)


def bayesian_torch_available() -> bool:
    """Whether the optional peer ``bayesian-torch`` (the ``bench`` extra) is installed."""
    return importlib.util.find_spec("bayesian_torch") is not None


def _hidden_and_classes(widths: Sequence[int]) -> tuple[int, list[int], int]:
    if len(widths) < 2:
        raise ValueError(f"widths must list at least the input and output widths, got {list(widths)}")
    return widths[0], list(widths[1:-1]), widths[-1]


def _setup(widths: Sequence[int], rows: int, device: torch.device | str, include: Sequence[str] | None, seed: int):
    """The device, the widths, ``rows`` random inputs, the data generator (for labels) and the route filter; seeds
    Pyro's generators."""
    device = torch.device(device)
    n_in, hidden, classes = _hidden_and_classes(widths)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n_in, generator=gen).to(device)
    keep = set(include) if include is not None else None
    pyro.set_rng_seed(seed)
    return device, n_in, hidden, classes, x, gen, (lambda name: keep is None or name in keep)


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters if p.requires_grad)


class StandardPyroMLP(PyroModule):
    """The tutorial route: ``PyroModule[nn.Linear]`` layers whose weight and bias are ``PyroSample`` N(0, 1) priors."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        layers = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layer = PyroModule[nn.Linear](n_in, n_out)
            layer.weight = PyroSample(dist.Normal(0.0, 1.0).expand([n_out, n_in]).to_event(2))
            layer.bias = PyroSample(dist.Normal(0.0, 1.0).expand([n_out]).to_event(1))
            layers.append(layer)
        self.layers = PyroModule[nn.ModuleList](layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        with pyro.plate("data", num_data if num_data is not None else x.shape[0], subsample_size=x.shape[0]):
            pyro.deterministic("f", h, event_dim=1)
            pyro.sample("obs", dist.Categorical(logits=h), obs=y)
        return h


def _standard_route(widths: Sequence[int], device: torch.device, x: torch.Tensor):
    """Model, guide and SVI of the standard route, built with the global param store (as in Pyro's tutorials)."""
    with pyro.settings.context(module_local_params=False):
        pyro.clear_param_store()  # the route keeps its parameters in the global store: start it empty
        model = StandardPyroMLP(widths).to(device)
        guide = AutoNormal(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    return model, guide, svi


def _bayesian_torch_mlp(widths: Sequence[int], device: torch.device) -> nn.Module:
    from bayesian_torch.layers import LinearReparameterization

    class BayesianTorchMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(LinearReparameterization(a, b) for a, b in zip(widths[:-1], widths[1:]))

        def forward(self, x: torch.Tensor, return_kl: bool = True):
            kl = 0.0
            h = x
            for i, layer in enumerate(self.layers):
                if return_kl:
                    h, layer_kl = layer(h)
                    kl = kl + layer_kl
                else:  # prediction: the layers skip their KL
                    h = layer(h, return_kl=False)
                if i < len(self.layers) - 1:
                    h = torch.relu(h)
            return (h, kl) if return_kl else h

    return BayesianTorchMLP().to(device)


def training_cases(
    widths: Sequence[int] = (784, 512, 512, 10),
    *,
    ranks: Sequence[int] = (8, 16, 32, 64),
    batch_size: int = 128,
    num_data: int = 60000,
    device: torch.device | str = "cpu",
    include: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Case]:
    """One optimisation step of every route, on the same minibatch (see the module docstring).

    Parameters
    ----------
    widths : sequence of int
        Input, hidden and output widths of the MLP.
    ranks : sequence of int
        Ranks of the low-rank cases (named ``low-rank r=<rank>``, ``low-rank eager r=<rank>``, ...).
    batch_size, num_data : int
        Minibatch size and the dataset size that scales the likelihood.
    device : torch.device or str
        Where the data and networks live.
    include : sequence of str, optional
        Keep only these routes among ``deterministic``, ``low-rank``, ``low-rank eager``, ``low-rank AutoNormal``,
        ``mean-field``, ``standard Pyro`` and ``bayesian-torch`` (the last only when installed).
    seed : int
        Seeds the data and the initialisations.

    Returns
    -------
    dict of str to Case
        One optimisation step per route, and the number of numbers it optimises.
    """
    device, n_in, hidden, classes, x, gen, wanted = _setup(widths, batch_size, device, include, seed)
    y = torch.randint(0, classes, (batch_size,), generator=gen).to(device)
    cases: dict[str, Case] = {}

    if wanted("deterministic"):
        net = DeterministicMLP(n_in, hidden, classes).to(device)
        det_opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def det_step() -> None:
            det_opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            det_opt.step()

        cases["deterministic"] = Case(det_step, _count(net.parameters()))

    def elbo_case(model: nn.Module, guide: nn.Module, elbo) -> Case:
        loss_fn = elbo(model, guide)
        loss_fn(x, y, num_data=num_data)  # guide set-up and compilation, outside the timed steps
        params = [p for p in loss_fn.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(x, y, num_data=num_data).backward()
            opt.step()

        return Case(step, _count(params))

    for rank in ranks:
        output_rank = min(rank, classes)
        variants = (("low-rank", JitTraceMeanField_ELBO, "factor"), ("low-rank eager", TraceMeanField_ELBO, "factor"),
                    ("low-rank AutoNormal", JitTraceMeanField_ELBO, "autonormal"))
        for name, elbo_type, guide_kind in variants:
            if not wanted(name):
                continue
            model = LowRankMLP(n_in, hidden, rank=rank, output_rank=output_rank, num_classes=classes).to(device)
            guide = (FactorGuide(model) if guide_kind == "factor"
                     else AutoNormal(model, init_loc_fn=init_to_factors(model), init_scale=0.01))
            cases[f"{name} r={rank}"] = elbo_case(model, guide, elbo_type(max_plate_nesting=1))

    if wanted("mean-field"):
        model = MeanFieldMLP(n_in, hidden, num_classes=classes).to(device)
        cases["mean-field"] = elbo_case(model, FactorGuide(model), JitTraceMeanField_ELBO(max_plate_nesting=1))

    if wanted("standard Pyro"):
        _, _, svi = _standard_route(widths, device, x)
        with pyro.settings.context(module_local_params=False):
            svi.step(x, y, num_data=num_data)  # parameter creation
            count = sum(p.numel() for p in svi.guide.parameters())

        def svi_step() -> None:
            with pyro.settings.context(module_local_params=False):
                svi.step(x, y, num_data=num_data)

        cases["standard Pyro"] = Case(svi_step, count)

    if wanted("bayesian-torch") and bayesian_torch_available():
        bt = _bayesian_torch_mlp(widths, device)
        bt_opt = torch.optim.Adam(bt.parameters(), lr=1e-3)

        def bt_step() -> None:
            bt_opt.zero_grad(set_to_none=True)
            logits, kl = bt(x)
            (F.cross_entropy(logits, y) + kl / num_data).backward()
            bt_opt.step()

        cases["bayesian-torch"] = Case(bt_step, _count(bt.parameters()))
    return cases


def prediction_cases(
    widths: Sequence[int] = (784, 512, 512, 10),
    *,
    rank: int = 16,
    num_samples: int = 32,
    num_inputs: int = 1024,
    device: torch.device | str = "cpu",
    include: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Case]:
    """S = ``num_samples`` predictive draws for ``num_inputs`` inputs by every route, and one deterministic forward.

    The Bayesian routes' guides are set up (untrained: prediction cost does not depend on the parameter values).

    Parameters
    ----------
    widths : sequence of int
        Input, hidden and output widths of the MLP.
    rank : int
        Rank of the low-rank case.
    num_samples, num_inputs : int
        S draws for this many inputs.
    device : torch.device or str
        Where the inputs and networks live.
    include : sequence of str, optional
        Keep only these routes among ``deterministic``, ``low-rank``, ``mean-field``, ``standard Pyro`` and
        ``bayesian-torch``.
    seed : int
        Seeds the inputs and the initialisations.

    Returns
    -------
    dict of str to Case
        One predictive pass per route (``parameters`` counts the guide's numbers, 0 for the standard route).
    """
    device, n_in, hidden, classes, x, _, wanted = _setup(widths, num_inputs, device, include, seed)
    cases: dict[str, Case] = {}

    if wanted("deterministic"):
        net = DeterministicMLP(n_in, hidden, classes).to(device)

        def det_forward() -> torch.Tensor:
            with torch.no_grad():
                return net(x)

        cases["deterministic"] = Case(det_forward, _count(net.parameters()))

    if wanted("low-rank"):
        model = LowRankMLP(n_in, hidden, rank=rank, output_rank=min(rank, classes), num_classes=classes).to(device)
        guide = FactorGuide(model)
        guide(x[:2], torch.zeros(2, dtype=torch.long, device=device))
        cases[f"low-rank r={rank}"] = Case(lambda model=model, guide=guide: predict(model, guide, x, num_samples),
                                           _count(guide.parameters()))

    if wanted("mean-field"):
        mf = MeanFieldMLP(n_in, hidden, num_classes=classes).to(device)
        mf_guide = FactorGuide(mf)
        mf_guide(x[:2], torch.zeros(2, dtype=torch.long, device=device))
        cases["mean-field"] = Case(lambda mf=mf, mf_guide=mf_guide: predict(mf, mf_guide, x, num_samples),
                                   _count(mf_guide.parameters()))

    if wanted("standard Pyro"):
        std_model, std_guide, svi = _standard_route(widths, device, x)
        with pyro.settings.context(module_local_params=False):
            svi.step(x[:2], torch.zeros(2, dtype=torch.long, device=device))
            predictive = Predictive(std_model, guide=std_guide, num_samples=num_samples, return_sites=["f"])

        def standard_predict() -> dict:
            with pyro.settings.context(module_local_params=False), torch.no_grad():
                return predictive(x)

        cases["standard Pyro Predictive"] = Case(standard_predict, 0)

    if wanted("bayesian-torch") and bayesian_torch_available():
        bt = _bayesian_torch_mlp(widths, device)

        def bt_predict() -> torch.Tensor:
            with torch.no_grad():
                return torch.stack([bt(x, return_kl=False) for _ in range(num_samples)])

        cases["bayesian-torch loop"] = Case(bt_predict, _count(bt.parameters()))
    return cases
