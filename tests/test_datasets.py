"""grndiff.datasets: shapes, user-facing columns, counts, fresh copies, small tracked files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from grndiff import datasets

DATA = Path(datasets.__file__).parent / "_data"


def _is_counts(m) -> bool:
    v = m.data if sparse.issparse(m) else np.asarray(m)
    return bool((v >= 0).all() and np.allclose(v, np.round(v)))


def test_kang2018():
    a = datasets.kang2018()
    assert a.shape == (1556, 1267)
    assert {"cluster_id", "group_id", "sample_id", "cell_type", "condition", "donor"} <= set(a.obs.columns)
    assert (a.obs["cell_type"].astype(str) == a.obs["cluster_id"].astype(str)).all()
    assert a.obs["condition"].value_counts().to_dict() == {"stim": 806, "ctrl": 750}
    assert a.obs["cell_type"].nunique() == 5 and set(a.obs["donor"]) == {"101", "107"}
    assert _is_counts(a.X) and (a.layers["counts"] != a.X).nnz == 0 and "logcounts" in a.layers
    assert "ENSEMBL" in a.var.columns and "ISG15" in a.var_names
    # the IFN-β signal is real: ISG15 is far higher in stimulated cells
    isg = np.asarray(a[:, "ISG15"].X.todense()).ravel()
    stim = (a.obs["condition"] == "stim").to_numpy()
    assert np.median(isg[stim]) > 10 * max(np.median(isg[~stim]), 1)


def test_kang2018_ctrl_is_ensembl_indexed_with_symbols():
    a = datasets.kang2018_ctrl()
    assert a.shape == (8684, 2511)
    assert a.var_names[0].startswith("ENSG") and "feature" in a.var.columns
    assert {"cell_type", "donor", "cluster_id", "sample_id"} <= set(a.obs.columns)
    assert a.obs["cell_type"].nunique() == 4 and a.obs["donor"].nunique() == 5
    assert a.X.dtype == np.float32 and _is_counts(a.X) and "counts" in a.layers


def test_kang2018_tiny():
    a = datasets.kang2018_tiny()
    assert a.shape == (600, 279)
    assert a.obs["condition"].value_counts().to_dict() == {"ctrl": 300, "stim": 300}
    assert _is_counts(a.X) and "counts" in a.layers


def test_krumsiek11_matches_scanpy_labels_and_network():
    a = datasets.krumsiek11()
    assert a.shape == (640, 11)
    assert a.obs["cell_type"].value_counts().to_dict() == {"progenitor": 320, "Mo": 80, "Ery": 80, "Mk": 80, "Neu": 80}
    assert a.obs["cell_type"].iloc[80] == "Mo" and a.obs["cell_type"].iloc[79] == "progenitor"
    assert a.obs["time"].max() == 159 and a.obs_names.is_unique and a.X.min() >= 0
    net = datasets.krumsiek11_network()
    assert list(net.columns) == ["source", "target", "weight"] and len(net) == 30
    assert set(net["source"]) | set(net["target"]) == set(a.var_names)
    # Gata1 ⊣ Pu.1 and Pu.1 ⊣ Gata1: the mutual repression behind the erythroid/myeloid switch
    w = net.set_index(["source", "target"])["weight"]
    assert w[("Gata1", "Pu.1")] < 0 and w[("Pu.1", "Gata1")] < 0


def test_each_call_returns_a_fresh_copy():
    a, b = datasets.kang2018_tiny(), datasets.kang2018_tiny()
    a.X.data[:] = -1
    a.obs["condition"] = "changed"
    assert _is_counts(b.X) and set(b.obs["condition"]) == {"ctrl", "stim"}
    n1 = datasets.krumsiek11_network()
    n1.loc[0, "weight"] = 99.0
    assert datasets.krumsiek11_network().loc[0, "weight"] != 99.0


@pytest.mark.parametrize("path", sorted(DATA.iterdir()), ids=lambda p: p.name)
def test_shipped_files_stay_small_and_are_documented(path):
    assert path.stat().st_size < 8 * 2**20, f"{path.name} is over 8 MB"
    if path.name != "README.md":
        assert path.name in (DATA / "README.md").read_text()


def test_papalexi2021_drops_unassigned_cells_and_keeps_counts():
    a = datasets.papalexi2021()
    assert a.shape == (16093, 299)
    lab = a.obs["perturbation"].astype(str)
    assert "unassigned" not in set(lab) and (lab == "control").sum() == 1912
    assert len(set(lab) - {"control"}) == 25 and (lab == "STAT1").sum() == 322
    X = a.layers["counts"]
    assert X.dtype == np.float32 and float((X.data % 1).max()) == 0.0  # raw integer UMIs
    assert set(a.var_names[a.var["is_perturbation_target"].to_numpy()]) == {
        "CMTM6", "IFNGR2", "JAK2", "NFKBIA", "STAT1", "STAT2", "STAT3", "TNFRSF14", "UBE2L6"}
    assert datasets.papalexi2021(keep_unassigned=True).n_obs == 20729
