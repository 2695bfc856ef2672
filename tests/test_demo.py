"""The README's main job, ``make demo`` (``grndiff demo``), end to end at its quick budget."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a subprocess: train grndiff and the MLP for 150 steps each, sample, evaluate
def test_demo_quick_writes_a_report_with_every_row_and_a_umap(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "grndiff.cli", "demo", "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    report = (out / "report.md").read_text()
    for row in ("real_vs_real", "gaussian", "mlp", "grndiff"):
        assert f"| {row} " in report, row
    assert (out / "umap.png").stat().st_size > 1000
    assert "150 training steps" in report
