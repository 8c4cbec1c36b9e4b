"""Side-by-side timing of one training step: a deterministic MLP (torch), and the low-rank BNN through the library's
route (LowRankMLP + FactorGuide + TraceMeanField_ELBO as an ELBOModule, torch Adam) at several ranks.
Medians over interleaved rounds, reported as ratios to the deterministic step.

Usage: ``python benchmarks/svi_step.py [--widths 784 512 512 10] [--batch 128] [--ranks 8 16 32 64]``
"""

from __future__ import annotations

import argparse

import pyro
import torch
import torch.nn.functional as F
from _timing import print_ratios, time_interleaved
from pyro.infer import TraceMeanField_ELBO

import pyro_lowrank  # noqa: F401  (module-local params)
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.models import DeterministicMLP, LowRankMLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[784, 512, 512, 10])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    pyro.set_rng_seed(0)
    *hidden, classes = args.widths[1:]
    x = torch.randn(args.batch, args.widths[0])
    y = torch.randint(0, classes, (args.batch,))
    net = DeterministicMLP(args.widths[0], hidden, classes)
    det_opt = torch.optim.Adam(net.parameters(), 1e-3)

    def det_step():
        det_opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        det_opt.step()

    cases = {"deterministic": det_step}
    for r in args.ranks:
        model = LowRankMLP(args.widths[0], hidden, rank=r, output_rank=min(r, classes), num_classes=classes)
        guide = FactorGuide(model)
        loss_fn = TraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
        loss_fn(x, y, num_data=60000)
        opt = torch.optim.Adam(loss_fn.parameters(), 1e-3)

        def step(loss_fn=loss_fn, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss_fn(x, y, num_data=60000).backward()
            opt.step()

        cases[f"low-rank BNN r={r}"] = step
    times = time_interleaved(cases, args.rounds, args.repeats)
    print_ratios(f"training step, MLP {'-'.join(map(str, args.widths))}, batch {args.batch}, torch threads "
                 f"{torch.get_num_threads()}; ratio to the deterministic step", times, "deterministic")

if __name__ == "__main__":
    main()
