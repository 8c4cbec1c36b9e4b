"""The GGN kernel summary and the kernel share of the Laplace posterior variance."""

import pytest
import torch

from pyro_lowrank.inference import FactorGGN
from pyro_lowrank.inference.ggn_kernel import ggn_kernel_summary, kernel_variance_share
from pyro_lowrank.models import LowRankMLP
from toy_data import latent_site_values


@pytest.mark.parametrize(("num_data", "likelihood"), [(4, "gaussian"), (40, "gaussian"), (5, "categorical")])
def test_summary_counts_agree_with_the_dense_ggn(num_data, likelihood):
    torch.manual_seed(0)
    classes = 3 if likelihood == "categorical" else None
    model = LowRankMLP(3, [6, 5], rank=[2, 3], output_rank=classes or 1, likelihood=likelihood,
                       num_classes=classes).double()
    x = torch.randn(num_data, 3, dtype=torch.float64)
    values = latent_site_values(model, x)
    summary = ggn_kernel_summary(model, values, x, likelihood=likelihood)
    dense = FactorGGN(model, values, x, likelihood=likelihood).dense()
    spectrum = torch.linalg.eigvalsh(dense).flip(0)
    assert summary.ggn_rank == int((spectrum > 1e-9 * spectrum[0]).sum())
    torch.testing.assert_close(summary.eigenvalues, spectrum.clamp_min(0), atol=1e-9 * float(spectrum[0]), rtol=1e-7)
    outputs = num_data * (classes or 1)
    assert summary.num_outputs == outputs and summary.num_parameters == dense.shape[0]
    assert summary.kernel_dim == summary.num_parameters - summary.ggn_rank >= summary.dimension_bound
    assert summary.gauge_dim == 2 * 2 + 3 * 3 + (classes or 1) ** 2  # r^2 per factorised layer
    assert summary.gauge_ratio < 1e-6
    if likelihood == "categorical":  # softmax is shift-invariant: each datum contributes at most C - 1 directions
        assert summary.ggn_rank <= num_data * (classes - 1)


def test_kernel_share_closed_form_and_limits():
    eigenvalues = torch.tensor([9.0, 4.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    share = kernel_variance_share(eigenvalues, [1.0])
    expected = (2 / 1.0) / (1 / 10 + 1 / 5 + 1 / 2 + 2 / 1.0)
    torch.testing.assert_close(share, torch.tensor([expected], dtype=torch.float64))
    alphas = torch.logspace(-6, 6, 25)
    curve = kernel_variance_share(eigenvalues, alphas)
    assert (curve.diff() < 0).all()  # more prior precision, less of the variance in the kernel
    assert curve[0] > 0.999 and abs(float(curve[-1]) - 2 / 5) < 1e-5  # tends to dim ker / D as alpha grows
    assert float(kernel_variance_share(eigenvalues, [1.0], kernel_dim=0)) == 0.0
    with pytest.raises(ValueError, match="prior_precisions"):
        kernel_variance_share(eigenvalues, [0.0, 1.0])
