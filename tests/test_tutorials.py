"""Execute the tutorial notebooks top to bottom; any cell error (including a failed ``assert``) fails the test.

The default run uses ``SMOKE_TEST=1`` (each notebook scales its work down); the ``slow`` variants run them at full
size. The kernel is started with *this* interpreter (``sys.executable -m ipykernel_launcher``) through a custom kernel
manager, so the test needs no user-installed kernelspec and cannot pick up a different Python.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpec  # noqa: E402  (after the importorskip guards)
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
CELL_TIMEOUT_S = 300
NOTEBOOKS = sorted(path.name for path in TUTORIALS.glob("*.ipynb"))


class ThisInterpreterKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel is always ``sys.executable -m ipykernel_launcher``, whatever the kernelspecs."""

    @property
    def kernel_spec(self) -> KernelSpec:
        if self._kernel_spec is None:
            self._kernel_spec = KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (test interpreter)",
                language="python",
            )
        return self._kernel_spec


def run_notebook(path: Path, workdir: Path) -> tuple[object, float]:
    """Execute ``path`` with cwd ``workdir``; returns the executed notebook and the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        kernel_manager_class=ThisInterpreterKernelManager,
        resources={"metadata": {"path": str(workdir)}},
        allow_errors=False,
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def _stdout(nb) -> str:
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )


def test_kernel_manager_uses_this_interpreter():
    assert ThisInterpreterKernelManager(kernel_name="python3").kernel_spec.argv[0] == sys.executable


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tutorial_smoke(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE_TEST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb, seconds = run_notebook(TUTORIALS / name, tmp_path)
    out = _stdout(nb)
    assert "SMOKE=True" in out, out[:2000]
    print(f"{name} (smoke) ran in {seconds:.1f} s\n{out}")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tutorial_full(name, tmp_path, monkeypatch):
    monkeypatch.delenv("SMOKE_TEST", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb, seconds = run_notebook(TUTORIALS / name, tmp_path)
    out = _stdout(nb)
    assert "SMOKE=False" in out, out[:2000]
    print(f"{name} (full) ran in {seconds:.1f} s\n{out}")


def test_every_tutorial_is_executed():
    assert NOTEBOOKS[:2] == ["01_quickstart.ipynb", "02_diagnostics.ipynb"]


def test_tutorials_are_stored_without_outputs():
    """Notebooks are committed with cleared outputs so that they diff cleanly."""
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has stored outputs"
