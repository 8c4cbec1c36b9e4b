"""Laplace diffusion: batched GGN products and Lanczos, the one-step moment test, the kernel variant, errors."""

import pytest
import torch

from pyro_lowrank.inference import FactorGGN, SiteLayout
from pyro_lowrank.inference.factor_laplace import FactorLaplace
from pyro_lowrank.inference.laplace_diffusion import batched_ggn_matvec, batched_lanczos, laplace_diffusion
from pyro_lowrank.models import LowRankMLP
from toy_data import latent_site_values


@pytest.fixture
def regression():
    torch.manual_seed(0)
    model = LowRankMLP(2, [6], rank=[2], output_rank=1, likelihood="gaussian", noise_scale=0.3).double()
    x = torch.randn(12, 2, dtype=torch.float64)
    return model, latent_site_values(model, x), x


@pytest.mark.parametrize("likelihood", ["gaussian", "categorical"])
def test_batched_products_equal_each_points_dense_ggn(likelihood):
    torch.manual_seed(2)
    classes = 3 if likelihood == "categorical" else None
    model = LowRankMLP(3, [5], rank=[2], output_rank=classes or 1, likelihood=likelihood, num_classes=classes,
                       noise_scale=0.5).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    values = latent_site_values(model, x)
    layout = SiteLayout(values)
    theta = layout.flatten(values) + 0.3 * torch.randn(3, layout.num_parameters, dtype=torch.float64)
    matvec = batched_ggn_matvec(model, layout, theta, x, likelihood=likelihood, noise_scale=0.5)
    vectors = torch.randn(3, layout.num_parameters, dtype=torch.float64)
    products = matvec(vectors)
    for s in range(3):
        dense = FactorGGN(model, layout.unflatten(theta[s]), x, likelihood=likelihood, noise_scale=0.5).dense()
        torch.testing.assert_close(products[s], dense @ vectors[s], rtol=1e-10, atol=1e-10)


