"""Data-parallel SVI (``fit(distributed=True)``): two CPU processes on the gloo backend.

The module-scoped fixture launches this file twice as a script (``python test_distributed.py OUT``) with torchrun's
environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so ``init_distributed`` is exercised
as under ``torchrun``. Each rank runs every scenario in ``_worker`` and saves a report; the tests compare the reports
with each other and with one-process runs in this process. Both subprocesses are killed after ``_TIMEOUT_S`` seconds
and the collectives time out after ``_COLLECTIVE_TIMEOUT_S``, so a deadlock fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
from pyro.nn import PyroModule, PyroParam

import pyro_lowrank  # noqa: F401
from pyro_lowrank import TrainingDivergedError
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.inference import fit, load_checkpoint
from pyro_lowrank.inference.distributed import get_rank, init_distributed, shard_positions, shutdown_distributed
from pyro_lowrank.models import LowRankMLP

WORLD = 2
_TIMEOUT_S = 120
_COLLECTIVE_TIMEOUT_S = 60

# The classification run compared between one and two processes: 8 steps per epoch, 320 steps in all.
MAIN = dict(num_epochs=40, batch_size=128, lr=1e-2, seed=0, val_num_samples=64, progress=False)
# Relative tolerance on the validation NLL. Measured over seeds 0-7, the final validation NLL of this run is
# 0.179 +- 0.003 (sd over seeds) with one process and 0.179 +- 0.003 with two; the same-seed difference
# (two - one process) is -0.0003 +- 0.0026 (max |diff| 0.0046, 2.5 %). 5 % (~0.009) is ~3.4 sd of that difference.
VAL_NLL_RTOL = 0.05
# Relative tolerance on the final per-point negative ELBO. Two processes average two independent draws of theta per
# step (like num_particles=2 on half-batches), so their lower-variance gradients reach a slightly better ELBO:
# same-seed difference -0.008 +- 0.006 (max 5 %; one process with num_particles=2 shows -0.013 +- 0.012). A wrong
# likelihood scale (num_data = N / W on each rank) would change it by ~50 %.
TRAIN_LOSS_RTOL = 0.1
SCALING = dict(num_epochs=10, batch_size=16, lr=0.05, seed=3, progress=False)  # 64 rows: 4 steps per epoch
SMALL = dict(batch_size=32, lr=1e-2, seed=5, progress=False)  # 128 rows: 4 steps per epoch


# ------------------------------------------------------------------------------------------------ data and models
def _blobs(n, seed, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.5]])
    return centres[y] + spread * torch.randn(n, 2, generator=gen), y


def _main_data():
    return _blobs(1024, seed=1), _blobs(512, seed=2)


def _model():
    return LowRankMLP(2, [16], rank=2, output_rank=2, likelihood="categorical", num_classes=3)


def _linear_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=gen)
    return x, x @ torch.tensor([1.0, -2.0]) + 0.5 + 0.3 * torch.randn(64, generator=gen)


class _Linear(PyroModule):
    """y ~ N(x w + b, 0.5^2) with point-estimated w, b and no latent sites: the loss has no Monte Carlo noise."""

    def __init__(self):
        super().__init__()
        self.w = PyroParam(torch.zeros(2))
        self.b = PyroParam(torch.tensor(0.0))

    def forward(self, x, y=None, num_data=None):
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("obs", dist.Normal(x @ self.w + self.b, 0.5), obs=y)


class _FailsOnRank1(_Linear):
    """Like ``_Linear``, but on rank 1 only, from the 7th call on, the log-likelihood overflows to -inf
    (``failure="inf"``) or the forward raises a RuntimeError (``failure="raise"``)."""

    def __init__(self, failure: str):
        super().__init__()
        self.failure = failure
        self.calls = 0

    def forward(self, x, y=None, num_data=None):
        self.calls += 1
        failing = self.calls > 6 and get_rank() == 1
        if failing and self.failure == "raise":
            raise RuntimeError("a bug on rank 1")
        scale = 1e30 if failing else 1.0
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("obs", dist.Normal(scale * (x @ self.w + self.b), 0.5), obs=y)


def _no_latents():
    guide = PyroModule()
    guide.forward = lambda *args, **kwargs: None
    return guide


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -------------------------------------------------------------------------------------- the two-process worker
def _worker(out: Path) -> None:
    """Every scenario, on one rank; the report is saved to ``out / rank{r}.pt``."""
    torch.set_num_threads(1)
    init_distributed("gloo", timeout_s=_COLLECTIVE_TIMEOUT_S)
    rank = get_rank()
    report = {}
    (x, y), val = _main_data()

    model = _model()
    try:
        fit(model, FactorGuide(model), (x, y), num_epochs=1, batch_size=1, distributed=True, progress=False)
    except ValueError as error:
        report["small_batch_error"] = str(error)
    try:
        fit(model, FactorGuide(model), (x, y), num_epochs=1, batch_size=5, distributed=True, progress=False)
    except ValueError as error:
        report["uneven_batch_error"] = str(error)

    # identical parameters after every optimiser step: a post-step hook all-gathers them and compares bit for bit
    equal_after_step = []

    def adam_checked(params):
        opt = torch.optim.Adam(params, lr=MAIN["lr"])

        def compare(optimizer, args, kwargs):
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            gathered = [torch.empty_like(flat) for _ in range(WORLD)]
            torch.distributed.all_gather(gathered, flat)
            equal_after_step.append(all(torch.equal(g, gathered[0]) for g in gathered))

        opt.register_step_post_hook(compare)
        return opt

    pyro.set_rng_seed(0)
    model = _model()
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), val_data=val, optimizer=adam_checked, checkpoint_path=out / "ddp.pt",
                 distributed=True, **MAIN)
    report["main"] = {"result": asdict(result), "equal_after_step": equal_after_step, "state": _state(guide)}

    model = _Linear()
    result = fit(model, _no_latents(), _linear_data(), distributed=True, **SCALING)
    report["scaling"] = {"result": asdict(result), "state": _state(model)}

    model = _model()  # resume the one-process checkpoint written by the fixture, and train on
    guide = FactorGuide(model)
    result = fit(model, guide, _blobs(128, seed=7), num_epochs=4, checkpoint_path=out / "one.pt", resume=True,
                 distributed=True, **SMALL)
    report["resume"] = {"result": asdict(result), "state": _state(guide)}

    model = _FailsOnRank1("inf")
    xl, yl = _linear_data()
    try:
        fit(model, _no_latents(), (xl[:16], yl[:16]), num_epochs=10, batch_size=8, lr=0.1, distributed=True,
            progress=False)
    except TrainingDivergedError as error:
        report["diverged"] = {"step": error.step, "epoch": error.epoch, "message": str(error), "state": _state(model)}

    model = _FailsOnRank1("raise")
    try:
        fit(model, _no_latents(), (xl[:16], yl[:16]), num_epochs=10, batch_size=8, lr=0.1, distributed=True,
            progress=False)
    except Exception as error:  # noqa: BLE001 - the test records which error each rank raised
        report["raised"] = {"type": type(error).__name__, "message": str(error)}

    torch.save(report, out / f"rank{rank}.pt")
    shutdown_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out: Path) -> list[dict]:
    port = _free_port()
    procs, logs = [], []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        logs.append(open(out / f"rank{rank}.log", "w"))
        procs.append(subprocess.Popen([sys.executable, __file__, str(out)], env=env, stdout=logs[-1],
                                      stderr=subprocess.STDOUT))
    deadline = time.monotonic() + _TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        pytest.fail(f"the two-process run did not finish within {_TIMEOUT_S} s (deadlock?); logs in {out}")
    finally:
        for log in logs:
            log.close()
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {rank} failed:\n{(out / f'rank{rank}.log').read_text()[-4000:]}"
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Write the one-process checkpoint that the workers resume, launch them, and return (out, reports, one)."""
    out = tmp_path_factory.mktemp("ddp")
    pyro.set_rng_seed(0)
    model = _model()
    one = fit(model, FactorGuide(model), _blobs(128, seed=7), num_epochs=2, checkpoint_path=out / "one.pt", **SMALL)
    return out, _launch(out), one


