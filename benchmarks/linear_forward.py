"""Side-by-side timing of the low-rank layer's training forward+backward: factored ``(x B) A^T`` against forming
``W = A B^T`` first, and against a dense ``nn.Linear`` of the same shape. Ratios are measured in one process with
interleaved rounds (medians of ``--rounds`` rounds of ``--repeats`` calls).

Usage: ``python benchmarks/linear_forward.py [--in 784] [--out 512] [--batch 128] [--ranks 8 16 32 64]``
"""

from __future__ import annotations

import argparse

import torch
from _timing import print_ratios, time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="n", type=int, default=784)
    parser.add_argument("--out", dest="m", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.n)
    dense = torch.nn.Linear(args.n, args.m)

    def dense_step():
        dense.zero_grad(set_to_none=True)
        dense(x).sum().backward()

    cases = {"dense nn.Linear": dense_step}
    for r in args.ranks:
        a = (0.1 * torch.randn(args.m, r)).requires_grad_()
        b = (0.1 * torch.randn(args.n, r)).requires_grad_()

        def factored(a=a, b=b):
            ((x @ b) @ a.T).sum().backward()

        def formed(a=a, b=b):
            (x @ (a @ b.T).T).sum().backward()

        cases[f"r={r} factored (x B) A^T"] = factored
        cases[f"r={r} forming W = A B^T"] = formed
    times = time_interleaved(cases, args.rounds, args.repeats)
    print_ratios(f"forward+backward, batch {args.batch}, {args.n}->{args.m}, torch threads {torch.get_num_threads()}; "
                 "ratio to dense nn.Linear", times, "dense nn.Linear")

if __name__ == "__main__":
    main()
