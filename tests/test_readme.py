"""The README's commands and quickstart stay true."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CI_RUN = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_test_command_verbatim():
    first_section = README.split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", first_section, re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    demo, tests = commands
    assert "pip install torch==2.13.0" in demo and "pyro-lowrank demo" in demo
    assert "pip install torch==2.13.0" in tests and "pytest" in tests
    assert tests in CI_RUN.splitlines()


def test_quickstart_snippet_runs():
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    code = code.replace("num_epochs=200", "num_epochs=5").replace("fit(model, guide, (x, y),", "fit(model, guide, (x, y), progress=False,")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["draws"].shape == (100, 200)
    assert namespace["q_w"].event_shape == (64, 1)
