"""The tutorial notebooks run top to bottom (quick budgets) and are committed without outputs.

Each notebook is executed with nbclient in a ``python3`` kernel; jupyter_client starts that kernel
with the interpreter running the tests (``sys.executable``), i.e. the project's virtual
environment, so the notebooks see the installed grndiff. ``GRNDIFF_QUICK=1`` keeps each notebook
to a few minutes of CPU.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def test_tutorials_present_and_clean():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_quickstart.ipynb", "02_perturbation.ipynb", "03_pathway_tokens.ipynb",
                     "04_tokenization.ipynb"], names
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        assert any("GRNDIFF_QUICK" in c.source for c in code), f"{path.name} ignores GRNDIFF_QUICK"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_executes(path, monkeypatch):
    monkeypatch.setenv("GRNDIFF_QUICK", os.environ.get("GRNDIFF_QUICK", "1"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()
    # the kernel ran this very interpreter (the venv), not whatever "python" is first on PATH
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "IProgress not found" not in text and "TqdmWarning" not in text  # progress without ipywidgets


def test_kernel_is_this_interpreter():
    """``python3`` resolves to this interpreter (what `make test` runs), so notebooks import this grndiff."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    km = KernelManager(kernel_name="python3")
    cmd = km.format_kernel_cmd() if hasattr(km, "format_kernel_cmd") else spec.argv
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve(), (spec.resource_dir, cmd)
