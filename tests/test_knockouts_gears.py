"""benchmarks/knockouts_gears.py and the pure helpers of benchmarks/peers/run_gears.py, without GEARS.

The GEARS venv is not needed (CI has none): the files exchanged with it are written and read
here, and the prior → GEARS-graph rule is checked on a toy prior.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import run_gears  # benchmarks/ and benchmarks/peers/ are on pytest's pythonpath (pyproject.toml)
from knockouts_gears import cells_from_means, read_gears_means, write_gears_input, write_prior_tsv

GENES = ["A", "B", "C"]


def test_input_round_trip_into_gears_format(tmp_path):
    import anndata as ad
    X = np.array([[0.0, 1.5, 2.0], [0.5, 0.0, 1.0], [3.0, 0.25, 0.0]])
    lab = np.array(["control", "STAT1", "control"])
    path = write_gears_input(tmp_path / "in.h5ad", X, lab, GENES)
    g = run_gears.gears_adata(ad.read_h5ad(path))
    assert g.obs["condition"].tolist() == ["ctrl", "STAT1+ctrl", "ctrl"]
    assert g.var["gene_name"].tolist() == GENES
    assert set(g.obs["cell_type"]) == {"THP-1"}
    np.testing.assert_allclose(g.X.toarray(), X, rtol=1e-6)  # the scored expression, unchanged
    with pytest.raises(ValueError, match="shape"):
        write_gears_input(tmp_path / "bad.h5ad", X[:, :2], lab, GENES)


def test_prior_tsv(tmp_path):
    prior = pd.DataFrame({"source": ["A", "A", "B"], "target": ["B", "B", "C"], "weight": [1, 1, -1]})
    df = pd.read_csv(write_prior_tsv(tmp_path / "p" / "prior.tsv", prior), sep="\t")
    assert df.columns.tolist() == ["source", "target"] and len(df) == 2


def test_predicted_cells_are_controls_plus_the_predicted_change(tmp_path):
    tsv = tmp_path / "pred_mean.tsv"
    # columns out of order: reading puts them in the data's order
    pd.DataFrame({"C": [1.0, 0.5], "A": [2.0, 2.5], "B": [0.0, 0.0]}, index=pd.Index(["control", "JAK2"],
                 name="perturbation")).to_csv(tsv, sep="\t")
    means = read_gears_means(tsv, GENES)
    assert means.columns.tolist() == GENES
    ctrl = np.array([[1.0, 0.0, 1.0], [3.0, 0.0, 1.0]])
    pred = cells_from_means(ctrl, means, "JAK2")
    np.testing.assert_allclose(pred, ctrl + np.array([0.5, 0.0, -0.5]))
    np.testing.assert_allclose(pred.mean(0) - ctrl.mean(0), (means.loc["JAK2"] - means.loc["control"]).to_numpy())
    with pytest.raises(ValueError, match="missing"):
        read_gears_means(tsv, GENES + ["D"])
    pd.DataFrame({"A": [1.0, np.nan], "B": [0.0, 0.0], "C": [0.0, 0.0]},
                 index=["control", "JAK2"]).to_csv(tsv, sep="\t")
    with pytest.raises(ValueError, match="non-finite"):
        read_gears_means(tsv, GENES)


def test_prior_replaces_go_with_gears_jaccard_rule():
    # IFNGR1 and IFNGR2 share their neighbours; X is in no edge
    prior = pd.DataFrame({"source": ["IFNG", "IFNG", "JAK1", "JAK1", "STAT1"],
                          "target": ["IFNGR1", "IFNGR2", "IFNGR1", "IFNGR2", "IRF1"]})
    nb = run_gears.prior_neighbours(prior)
    assert nb["IFNGR1"] == {"IFNGR1", "IFNG", "JAK1"} and nb["IRF1"] == {"IRF1", "STAT1"}
    sets = {g: nb.get(g, {g}) for g in ["IFNGR1", "IFNGR2", "IRF1", "X"]}
    go = run_gears.jaccard_edges(sets, list(sets))
    w = {(s, t): v for s, t, v in go.itertuples(index=False)}
    assert w[("IFNGR1", "IFNGR2")] == pytest.approx(2 / 4) and w[("IFNGR2", "IFNGR1")] == pytest.approx(2 / 4)
    assert all(w[(g, g)] == 1.0 for g in sets)  # self-pairs, as make_GO keeps them
    assert ("IFNGR1", "IRF1") not in w  # Jaccard 0: no edge
    assert run_gears.graph_neighbours(go, "IFNGR1") == ["IFNGR2"]
    assert run_gears.graph_neighbours(go, "X") == []