# --------------------------------------------------------------------------------------------------------- tests
def test_distributed_without_a_process_group_is_refused():
    assert not torch.distributed.is_initialized()
    x, y = _blobs(20, seed=0)
    model = _model()
    with pytest.raises(RuntimeError, match=r"fit\(distributed=True\) needs an initialised torch.distributed"):
        fit(model, FactorGuide(model), (x, y), distributed=True, progress=False)


def test_init_distributed_names_the_missing_environment_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set"):
        init_distributed("gloo")
    with pytest.raises(ValueError, match="backend must be 'gloo', 'nccl' or None"):
        init_distributed("mpi")


def test_shards_are_the_distributed_sampler_split_of_the_permutation():
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    shards = [perm[shard_positions(11, rank, 2)] for rank in range(2)]
    assert [len(s) for s in shards] == [6, 6]  # ceil(11 / 2), padded by wrapping round
    assert torch.equal(torch.stack(shards, 1).reshape(-1)[:11], perm)  # interleaved, they give back the permutation


def test_batch_size_below_world_size_is_refused(run):
    _, reports, _ = run
    for report in reports:
        assert report["small_batch_error"] == (
            "batch_size is the global minibatch size, split over the processes, so with distributed=True it must be "
            ">= world_size; got batch_size=1 with world_size=2")
        assert report["uneven_batch_error"].endswith("must be a multiple of world_size; got batch_size=5 with "
                                                     "world_size=2")


