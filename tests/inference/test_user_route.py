"""The acceptance path of a plain Pyro user: LowRankLinear in their own model, AutoNormal, SVI, Predictive."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule

from pyro_lowrank import LowRankLinear, init_to_factors


class UserRegressor(PyroModule):
    def __init__(self):
        super().__init__()
        self.hidden = LowRankLinear(3, 16, rank=2)
        self.out = LowRankLinear(16, 1, rank=1)

    def forward(self, x, y=None):
        f = self.out(torch.tanh(self.hidden(x))).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(f, 0.1), obs=y)


def test_autonormal_svi_and_predictive_on_a_user_model():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(128, 3)
    y = torch.tanh(x @ torch.tensor([1.0, -2.0, 0.5]))
    model = UserRegressor()
    guide = AutoNormal(model, init_loc_fn=init_to_factors(model), init_scale=0.01)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(800)]
    assert sum(losses[-50:]) / 50 < 0.2 * sum(losses[:50]) / 50

    samples = Predictive(model, guide=guide, num_samples=64, parallel=True)(x)
    assert samples["obs"].shape == (64, 128)
    mean = samples["obs"].mean(0)
    assert ((mean - y) ** 2).mean() < 0.2 * y.var()  # beats the constant predictor by far
    # q_W of the hidden layer read from the AutoNormal guide
    q_w = model.hidden.weight_posterior(guide)
    assert q_w.event_shape == (16, 3) and q_w.rank == 2
    assert torch.equal(q_w.a_loc, guide.locs.hidden.A.detach())
