"""The tutorial notebooks are committed executed (outputs, in order) and still run top to bottom.

The committed outputs come from a run at the real budgets (``GRNDIFF_QUICK=0``); each notebook's
first cell says what it shows and how long that run took. CI executes every notebook again at the
quick budgets (``GRNDIFF_QUICK=1``) with nbclient in a ``python3`` kernel, in memory: those outputs
are discarded, the committed files are never rewritten. jupyter_client starts that kernel with the
interpreter running the tests (``sys.executable``), i.e. the project's virtual environment, so the
notebooks see the installed grndiff.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
NAMES = ["01_quickstart.ipynb", "02_perturbation.ipynb", "03_pathway_tokens.ipynb", "04_tokenization.ipynb",
         "05_knockouts.ipynb"]
MAX_BYTES = 1_500_000


def _text(nb) -> str:
    """Everything a reader sees in the outputs (streams, text and HTML reprs, tracebacks)."""
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            parts.append(o.get("text", ""))
            parts.extend(str(v) for k, v in o.get("data", {}).items() if not k.startswith("image/"))
            parts.extend(o.get("traceback", []))
    return "\n".join(parts)


def test_tutorials_present():
    assert [p.name for p in NOTEBOOKS] == NAMES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_committed_executed_in_order(path):
    """Outputs are committed, from one top-to-bottom run (execution counts 1..n), without errors."""
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size:,} bytes (PNG figures, modest dpi)"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts}, not 1..{len(code)}"
    assert sum(bool(c.outputs) for c in code) >= len(code) // 2, f"{path.name}: most code cells have no output"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{path.name} has an error output"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} has no figure"
    assert any("GRNDIFF_QUICK" in c.source for c in code), f"{path.name} ignores GRNDIFF_QUICK"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "What it shows" in first.source and "Run time" in first.source, \
        f"{path.name} must open with what it shows and how long it takes"
    text = _text(nb)
    for local in {str(ROOT), str(Path.home()), "/tmp/"} - {"/"}:
        assert local not in text, f"{path.name} outputs name a local path ({local})"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_executes(path, monkeypatch):
    monkeypatch.setenv("GRNDIFF_QUICK", os.environ.get("GRNDIFF_QUICK", "1"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    committed = hashlib.sha256(path.read_bytes()).hexdigest()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()
    # the kernel ran this very interpreter (the venv), not whatever "python" is first on PATH
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "IProgress not found" not in text and "TqdmWarning" not in text  # progress without ipywidgets
    assert hashlib.sha256(path.read_bytes()).hexdigest() == committed  # the committed outputs stay as they were


def test_kernel_is_this_interpreter():
    """``python3`` resolves to this interpreter (what `make test` runs), so notebooks import this grndiff."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    km = KernelManager(kernel_name="python3")
    cmd = km.format_kernel_cmd() if hasattr(km, "format_kernel_cmd") else spec.argv
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve(), (spec.resource_dir, cmd)
