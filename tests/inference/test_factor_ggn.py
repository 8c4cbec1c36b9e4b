"""Matrix-free factor-space GGN against a dense GGN built by autograd, and the gauge directions in its kernel."""

import pytest
import torch

from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.inference.factor_ggn import FactorGGN, gauge_tangent, top_eigenpairs
from pyro_lowrank.models import LowRankMLP


def _setup(likelihood):
    torch.manual_seed(0)
    kwargs = {"num_classes": 3} if likelihood == "categorical" else {"noise_scale": 0.3}
    model = LowRankMLP(4, [6, 5], rank=2, output_rank=1, likelihood=likelihood, **kwargs).double()
    guide = FactorGuide(model)
    x = torch.randn(9, 4, dtype=torch.float64)
    y = torch.randint(3, (9,)) if likelihood == "categorical" else torch.randn(9, dtype=torch.float64)
    guide(x, y)
    values = {name: value.detach() + 0.3 * torch.randn_like(value) for name, value in guide.median().items()}
    ggn = FactorGGN(model, values, x, likelihood=likelihood, **({"noise_scale": 0.3} if likelihood == "gaussian"
                                                                 else {}))
    return model, values, x, ggn


def _dense_reference(ggn):
    flat = torch.cat([t.reshape(-1) for t in ggn.point])

    def outputs(theta):
        return ggn.network(*ggn.unflatten(theta)).reshape(-1)

    jac = torch.autograd.functional.jacobian(outputs, flat)  # (N O, D)
    f = ggn.outputs
    if ggn.likelihood == "gaussian":
        lam = torch.eye(f.numel(), dtype=f.dtype) / ggn.noise_scale**2
    else:
        p = f.softmax(-1)
        lam = torch.block_diag(*[torch.diag(pn) - torch.outer(pn, pn) for pn in p])
    return jac.T @ lam @ jac


@pytest.mark.parametrize("likelihood", ["gaussian", "categorical"])
def test_ggn_vector_products_match_the_dense_ggn(likelihood):
    _, _, _, ggn = _setup(likelihood)
    reference = _dense_reference(ggn)
    v = torch.randn(ggn.num_parameters, dtype=torch.float64)
    torch.testing.assert_close(ggn.matvec(v), reference @ v, rtol=1e-10, atol=1e-10)
    dense = ggn.dense()
    torch.testing.assert_close(dense, reference, rtol=1e-10, atol=1e-10)
    assert float(torch.linalg.eigvalsh(dense).min()) > -1e-9  # symmetric positive semi-definite
    assert float(reference.abs().max()) > 1e-3
    # summed over data chunks (4 + 4 + 1 of the 9 inputs) the product is the same
    chunked = FactorGGN(ggn.model, dict(zip(ggn.names, ggn.point)), ggn.x, likelihood=likelihood,
                        noise_scale=ggn.noise_scale, batch_size=4)
    torch.testing.assert_close(chunked.matvec(v), reference @ v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("likelihood", ["gaussian", "categorical"])
def test_gauge_tangents_are_in_the_kernel(likelihood):
    model, values, _, ggn = _setup(likelihood)
    random = torch.randn(ggn.num_parameters, dtype=torch.float64)
    scale = float(ggn.jvp(random / random.norm()).norm())
    for layer in model.layers:
        a_site, b_site = layer.factor_sites()["weight"]
        r = values[a_site].shape[-1]
        tangent = ggn.flatten(gauge_tangent(values, a_site, b_site, torch.randn(r, r, dtype=torch.float64)))
        assert float(tangent.norm()) > 1e-3
        assert float(ggn.jvp(tangent / tangent.norm()).norm()) / scale < 1e-6
        assert float(ggn.matvec(tangent).norm()) < 1e-8 * float(ggn.matvec(random).norm())


def test_bad_arguments():
    model, values, x, _ = _setup("gaussian")
    with pytest.raises(ValueError, match="likelihood"):
        FactorGGN(model, values, x, likelihood="poisson")
    with pytest.raises(ValueError, match="noise_scale"):
        FactorGGN(model, values, x, noise_scale=0.0)
    partial = dict(values)
    partial.pop(next(iter(partial)))
    with pytest.raises(ValueError, match="missing"):
        FactorGGN(model, partial, x)
    with pytest.raises(ValueError, match="batch_size must be a positive integer or None, got 0"):
        FactorGGN(model, values, x, batch_size=0)
    ggn = FactorGGN(model, values, x)
    with pytest.raises(ValueError, match="shape"):
        ggn.jvp(torch.zeros(3, dtype=torch.float64))
    a_site, b_site = model.layers[0].factor_sites()["weight"]
    with pytest.raises(ValueError, match="generator"):
        gauge_tangent(values, a_site, b_site, torch.zeros(3, 3))


def test_lanczos_top_eigenpairs_match_the_dense_spectrum():
    _, _, _, ggn = _setup("categorical")
    dense_values, dense_vectors = torch.linalg.eigh(ggn.dense())
    values, vectors = top_eigenpairs(ggn, 5)
    torch.testing.assert_close(values, dense_values.flip(0)[:5], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-8)
    top = dense_vectors[:, -5:]
    overlap = torch.linalg.svdvals(vectors.T @ top)  # same subspace: all principal cosines 1
    torch.testing.assert_close(overlap, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        top_eigenpairs(ggn, ggn.num_parameters)
