import pytest
import torch

from pyro_lowrank.models import MCDropoutMLP


def test_dropout_masks_are_independent_per_draw_and_off_in_eval():
    torch.manual_seed(0)
    net = MCDropoutMLP(3, [64], 2, dropout=0.5).eval()
    x = torch.randn(5, 3)
    torch.testing.assert_close(net(x), net(x))  # eval mode: deterministic
    draws = net.sample_outputs(x, 2000)
    assert draws.shape == (2000, 5, 2)
    assert not torch.allclose(draws[0], draws[1])
    # inverted dropout keeps the expectation: the mean over masks equals the no-dropout output (linear last layer)
    torch.testing.assert_close(draws.mean(0), net(x), atol=0.1, rtol=0.1)


def test_bad_dropout_rate():
    with pytest.raises(ValueError, match="dropout must lie in \\(0, 1\\), got 1.0"):
        MCDropoutMLP(3, [4], 2, dropout=1.0)
