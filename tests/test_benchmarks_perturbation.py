"""benchmarks/perturbation.py and benchmarks/knockouts.py --quick run end to end (CI smoke runs)
and write the rows their results files are read for."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
    obj = _quick("knockouts.py", tmp_path, "--pred-dir", str(tmp_path / "pred"))
    rows = _rows(obj, "papalexi2021")
    assert {"grndiff", "grndiff_flow", "mean_shift", "linear_graph", "split_half"} <= rows
    # --pred-dir: a file per (row, scored knock-out), split_half (the ceiling) excepted
    scored_rows = {(r["method"], r["group"]) for r in obj["records"] if r["metric"] == "pearson_delta_top20"
                   and r["method"] != "split_half" and r["group"] in set(obj["config"]["knockouts"])}
    written = {p.name for p in (tmp_path / "pred").glob("pred_*.h5ad")}
    assert scored_rows and written == {f"pred_{m}_{g}.h5ad" for m, g in scored_rows}
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


# --- cell-eval on the knock-outs (benchmarks/peers/celleval.py; runs without cell-eval unless marked) ---

#: the header of the results.csv cell-eval 0.8.2 writes for a run without --celltype-col
CELLEVAL_HEADER = (
    "perturbation,overlap_at_N,overlap_at_50,overlap_at_100,overlap_at_200,overlap_at_500,precision_at_N,"
    "precision_at_50,precision_at_100,precision_at_200,precision_at_500,de_spearman_sig,de_direction_match,"
    "de_spearman_lfc_sig,de_sig_genes_recall,de_nsig_counts_real,de_nsig_counts_pred,pr_auc,roc_auc,pearson_delta,"
    "mse,mae,mse_delta,mae_delta,discrimination_score_l1,discrimination_score_l2,discrimination_score_cosine,"
    "pearson_edistance,clustering_agreement")


def _ko_cells(seed=0, genes=12):
    """(X (N, G) log1p-like, labels (N,), genes): 6 control cells, 3 of A, 4 of B, 2 of C."""
    rng = np.random.default_rng(seed)
    labels = np.array(["control"] * 6 + ["A"] * 3 + ["B"] * 4 + ["C"] * 2)
    X = np.log1p(rng.poisson(3.0, (labels.size, genes))).astype(np.float64)
    X[labels == "A", 0] += 2.0
    X[labels == "B", 1] += 2.0
    return X, labels, [f"g{i}" for i in range(genes)]


def test_celleval_knockout_layout_holds_control_and_each_predicted_knockout(tmp_path):
    import anndata as ad
    from celleval import build_knockout_layout  # benchmarks/peers/ (pytest's pythonpath)

    X, labels, genes = _ko_cells()
    pa = X[labels == "A"][[0, 1, 2, 0, 1]] - 0.5  # 5 predicted cells, some values below 0
    pb = np.full((7, len(genes)), 1.25)
    real_path, pred_path, kos = build_knockout_layout(X, labels, {"A": pa, "B": pb}, genes, tmp_path / "w")
    assert kos == ["A", "B"]
    real, pred = ad.read_h5ad(real_path), ad.read_h5ad(pred_path)
    for a in (real, pred):
        assert list(a.var_names) == genes and list(a.obs.columns) == ["perturbation"]
        assert a.obs_names.is_unique
    # real: the 6 control cells + A's 3 + B's 4 (C was not predicted: left out)
    assert real.obs["perturbation"].value_counts().to_dict() == {"control": 6, "B": 4, "A": 3}
    np.testing.assert_allclose(real.X[real.obs["perturbation"].to_numpy() == "B"], X[labels == "B"], rtol=1e-6)
    # pred: the same control cells + the predicted cells, clipped at 0 for the judge only
    assert pred.obs["perturbation"].value_counts().to_dict() == {"B": 7, "control": 6, "A": 5}
    is_ctrl = pred.obs["perturbation"].to_numpy() == "control"
    np.testing.assert_allclose(pred.X[is_ctrl], X[labels == "control"], rtol=1e-6)
    got_a = pred.X[pred.obs["perturbation"].to_numpy() == "A"]
    assert got_a.min() == 0.0 and (pa < 0).any()
    np.testing.assert_allclose(got_a, np.clip(pa, 0, None), rtol=1e-6)
    np.testing.assert_allclose(pred.X[pred.obs["perturbation"].to_numpy() == "B"], 1.25)
    with pytest.raises(ValueError, match="without real cells"):
        build_knockout_layout(X, labels, {"D": pb}, genes, tmp_path / "w2")
    with pytest.raises(ValueError, match="shape"):
        build_knockout_layout(X, labels, {"A": pb[:, :3]}, genes, tmp_path / "w3")


def test_celleval_results_parse_per_knockout_and_per_cell_type(tmp_path):
    from celleval import KO_HEADLINE, parse_results

    n = len(CELLEVAL_HEADER.split(","))
    row_a = ["A"] + ["0.5"] * (n - 1)
    row_b = ["B"] + ["NaN"] * (n - 1)
    (tmp_path / "results.csv").write_text("\n".join([CELLEVAL_HEADER, ",".join(row_a), ",".join(row_b)]) + "\n")
    recs = parse_results(tmp_path, ["A", "B", "Z"], "grndiff", KO_HEADLINE, by="perturbation", dataset="papalexi2021")
    assert {r["group"] for r in recs} == {"A", "B"}  # Z: no row, no records
    assert all(r["dataset"] == "papalexi2021" and r["method"] == "grndiff" and r["seed"] == 0 for r in recs)
    a = {r["metric"]: r["value"] for r in recs if r["group"] == "A"}
    assert set(a) == {f"celleval_{m}" for m in KO_HEADLINE} and "celleval_discrimination_score_l1" in a
    assert all(v == 0.5 for v in a.values())  # mse_delta etc. (not headline) left out
    assert all(r["value"] is None for r in recs if r["group"] == "B")  # NaN -> None
    # the Kang layout (one file per cell type, row 'stim') reads as before
    (tmp_path / "B_cells_results.csv").write_text(CELLEVAL_HEADER + "\n" + ",".join(["stim"] + ["0.25"] * (n - 1)))
    kang = parse_results(tmp_path, ["B cells", "NK"], "mean_shift")
    assert {(r["dataset"], r["group"]) for r in kang} == {("kang2018", "B cells")}
    assert "celleval_discrimination_score_l1" not in {r["metric"] for r in kang}
    assert {r["value"] for r in kang} == {0.25}
    with pytest.raises(ValueError, match="by must be"):
        parse_results(tmp_path, ["A"], "x", by="context")


def test_knockouts_celleval_refused_early_without_cell_eval(tmp_path):
    env = {**os.environ, "CELL_EVAL": str(tmp_path / "no-cell-eval")}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "knockouts.py"), "--quick", "--celleval",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 2 and "bash benchmarks/peers/setup.sh celleval" in res.stderr
    assert not (tmp_path / "knockouts.json").exists()


@pytest.mark.slow
def test_celleval_scores_knockout_prediction_files(tmp_path):
    """With cell-eval installed: a prediction equal to each knock-out's real cells scores Pearson Δ ≈ 1
    and picks out its own knock-out (discrimination 1); the control cells (no change) do not."""
    import _common
    import celleval

    try:
        celleval.celleval_exe()
    except FileNotFoundError:
        pytest.skip("cell-eval not installed (bash benchmarks/peers/setup.sh celleval)")
    rng = np.random.default_rng(0)
    G, genes = 40, [f"g{i}" for i in range(40)]
    shift = {"control": 0.0, "A": 1.0, "B": -0.7, "C": 0.5}
    labels = np.repeat(list(shift), [60, 30, 30, 30])
    X = np.stack([np.log1p(rng.poisson(np.exp(1 + shift[p] * (np.arange(G) < 4 + 4 * "ABC".find(p)))))
                  for p in labels])
    ctrl, obs = X[labels == "control"], pd.DataFrame(index=[f"c{i}" for i in range(60)])
    for p in ("A", "B", "C"):
        _common.write_pred(tmp_path / "pred", "perfect", p, X[labels == p][rng.integers(0, 30, 60)], obs, genes)
        _common.write_pred(tmp_path / "pred", "no_change", p, ctrl, obs, genes)
    recs = celleval.knockout_celleval_records(tmp_path / "pred", X, labels, genes, ["perfect", "no_change", "absent"])
    got = {(r["method"], r["group"], r["metric"]): r["value"] for r in recs}
    assert {m for m, _, _ in got} == {"perfect", "no_change"}
    for p in ("A", "B", "C"):
        assert got[("perfect", p, "celleval_pearson_delta")] > 0.9
        assert got[("perfect", p, "celleval_discrimination_score_l1")] == 1.0
        assert got[("no_change", p, "celleval_pearson_delta")] is None or abs(
            got[("no_change", p, "celleval_pearson_delta")]) < 0.5
    assert all(r["dataset"] == "papalexi2021" for r in recs)
