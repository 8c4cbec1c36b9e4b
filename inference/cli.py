"""The ``pyro-lowrank`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-lowrank", description="Low-rank Bayesian neural networks for Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="low-rank BNN vs deterministic MLP on scikit-learn's digits (offline)")
    demo.add_argument("--out", default="demo-out", help="output folder for reliability.png and results.json")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=60, help="training epochs for both networks")
    demo.add_argument("--num-samples", type=int, default=100, help="posterior draws for the predictive")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    compare = sub.add_parser("compare", help="every method on the demo dataset (digits 0-7, OOD 8-9): one table")
    compare.add_argument("--methods", default=None,
                         help="comma-separated method names (default: all registered baselines and low-rank)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--epochs", type=int, default=60, help="training epochs of every method")
    compare.add_argument("--num-samples", type=int, default=100, help="predictive draws per method")
    compare.add_argument("--format", choices=["table", "markdown", "json"], default="table")
    compare.add_argument("--out", default=None, help="also write the formatted results to this file")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from .demo import format_table, run_demo

        results = run_demo(args.out, seed=args.seed, num_epochs=args.epochs, num_samples=args.num_samples,
                           progress=not args.quiet)
        print(format_table(results))
        print(f"reliability diagram: {args.out}/reliability.png")
    elif args.command == "compare":
        from .compare import format_results, run_compare

        methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
        results = run_compare(methods, seed=args.seed, num_epochs=args.epochs, num_samples=args.num_samples,
                              progress=not args.quiet)
        text = format_results(results, args.format)
        print(text)
        if args.out:
            from pathlib import Path

            Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