def test_parameters_are_identical_on_every_rank_after_every_step(run):
    _, reports, _ = run
    steps = MAIN["num_epochs"] * math.ceil(1024 / MAIN["batch_size"])
    for report in reports:
        assert report["main"]["result"]["steps"] == steps  # as many steps per epoch as one process takes
        assert report["main"]["equal_after_step"] == [True] * steps
    for key, value in reports[0]["main"]["state"].items():
        assert torch.equal(reports[1]["main"]["state"][key], value), key


def test_elbo_decreases_and_every_rank_reports_the_same_numbers(run):
    _, reports, _ = run
    result = reports[0]["main"]["result"]
    loss = result["train_loss"]
    assert sum(loss[-5:]) / 5 < 0.5 * sum(loss[:5]) / 5 and loss[-1] < loss[0]
    for key in ("train_loss", "val_nll", "best_epoch"):  # all-reduced loss, all-reduced sharded validation NLL
        assert reports[1]["main"]["result"][key] == result[key], key


def test_one_and_two_processes_reach_the_same_validation_nll(run):
    """Same data, seed, initial state and global minibatches; different noise on rank 1, so the agreement is
    statistical (see VAL_NLL_RTOL and TRAIN_LOSS_RTOL for the measured spread)."""
    _, reports, _ = run
    (x, y), val = _main_data()
    pyro.set_rng_seed(0)
    model = _model()
    single = fit(model, FactorGuide(model), (x, y), val_data=val, **MAIN)
    double = reports[0]["main"]["result"]
    assert double["val_nll"][-1] == pytest.approx(single.val_nll[-1], rel=VAL_NLL_RTOL)
    assert double["best_val_nll"] == pytest.approx(single.best_val_nll, rel=VAL_NLL_RTOL)
    assert double["train_loss"][-1] == pytest.approx(single.train_loss[-1], rel=TRAIN_LOSS_RTOL)