def test_batched_lanczos_finds_the_top_eigenpairs_also_when_the_krylov_space_runs_out():
    torch.manual_seed(0)
    size, k = 30, 4
    basis, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))
    decaying = basis @ torch.diag(0.5 ** torch.arange(size, dtype=torch.float64)) @ basis.T  # a GGN-like spectrum
    low = torch.randn(size, 5, dtype=torch.float64)
    matrices = torch.stack([decaying, low @ low.T])  # the second has rank 5 < the 12 iterations
    values, vectors = batched_lanczos(lambda v: torch.einsum("sij,sj->si", matrices, v),
                                      torch.randn(2, size, dtype=torch.float64), k, 12,
                                      generator=torch.Generator().manual_seed(1))
    for s in range(2):
        exact = torch.linalg.eigvalsh(matrices[s]).flip(0)[:k]
        torch.testing.assert_close(values[s], exact, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(vectors[s].T @ vectors[s], torch.eye(k, dtype=torch.float64), atol=1e-8, rtol=0)
        residual = matrices[s] @ vectors[s] - vectors[s] * values[s]
        assert residual.norm() < 1e-5 * values[s, 0]


@pytest.mark.parametrize(("scale", "dtype"), [(1e-4, torch.float32), (1e-9, torch.float64), (1e4, torch.float64)])
def test_batched_lanczos_does_not_depend_on_the_operators_scale(scale, dtype):
    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64))
    matrix = (scale * basis @ torch.diag(0.7 ** torch.arange(60, dtype=torch.float64)) @ basis.T).to(dtype)
    values, _ = batched_lanczos(lambda v: v @ matrix, torch.randn(1, 60, dtype=dtype), 5, 20)
    exact = torch.linalg.eigvalsh(matrix.double()).flip(0)[:5]
    assert ((values[0].double() - exact).abs() / exact).max() < (1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize(("variant", "complement"), [("image", "none"), ("full", "prior")])
def test_one_step_equals_a_lowrank_laplace_sample_in_distribution(variant, complement):
    """The acceptance moment test: T = 1 diffusion draws and low-rank Laplace draws share mean and covariance.

    With N = 40 inputs the GGN's rank (27) exceeds the m = 14 Lanczos iterations, so the Ritz pairs are approximations."""
    torch.manual_seed(0)
    model = LowRankMLP(2, [10], rank=[2], output_rank=1, likelihood="gaussian", noise_scale=0.3).double()
    x = torch.randn(40, 2, dtype=torch.float64)
    values = latent_site_values(model, x)
    spectrum = torch.linalg.eigvalsh(FactorGGN(model, values, x, noise_scale=0.3).dense())
    assert int((spectrum > 1e-9 * spectrum.max()).sum()) > 14
    k, alpha, num = 4, 2.0, 4000
    paths = laplace_diffusion(model, values, x, noise_scale=0.3, prior_precision=alpha, rank=k, num_steps=1,
                              num_samples=num, variant=variant, chunk_size=num, seed=0)
    laplace = FactorLaplace(model, values, x, noise_scale=0.3, structure="lowrank", rank=k, prior_precision=alpha,
                            complement=complement)
    u = laplace.eigenvectors
    centred = paths.samples - laplace.mean
    # mean: within 5 standard errors in every coordinate
    variance = laplace.posterior_variance()
    assert (centred.mean(0).abs() <= 5 * (variance / num).sqrt() + 1e-12).all()
    # covariance in the top-k eigenbasis: diag(1 / (lambda + alpha)) up to Monte Carlo error
    projected = centred @ u
    empirical = projected.T @ projected / num
    expected = torch.diag(1 / (laplace.eigenvalues + alpha))
    assert (empirical - expected).abs().max() < 0.08 * expected.max()
    # and outside it: nothing (image) or the prior variance 1/alpha (full)
    outside = centred - projected @ u.T
    if complement == "none":
        assert outside.abs().max() < 1e-8
    else:
        per_direction = outside.square().sum(1).mean() / (u.shape[0] - k)
        assert abs(per_direction * alpha - 1) < 0.03
    # the same two moments from the Laplace sampler itself (two-sample check)
    reference = laplace.sample(num, generator=torch.Generator().manual_seed(5)) - laplace.mean
    ratio = centred.var(0) / reference.var(0).clamp_min(1e-30)
    assert ((ratio - 1).abs()[variance > 1e-12] < 0.15).all()


def test_kernel_variant_moves_orthogonally_to_the_image(regression):
    model, values, x = regression
    paths = laplace_diffusion(model, values, x, noise_scale=0.3, prior_precision=1.0, rank=4, num_steps=1,
                              num_samples=20, variant="kernel")
    laplace = FactorLaplace(model, values, x, noise_scale=0.3, structure="lowrank", rank=4)
    moves = paths.samples - paths.start
    assert (moves @ laplace.eigenvectors).abs().max() < 1e-6 * moves.norm(dim=1).max()
    assert moves.norm(dim=1).min() > 0.5  # a prior-sized step in D - 4 directions


def test_several_steps_follow_the_walk_and_are_reproducible(regression):
    model, values, x = regression
    run = lambda seed: laplace_diffusion(model, values, x, noise_scale=0.3, prior_precision=5.0, rank=3,  # noqa: E731
                                         num_steps=3, num_samples=5, chunk_size=2, seed=seed)
    first, again, other = run(0), run(0), run(1)
    torch.testing.assert_close(first.samples, again.samples)
    assert not torch.allclose(first.samples, other.samples)
    assert first.num_products == 5 * 3 * 13  # S paths x T steps x m = max(2k, k + 10) Lanczos products
    assert set(first.as_values()) == set(values)
    one_step = laplace_diffusion(model, values, x, noise_scale=0.3, prior_precision=5.0, rank=3, num_steps=1,
                                 num_samples=5, seed=0)
    assert not torch.allclose(first.samples, one_step.samples)


def test_errors_name_the_argument(regression):
    model, values, x = regression
    with pytest.raises(ValueError, match="variant"):
        laplace_diffusion(model, values, x, variant="sideways")
    with pytest.raises(ValueError, match="rank must be below"):
        laplace_diffusion(model, values, x, rank=1000)
    with pytest.raises(ValueError, match="prior_precision"):
        laplace_diffusion(model, values, x, prior_precision=-1.0)
    with pytest.raises(ValueError, match="num_steps"):
        laplace_diffusion(model, values, x, num_steps=0)
    with pytest.raises(ValueError, match="lanczos_iterations"):
        laplace_diffusion(model, values, x, rank=5, lanczos_iterations=3)
    with pytest.raises(ValueError, match="likelihood"):
        laplace_diffusion(model, values, x, likelihood="Gaussian")
    with pytest.raises(ValueError, match="noise_scale"):
        laplace_diffusion(model, values, x, noise_scale=0.0)
    capped = laplace_diffusion(model, values, x, rank=2, lanczos_iterations=1000, num_samples=2, num_steps=1)
    assert capped.num_products == 2 * capped.start.numel()  # m is capped at D
