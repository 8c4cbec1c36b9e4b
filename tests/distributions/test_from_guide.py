"""LowRankMatrixNormal.from_guide and Layer.weight_posterior: q_W read from trained mean-field guides."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroModule

from pyro_lowrank.distributions import LowRankMatrixNormal
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.nn import LowRankLinear


# ---------------------------------------------------------------------------------------------- from_guide
class Net(PyroModule):
    def __init__(self):
        super().__init__()
        self.fc = LowRankLinear(3, 4, 2)

    def forward(self, x, y=None):
        out = self.fc(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(out, 1.0).to_event(1), obs=y)
        return out


def _data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, generator=gen), torch.randn(8, 4, generator=gen)


def _train_a_little(model, guide, x, y, steps=3):
    """A few optimisation steps so that the guide's parameters move away from their initial values."""
    if pyro.settings.get("module_local_params"):
        guide(x, y)  # set up the parameters before handing them to the optimiser
        loss_fn = Trace_ELBO()(model, guide)  # the ELBOModule route
        optim = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
        for _ in range(steps):
            optim.zero_grad()
            loss_fn(x, y).backward()
            optim.step()
    else:
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        for _ in range(steps):
            svi.step(x, y)


def _guide_locs_scales(guide, x, y):
    """The factor posteriors read off the guide's own trace (independent of from_guide's code path)."""
    trace = pyro.poutine.trace(guide).get_trace(x, y)
    if isinstance(guide, FactorGuide):
        fns = {name: trace.nodes[name]["fn"].base_dist for name in ("fc.A", "fc.B")}
        return {name: (fn.loc, fn.scale) for name, fn in fns.items()}
    if isinstance(guide, AutoNormal):
        fns = {name: trace.nodes[name + "_unconstrained"]["fn"].base_dist for name in ("fc.A", "fc.B")}
        return {name: (fn.loc, fn.scale) for name, fn in fns.items()}
    latent = trace.nodes["_AutoDiagonalNormal_latent"]["fn"].base_dist
    out, pos = {}, 0
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        shape, size = site["value"].shape, site["value"].numel()
        out[name] = (latent.loc[pos:pos + size].reshape(shape), latent.scale[pos:pos + size].reshape(shape))
        pos += size
    return out


@pytest.mark.parametrize("module_local_params", [False, True])
@pytest.mark.parametrize("guide_class", [FactorGuide, AutoNormal, AutoDiagonalNormal])
def test_from_guide_reads_the_factor_posteriors(guide_class, module_local_params):
    with pyro.settings.context(module_local_params=module_local_params):
        pyro.clear_param_store()
        torch.manual_seed(0)
        net = Net()
        guide = guide_class(net)
        x, y = _data()
        _train_a_little(net, guide, x, y)
        q = LowRankMatrixNormal.from_guide(guide, "fc")
        expected = _guide_locs_scales(guide, x, y)
    assert q.event_shape == (4, 3) and q.rank == 2 and q.batch_shape == ()
    for (loc, scale), name in zip(((q.a_loc, q.a_scale), (q.b_loc, q.b_scale)), ("fc.A", "fc.B")):
        exp_loc, exp_scale = expected[name]
        torch.testing.assert_close(loc, exp_loc.detach())
        torch.testing.assert_close(scale, exp_scale.detach())
    assert not q.a_loc.requires_grad and not q.b_scale.requires_grad
    # training moved the scales away from their (constant) initial values
    assert q.a_scale.std() > 0
    torch.testing.assert_close(q.mean, q.a_loc @ q.b_loc.T)


def test_from_guide_unset_guide_raises():
    with pytest.raises(ValueError, match="not been set up"):
        LowRankMatrixNormal.from_guide(FactorGuide(Net()), "fc")


def test_from_guide_wrong_prefix_lists_sites():
    net = Net()
    guide = FactorGuide(net)
    guide(*_data())
    with pytest.raises(ValueError) as info:
        LowRankMatrixNormal.from_guide(guide, "layer")
    message = str(info.value)
    assert "'layer'" in message
    assert "layer.A" in message
    for site in ("fc.A", "fc.B", "fc.bias"):
        assert site in message


def test_from_guide_rejects_non_gaussian_guide():
    net = Net()
    guide = AutoDelta(net)
    guide(*_data())
    with pytest.raises(TypeError, match="AutoDelta"):
        LowRankMatrixNormal.from_guide(guide, "fc")


def test_from_guide_rejects_correlated_guide():
    """A full-covariance guide is not mean-field: reading its marginal scales would silently drop the correlations
    between factor entries, so q_W built from it would be wrong. from_guide documents support for FactorGuide,
    AutoNormal and AutoDiagonalNormal only and must refuse other guides with a TypeError."""
    net = Net()
    guide = AutoMultivariateNormal(net)
    guide(*_data())
    with pytest.raises(TypeError, match="AutoMultivariateNormal"):
        LowRankMatrixNormal.from_guide(guide, "fc")