def test_likelihood_scaling_reproduces_the_one_process_run_without_noise(run):
    """No latent sites, so no Monte Carlo noise: mean over ranks of (N/b) sum_{B^r} equals (N/B) sum_B exactly."""
    _, reports, _ = run
    model = _Linear()
    single = fit(model, _no_latents(), _linear_data(), **SCALING)
    double = reports[0]["scaling"]
    assert double["result"]["train_loss"] == pytest.approx(single.train_loss, rel=1e-5)
    for key, value in _state(model).items():
        torch.testing.assert_close(double["state"][key], value, rtol=1e-5, atol=1e-5)


def test_checkpoint_of_two_process_run_resumes_in_one_process(run):
    out, reports, _ = run
    state = load_checkpoint(out / "ddp.pt")
    assert state["world_size"] == WORLD and len(state["rank_rng"]) == WORLD
    assert not any(key.startswith("module.") for key in state["loss_module"])  # the unwrapped module's state
    (x, y), val = _main_data()
    epochs, double = MAIN["num_epochs"], reports[0]["main"]
    shutil.copy(out / "ddp.pt", out / "resume.pt")
    kwargs = {**MAIN, "checkpoint_path": out / "resume.pt", "resume": True}

    model = _model()
    guide = FactorGuide(model)
    finished = fit(model, guide, (x, y), val_data=val, **kwargs)  # nothing left to train: the restored best state
    assert finished.epochs_run == epochs and finished.val_nll == double["result"]["val_nll"]
    for key, value in double["state"].items():
        assert torch.equal(guide.state_dict()[key], value), key

    model = _model()
    continued = fit(model, FactorGuide(model), (x, y), val_data=val, **{**kwargs, "num_epochs": epochs + 3})
    assert continued.epochs_run == epochs + 3 and continued.steps == (epochs + 3) * 8
    assert continued.train_loss[:epochs] == double["result"]["train_loss"]
    assert max(continued.val_nll[epochs:]) < double["result"]["best_val_nll"] * (1 + VAL_NLL_RTOL)


def test_one_process_checkpoint_resumes_in_two_processes(run):
    _, reports, one = run
    for report in reports:
        result = report["resume"]["result"]
        assert result["epochs_run"] == 4 and result["steps"] == 4 * 4
        assert result["train_loss"][:2] == one.train_loss and all(map(math.isfinite, result["train_loss"]))
    for key, value in reports[0]["resume"]["state"].items():
        assert torch.equal(reports[1]["resume"]["state"][key], value), key


def test_an_exception_on_one_rank_stops_every_rank_instead_of_hanging(run):
    _, reports, _ = run
    assert reports[1]["raised"]["type"] == "RuntimeError"  # rank 1's own error, with Pyro's trace shapes appended
    assert reports[1]["raised"]["message"].startswith("a bug on rank 1")
    assert reports[0]["raised"]["type"] == "RuntimeError"
    assert reports[0]["raised"]["message"].startswith("the training step raised on another rank at step 5, epoch 2")


def test_a_non_finite_loss_on_one_rank_stops_every_rank(run):
    """Rank 1's 7th call (step 5 = epoch 2's second step) overflows: both ranks raise and restore epoch 1's state."""
    _, reports, _ = run
    for report in reports:
        assert report["diverged"]["step"] == 5 and report["diverged"]["epoch"] == 2
        assert "restored the state at the end of epoch 1" in report["diverged"]["message"]
    for key, value in reports[0]["diverged"]["state"].items():
        assert torch.isfinite(value).all() and torch.equal(reports[1]["diverged"]["state"][key], value), key


def test_the_torchrun_example_runs_on_two_processes():
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "pyro_lowrank.inference.distributed_example", "--epochs", "2", "--num-data", "256", "--batch-size", "64"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # printed by rank 0 only
    assert summary["world_size"] == 2 and summary["epochs"] == 2 and summary["steps"] == 2 * 4
    assert summary["val_accuracy"] > 0.6  # chance is 1/3


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
