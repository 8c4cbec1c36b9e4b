"""The ``pyro-lowrank`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]


def _add_run_options(parser: argparse.ArgumentParser, *, root: bool = False) -> None:
    """The options every training subcommand shares: ``--device``, ``--quiet`` and, for the data-set ones, ``--root``."""
    if root:
        parser.add_argument("--root", default=None,
                            help="data root (default: $PYRO_LOWRANK_DATA, else the user cache folder)")
    parser.add_argument("--device", default="cpu", help="torch device for data and networks (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-lowrank", description="Low-rank Bayesian neural networks for Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="low-rank BNN vs deterministic MLP on scikit-learn's digits (offline)")
    demo.add_argument("--out", default="demo-out", help="output folder for reliability.png and results.json")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=60, help="training epochs for both networks")
    demo.add_argument("--num-samples", type=int, default=100, help="posterior draws for the predictive")
    _add_run_options(demo)
    compare = sub.add_parser("compare", help="every method on the demo dataset (digits 0-7, OOD 8-9): one table")
    compare.add_argument("--methods", default=None,
                         help="comma-separated method names (default: all registered baselines and low-rank)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--epochs", type=int, default=60, help="training epochs of every method")
    compare.add_argument("--num-samples", type=int, default=100, help="predictive draws per method")
    compare.add_argument("--format", choices=["table", "markdown", "json"], default="table")
    compare.add_argument("--out", default=None, help="also write the formatted results to this file")
    _add_run_options(compare)
    bench = sub.add_parser(
        "bench", help="time training steps and predictive passes of every route side by side (ratios to the "
                      "deterministic MLP), Transformer memory and scaling curves; writes bench.json, bench.md, "
                      "scaling.png")
    bench.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round: checks every path in seconds")
    bench.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    bench.add_argument("--out", default="bench-out", help="output folder (default: bench-out)")
    bench.add_argument("--ranks", type=int, nargs="+", default=None, help="ranks of the low-rank cases (8 16 32 64)")
    bench.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the training table (7)")
    bench.add_argument("--repeats", type=int, default=None, help="steps per round (10)")
    bench.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    bench.add_argument("--no-scaling", action="store_true", help="skip the width-scaling curves")
    bench.add_argument("--no-memory", action="store_true", help="skip the Transformer memory comparison")
    experiment = sub.add_parser(
        "experiment", help="a paper experiment with every compared method: heart (population shift), pm25 (LSTM, "
                           "city shift), sst2 (Transformer, AG News OOD) or uci (regression benchmark); writes "
                           "results.json, results.md and figures")
    experiment.add_argument("name", choices=["heart", "pm25", "sst2", "uci"], help="which experiment")
    experiment.add_argument("--smoke", action="store_true",
                            help="tiny run: 1 seed, 2 epochs (sst2: 1), 8 draws, 2 UCI splits of the first 2 "
                                 "datasets, every 50th PM2.5 training window and 20th evaluation window, a 1-layer "
                                 "d=32 Transformer on 600 SST-2 "
                                 "sentences (explicit options still win)")
    experiment.add_argument("--seeds", type=int, nargs="+", default=None,
                            help="training seeds (default: heart 0 1 2 3 4, pm25 0 1 2, sst2 0, uci 0)")
    experiment.add_argument("--data-seed", type=int, default=None,
                            help="heart: one fixed train/val/test split for every seed (default: each seed draws "
                                 "its own split)")
    experiment.add_argument("--methods", default=None, help="comma-separated method names (default: all ten)")
    experiment.add_argument("--epochs", type=int, default=None,
                            help="training epochs of every method (default: heart 256, pm25 15, sst2 3, uci the "
                                 "published n_epochs)")
    experiment.add_argument("--num-samples", type=int, default=None,
                            help="predictive draws per evaluation set (default: heart 512, pm25 150, sst2 200, uci 100)")
    experiment.add_argument("--datasets", default=None, help="uci: comma-separated dataset names (default: all)")
    experiment.add_argument("--splits", type=int, default=None, help="uci: use the first K splits (default: all)")
    experiment.add_argument("--train-stride", type=int, default=None,
                            help="pm25: keep every k-th training window (default 4)")
    experiment.add_argument("--eval-stride", type=int, default=None,
                            help="pm25: keep every k-th validation/test/target window (default 4)")
    experiment.add_argument("--train-size", type=int, default=None,
                            help="sst2: a random subset of this many training sentences (default: all)")
    experiment.add_argument("--val-size", type=int, default=None,
                            help="sst2: training sentences held out for early stopping (default 2000)")
    experiment.add_argument("--ood-size", type=int, default=None,
                            help="sst2: a random subset of this many AG News items (default: all 7600)")
    for size in ("d-model", "num-layers", "num-heads", "dim-feedforward"):
        experiment.add_argument(f"--{size}", type=int, default=None,
                                help=f"sst2: encoder {size.replace('-', '_')} (default: the paper's)")
    experiment.add_argument("--out", default=None, help="output folder (default: experiment-<name>)")
    _add_run_options(experiment, root=True)
    bayeslora = sub.add_parser(
        "bayeslora-sst2", help="BayesLoRA (LRVD guide, rank pruning) against plain LoRA of the same rank on the "
                               "attention projections of the bundled MiniLM, fine-tuned on SST-2 (needs the "
                               "bayeslora extra); writes results.json, results.md, reliability.png")
    bayeslora.add_argument("--smoke", action="store_true",
                           help="48 training phrases, 32 dev sentences, 1 epoch, 2 draws (explicit options still win)")
    bayeslora.add_argument("--seed", type=int, default=0, help="seed of the subset, the initialisation and the batches")
    bayeslora.add_argument("--train-size", type=int, default=None,
                           help="random subset of SST-2 training phrases (default 8000)")
    bayeslora.add_argument("--eval-size", type=int, default=None,
                           help="first K dev sentences (default: all 872)")
    bayeslora.add_argument("--epochs", type=int, default=None, help="training epochs of both methods (default 2)")
    bayeslora.add_argument("--num-samples", type=int, default=None, help="BayesLoRA posterior draws (default 16)")
    bayeslora.add_argument("--rank", type=int, default=None, help="adapter rank of both methods (default 8)")
    bayeslora.add_argument("--prune-tau", type=float, default=None, help="log-alpha pruning threshold (default 3)")
    bayeslora.add_argument("--out", default="bayeslora-sst2-out", help="output folder (default: bayeslora-sst2-out)")
    _add_run_options(bayeslora, root=True)
    ranksel = sub.add_parser(
        "rank-selection", help="rank selection from scratch with low-rank variational dropout on the digits MLP "
                               "(LRVD guide, log-uniform prior) against the singular spectra of a deterministic "
                               "twin; writes results.json, results.md and figures")
    ranksel.add_argument("--smoke", action="store_true",
                         help="a 64-24-24-10 network on 300 images for 6 epochs (explicit options still win)")
    ranksel.add_argument("--seed", type=int, nargs="+", default=[0], help="seed(s) of the split, init and batches")
    ranksel.add_argument("--epochs", type=int, default=None, help="LRVD training epochs (default 150)")
    ranksel.add_argument("--rank", type=int, default=None, help="starting rank of the hidden layers (default 32)")
    ranksel.add_argument("--prune-tau", type=float, default=None, help="log-alpha threshold (default 3)")
    ranksel.add_argument("--prune-score", choices=("median", "norm"), default=None,
                         help="rank score of the pruned run: BayesLoRA's medians or root-mean-square entries "
                              "(default norm)")
    ranksel.add_argument("--num-samples", type=int, default=None, help="posterior draws for the test metrics (100)")
    ranksel.add_argument("--out", default="rank-selection-out", help="output folder (default: rank-selection-out)")
    ranksel.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    _add_run_options(ranksel)
    weight = sub.add_parser(
        "weight-space", help="weight-space posteriors around the MAP (sampled and linearised factor Laplace, Laplace "
                             "diffusion, fiber walking) against the low-rank VI posterior on a 1-D regression with a "
                             "gap and UCI datasets, the GGN kernel study and sampled-vs-linearised Laplace "
                             "under-fitting; writes results.json, results.md and figures")
    weight.add_argument("--smoke", action="store_true",
                        help="tiny run: 1 split of the 1-D task and yacht, 2 UCI / 8 1-D epochs, 8 draws, cheap "
                             "geometry settings (explicit options still win)")
    weight.add_argument("--methods", default=None,
                        help="comma-separated method names (default: laplace_factor, laplace_factor_glm, "
                             "laplace_diffusion, fiber_walk, lowrank)")
    weight.add_argument("--datasets", default=None,
                        help="comma-separated UCI datasets (default: yacht,energy); 'none' runs the 1-D task alone")
    weight.add_argument("--splits", type=int, default=None,
                        help="the first K splits of every task (default 3; the 1-D task's split k is data seed k)")
    weight.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0)")
    weight.add_argument("--epochs", type=int, default=None, help="UCI training epochs (default: the published 40)")
    weight.add_argument("--toy-epochs", type=int, default=None, help="1-D task training epochs (default 500)")
    weight.add_argument("--num-samples", type=int, default=None, help="predictive draws per evaluation (default 100)")
    weight.add_argument("--study-samples", type=int, default=None,
                        help="Laplace draws of the under-fitting study (default 100)")
    weight.add_argument("--out", default="weight-space-out", help="output folder (default: weight-space-out)")
    weight.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    _add_run_options(weight, root=True)
    return parser


def _experiment_kwargs(args: argparse.Namespace) -> dict:
    """Runner keyword arguments from the parsed ``experiment`` options (``--smoke`` fills the unset ones);
    raises ``ValueError`` for invalid values before anything runs."""
    from pyro_lowrank._validation import check_positive_int

    from .experiments.heart import DEFAULT_METHODS, HEART_DEFAULTS
    from .experiments.runner import check_seeds, resolve_methods
    from .experiments.uci import UCI_DEFAULTS, resolve_datasets

    from .experiments.pm25 import PM25_DEFAULTS
    from .experiments.sst2 import SST2_DEFAULTS

    smoke = args.smoke
    default_seeds = {"heart": HEART_DEFAULTS, "pm25": PM25_DEFAULTS, "sst2": SST2_DEFAULTS, "uci": UCI_DEFAULTS}
    seeds = args.seeds if args.seeds is not None else ([0] if smoke else list(default_seeds[args.name]["seeds"]))
    kwargs: dict = {"methods": resolve_methods(args.methods, DEFAULT_METHODS), "seeds": check_seeds(seeds),
                    "root": args.root, "device": args.device, "progress": not args.quiet}
    epochs = args.epochs if args.epochs is not None else ((1 if args.name == "sst2" else 2) if smoke else None)
    samples = args.num_samples if args.num_samples is not None else (8 if smoke else None)
    if epochs is not None:
        kwargs["num_epochs"] = check_positive_int(epochs, "--epochs")
    if samples is not None:
        kwargs["num_samples"] = check_positive_int(samples, "--num-samples")
    if args.name == "uci":
        datasets = resolve_datasets(args.datasets)
        kwargs["datasets"] = datasets[:2] if smoke and args.datasets is None else datasets
        splits = args.splits if args.splits is not None else (2 if smoke else None)
        kwargs["splits"] = None if splits is None else check_positive_int(splits, "--splits")
    elif args.datasets is not None or args.splits is not None:
        raise ValueError(f"--datasets and --splits apply to the uci experiment only, got them with {args.name!r}")
    owned = {"pm25": ("train_stride", "eval_stride"),
             "sst2": ("train_size", "val_size", "ood_size", "d_model", "num_layers", "num_heads", "dim_feedforward")}
    for name, options in owned.items():
        given = [o for o in options if getattr(args, o) is not None]
        if given and args.name != name:
            raise ValueError(f"{', '.join('--' + o.replace('_', '-') for o in given)} apply to the {name} experiment "
                             f"only, got them with {args.name!r}")
    if args.name == "pm25":
        for option, smoke_value in (("train_stride", 50), ("eval_stride", 20)):
            value = getattr(args, option) if getattr(args, option) is not None else (smoke_value if smoke else None)
            if value is not None:
                kwargs[option] = check_positive_int(value, "--" + option.replace("_", "-"))
    if args.name == "sst2":
        smoke_values = {"train_size": 600, "val_size": 200, "ood_size": 200}
        for option in ("train_size", "val_size", "ood_size"):
            value = getattr(args, option) if getattr(args, option) is not None else (
                smoke_values[option] if smoke else None)
            if value is not None:
                kwargs[option] = (check_positive_int(value, "--" + option.replace("_", "-"))
                                  if option != "val_size" or value != 0 else 0)
        smoke_sizes = {"d_model": 32, "num_layers": 1, "num_heads": 2, "dim_feedforward": 64}
        sizes = {k: getattr(args, k) if getattr(args, k) is not None else (smoke_sizes[k] if smoke else None)
                 for k in smoke_sizes}
        kwargs["sizes"] = {k: check_positive_int(v, "--" + k.replace("_", "-")) for k, v in sizes.items()
                           if v is not None}
    if args.data_seed is not None:
        if args.name != "heart":
            raise ValueError(f"--data-seed applies to the heart experiment only, got it with {args.name!r}")
        if args.data_seed < 0:
            raise ValueError(f"--data-seed must be a non-negative integer, got {args.data_seed}")
        kwargs["data_seed"] = args.data_seed
    return kwargs


def _check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Exit with a usage error unless ``device`` names a torch device that exists here."""
    import torch

    try:
        torch.empty(1, device=torch.device(device))
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {device!r} is not usable here: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from .demo import format_table, run_demo

        _check_device(parser, args.device)
        results = run_demo(args.out, seed=args.seed, num_epochs=args.epochs, num_samples=args.num_samples,
                           progress=not args.quiet, device=args.device)
        print(format_table(results))
        print(f"reliability diagram: {args.out}/reliability.png")
    elif args.command == "compare":
        from .compare import format_results, run_compare

        methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
        _check_device(parser, args.device)
        results = run_compare(methods, seed=args.seed, num_epochs=args.epochs, num_samples=args.num_samples,
                              progress=not args.quiet, device=args.device)
        text = format_results(results, args.format)
        print(text)
        if args.out:
            from pathlib import Path

            Path(args.out).write_text(text + "\n")
    elif args.command == "bench":
        import dataclasses

        import torch

        from .bench import SMOKE, BenchConfig, format_markdown, run_bench, write_bench

        _check_device(parser, args.device)
        if args.threads is not None:
            if args.threads < 1:
                parser.error(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        overrides = dict(SMOKE) if args.smoke else {}
        for option in ("ranks", "rounds", "repeats"):
            value = getattr(args, option)
            if value is not None:
                values = value if isinstance(value, list) else [value]
                if any(v < 1 for v in values):
                    parser.error(f"--{option} must be >= 1, got {value}")
                overrides[option] = tuple(value) if isinstance(value, list) else value
        config = dataclasses.replace(BenchConfig(device=args.device, scaling=not args.no_scaling,
                                                 memory=not args.no_memory), **overrides)
        result = run_bench(config)
        paths = write_bench(result, args.out)
        print(format_markdown(result))
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    elif args.command == "bayeslora-sst2":
        import shlex

        from .experiments.bayeslora_sst2 import format_markdown as format_bayeslora, run_bayeslora_sst2, \
            write_bayeslora_report

        _check_device(parser, args.device)
        overrides = {"train_size": args.train_size, "eval_size": args.eval_size, "num_epochs": args.epochs,
                     "num_samples": args.num_samples, "rank": args.rank, "prune_tau": args.prune_tau}
        for option in ("train_size", "eval_size", "num_epochs", "num_samples", "rank"):
            if overrides[option] is not None and overrides[option] < 1:
                parser.error(f"--{option.replace('_', '-').replace('num-epochs', 'epochs')} must be >= 1, got "
                             f"{overrides[option]}")
        try:
            result = run_bayeslora_sst2(smoke=args.smoke, seed=args.seed, device=args.device, root=args.root,
                                        progress=not args.quiet, **overrides)
        except ImportError as err:
            if "pyro-lowrank[bayeslora]" not in str(err):
                raise
            parser.error(str(err))
        command = "pyro-lowrank " + shlex.join(sys.argv[1:] if argv is None else argv)
        paths = write_bayeslora_report(result, args.out, command=command, device=args.device)
        print(format_bayeslora(result))
        print(f"wrote {', '.join(str(p) for p in paths.values())} ({result['metadata']['wall_seconds']:.1f} s)")
    elif args.command == "rank-selection":
        import shlex

        from .experiments.rank_selection import format_markdown as format_ranks, run_rank_selection, \
            write_rank_selection_report

        _check_device(parser, args.device)
        for option in ("epochs", "rank", "num_samples", "threads"):
            value = getattr(args, option)
            if value is not None and value < 1:
                parser.error(f"--{option.replace('_', '-')} must be >= 1, got {value}")
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        try:
            result = run_rank_selection(smoke=args.smoke, seeds=args.seed, device=args.device,
                                        progress=not args.quiet, num_epochs=args.epochs, rank=args.rank,
                                        prune_tau=args.prune_tau, prune_score=args.prune_score,
                                        num_samples=args.num_samples)
        except ValueError as err:
            parser.error(str(err))
        command = "pyro-lowrank " + shlex.join(sys.argv[1:] if argv is None else argv)
        paths = write_rank_selection_report(result, args.out, command=command, device=args.device)
        print(format_ranks(result))
        print(f"wrote {', '.join(str(p) for p in paths.values())} ({result['metadata']['wall_seconds']:.1f} s)")
    elif args.command == "weight-space":
        import shlex

        import torch

        from .experiments.weight_space import format_markdown as format_weight_space, run_weight_space, \
            weight_space_settings, write_weight_space_report

        _check_device(parser, args.device)
        for option in ("splits", "epochs", "toy_epochs", "num_samples", "study_samples", "threads"):
            value = getattr(args, option)
            if value is not None and value < 1:
                parser.error(f"--{option.replace('_', '-')} must be >= 1, got {value}")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        datasets = [] if args.datasets is not None and args.datasets.strip().lower() == "none" else args.datasets
        options = {"splits": args.splits, "seeds": args.seeds, "num_samples": args.num_samples,
                   "num_epochs": args.epochs, "smoke": args.smoke, "toy_epochs": args.toy_epochs,
                   "study_num_samples": args.study_samples}
        try:
            weight_space_settings(datasets, args.methods, **options)  # every option checked before anything runs
        except ValueError as err:
            parser.error(str(err))
        os.makedirs(args.out, exist_ok=True)
        journal = os.path.join(args.out, "rows.jsonl")  # every finished run, written as it finishes
        if os.path.exists(journal):
            os.replace(journal, journal + ".previous")
        result = run_weight_space(datasets, args.methods, root=args.root, device=args.device,
                                  progress=not args.quiet, journal=journal, **options)
        command = "pyro-lowrank " + shlex.join(sys.argv[1:] if argv is None else argv)
        paths = write_weight_space_report(result, args.out, command=command, device=args.device)
        print(format_weight_space(result))
        print(f"wrote {', '.join(str(p) for p in paths.values())} ({result.metadata['wall_seconds']:.1f} s)")
        if result.table.failures:
            print(f"{len(result.table.failures)} run(s) failed; see {paths['json']}", file=sys.stderr)
            return 1
    elif args.command == "experiment":
        import shlex
        import time

        import torch

        from .experiments import run_experiment, write_report
        from .experiments.report import format_markdown

        try:
            kwargs = _experiment_kwargs(args)
            torch.empty(1, device=torch.device(args.device))  # the device must exist here, not only parse
        except (ValueError, RuntimeError, AssertionError) as err:
            parser.error(str(err))
        start = time.perf_counter()
        out = args.out or f"experiment-{args.name}"
        os.makedirs(out, exist_ok=True)
        journal = os.path.join(out, "rows.jsonl")  # every finished run, written as it finishes
        if os.path.exists(journal):
            os.replace(journal, journal + ".previous")
        result = run_experiment(args.name, **kwargs, journal=journal)
        command = "pyro-lowrank " + shlex.join(sys.argv[1:] if argv is None else argv)
        paths = write_report(result, out, command=command, device=args.device)
        print(format_markdown(result))
        print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - start:.1f} s)")
        if result.failures:
            print(f"{len(result.failures)} run(s) failed; see {paths['json']}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
