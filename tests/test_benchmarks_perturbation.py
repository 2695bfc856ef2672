"""benchmarks/perturbation.py and benchmarks/knockouts.py --quick run end to end (CI smoke runs)
and write the rows their results files are read for."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick(script: str, out: Path, *extra: str) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out-dir", str(out), *extra],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    name = script.removesuffix(".py")
    assert (out / f"{name}.md").exists()
    return json.loads((out / f"{name}.json").read_text())


def _rows(obj: dict, dataset: str) -> set[str]:
    return {r["method"] for r in obj["records"] if r["dataset"] == dataset and r["metric"] == "pearson_delta_top20"
            and r["value"] is not None}


@pytest.mark.slow
def test_perturbation_quick_has_gated_flow_and_baseline_rows(tmp_path):
    obj = _quick("perturbation.py", tmp_path)
    assert obj["config"]["quick"] and "perturbation.py --quick" in obj["command"]
    for ds in ("kang2018", "papalexi2021"):
        assert {"grndiff", "grndiff_flow", "grndiff_shift", "mean_shift", "split_half"} <= _rows(obj, ds), ds
    alphas = [r["value"] for r in obj["records"] if r["metric"] == "gate_alpha"]
    assert alphas and all(a in (0.0, 0.25, 0.5, 0.75, 1.0) for a in alphas)


@pytest.mark.slow
def test_knockouts_quick_predicts_unmeasured_knockouts_through_latent_nodes(tmp_path):
    obj = _quick("knockouts.py", tmp_path)
    rows = _rows(obj, "papalexi2021")
    assert {"grndiff", "grndiff_flow", "mean_shift", "linear_graph", "split_half"} <= rows
    measured = set(obj["config"]["knockouts"])
    scored = {r["group"] for r in obj["records"] if r["method"] == "grndiff" and r["metric"] == "pearson_delta_top20"
              and r["group"] in measured}
    import grndiff as gd
    genes = set(gd.datasets.papalexi2021().var_names)
    assert scored - genes, "no knock-out of an unmeasured gene was predicted"
    latent = [r["value"] for r in obj["records"] if r["metric"] == "n_latent"]
    assert latent and min(latent) > 0


@pytest.mark.slow
def test_knockouts_refuses_or_skips_a_variant_whose_prior_misses_a_knockout(tmp_path):
    """OmniPath alone does not name ETV7 (unmeasured): refused by default, scored on the others with
    --skip-unnamed (it neither trains on nor scores ETV7, and the notes say so)."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "knockouts.py"), "--quick", "--variants",
                          "grndiff_omnipath", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "ETV7" in res.stderr and "--skip-unnamed" in res.stderr
    obj = _quick("knockouts.py", tmp_path, "--variants", "grndiff_omnipath", "--skip-unnamed", "--jobs", "1")
    assert "grndiff_omnipath" in _rows(obj, "papalexi2021")
    assert not any(r["group"] == "ETV7" and r["method"].startswith("grndiff") for r in obj["records"])
    assert any("ETV7" in n and "scored_by_all" in n for n in obj["notes"])


def test_readme_perturbation_figure_redraws_from_the_committed_results(tmp_path):
    """`python benchmarks/plot_perturbation.py` draws the README's figure from the committed results
    file alone (no data, no model), and the file records its command and commit."""
    import plot_perturbation

    res = json.loads((ROOT / "benchmarks" / "results" / "perturbation_top_genes.json").read_text())
    assert res["command"].startswith("python benchmarks/plot_perturbation.py") and res["commit"]
    assert (ROOT / "docs" / "perturbation_top_genes.png").exists()
    assert "docs/perturbation_top_genes.png" in (ROOT / "README.md").read_text()
    out = tmp_path / "fig.png"
    plot_perturbation.main(["--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ranks = [r for r in res["records"] if r["metric"] == "rank"]
    assert len(ranks) == plot_perturbation.N_TOP


@pytest.mark.slow
def test_time_to_quality_quick_times_and_scores_each_grndiff_row(tmp_path):
    obj = _quick("time_to_quality.py", tmp_path, "--peers", "")
    rows = {(r["method"], r["metric"]): r["value"] for r in obj["records"] if r["group"] == "all"}
    for method in ("grndiff_transport", "grndiff"):
        for metric in ("pearson_delta_top20", "fit_seconds", "wall_seconds", "cpu_seconds"):
            assert rows[(method, metric)] is not None, (method, metric)
        assert rows[(method, "wall_seconds")] >= rows[(method, "fit_seconds")] > 0  # the process holds the fit
    assert obj["config"]["peers"] == [] and "time_to_quality.py --quick" in obj["command"]
    # a peer whose environment is missing is refused with the command that makes it
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), "--peers", "scgen",
                          "--venvs", str(tmp_path / "none")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0 and "setup.sh" in res.stderr
