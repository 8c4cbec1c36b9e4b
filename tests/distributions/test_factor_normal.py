"""FactorNormal is Normal with fewer operations: the same draws, densities and KL."""

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_lowrank.distributions import FactorNormal, GaussianPrior


def _q(shape=(6, 3)):
    gen = torch.Generator().manual_seed(0)
    return FactorNormal(torch.randn(shape, generator=gen, dtype=torch.float64),
                        torch.rand(shape, generator=gen, dtype=torch.float64) + 0.05)


@pytest.mark.parametrize("prior", ["scalar", "full"])
def test_kl_equals_torchs_normal_normal_kl(prior):
    q = _q()
    if prior == "scalar":  # an i.i.d. factor prior, expanded from one entry: read as scalars
        p = GaussianPrior(1.7, loc=-0.4).double()((6, 3)).base_dist
        assert all(s == 0 for s in p.scale.stride())
    else:
        gen = torch.Generator().manual_seed(1)
        p = dist.Normal(torch.randn(6, 3, generator=gen, dtype=torch.float64),
                        torch.rand(6, 3, generator=gen, dtype=torch.float64) + 0.5)
    expected = kl_divergence(dist.Normal(q.loc, q.scale), p)
    assert torch.allclose(kl_divergence(q, p), expected, atol=1e-12)
    assert torch.allclose(kl_divergence(q.to_event(2), p.to_event(2)), expected.sum(), atol=1e-12)


def test_kl_gradients_equal_torchs():
    q_loc = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    q_scale = (torch.rand(4, 2, dtype=torch.float64) + 0.1).requires_grad_()
    p = dist.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)).expand([4, 2])
    ours = torch.autograd.grad(kl_divergence(FactorNormal(q_loc, q_scale), p).sum(), (q_loc, q_scale))
    theirs = torch.autograd.grad(kl_divergence(dist.Normal(q_loc, q_scale), p).sum(), (q_loc, q_scale))
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-12)


def test_draws_and_densities_equal_normals():
    q = _q()
    reference = dist.Normal(q.loc, q.scale)
    torch.manual_seed(3)
    ours = q.rsample((5,))
    torch.manual_seed(3)
    theirs = reference.rsample((5,))
    assert torch.equal(ours, theirs)
    assert torch.allclose(q.log_prob(ours), reference.log_prob(ours))
    assert isinstance(q.expand((2, 6, 3)), FactorNormal) and q.expand((2, 6, 3)).batch_shape == (2, 6, 3)


def test_broadcasts_like_normal_when_shapes_differ():
    q = FactorNormal(torch.zeros(3), torch.tensor(2.0))
    assert q.batch_shape == (3,) and torch.equal(q.scale, torch.full((3,), 2.0))
    with pytest.raises(ValueError):
        FactorNormal(torch.zeros(3), -torch.ones(3), validate_args=True)
