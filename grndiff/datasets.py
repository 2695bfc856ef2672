"""Shipped data sets (offline). Each call returns a fresh AnnData.

Kang et al. 2018 (Nature Biotechnology 36:89, GEO GSE96583): PBMCs, control vs IFN-β stimulated.
The two muscat-derived files come from the muscat Bioconductor package's example data
(HelenaLC/muscat, GPL-3); the tiny one from the liger package's example files (welch-lab/liger,
GPL-3). krumsiek11: simulated myeloid differentiation from the Boolean model of Krumsiek et al.
2011 (PLoS ONE 6:e22649), as shipped by scanpy (BSD-3), with its signed 30-edge network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

_DATA = Path(__file__).parent / "_data"


def _read(name: str):
    import anndata as ad
    path = _DATA / name
    if not path.exists():
        raise FileNotFoundError(f"shipped data file {name} is missing from this installation")
    return ad.read_h5ad(path)


def kang2018():
    """Kang 2018 PBMCs, 1,556 cells × 1,267 genes, ctrl (750) / IFN-β stim (806), 5 cell types.

    ``X`` and ``layers["counts"]``: raw integer counts; ``layers["logcounts"]`` as shipped by
    muscat. ``obs``: original ``cluster_id``, ``group_id``, ``sample_id`` plus ``cell_type``
    (= cluster_id) and ``condition`` (= group_id: ctrl/stim). Gene symbols in ``var_names``,
    Ensembl ids in ``var["ENSEMBL"]``. Licence: GPL-3 (muscat example data); data public on GEO.
    """
    a = _read("kang2018_pbmc_ifnb_1556.h5ad")
    a.layers["counts"] = a.X.copy()
    a.obs["cell_type"] = a.obs["cluster_id"].astype(str).astype("category")
    a.obs["condition"] = a.obs["group_id"].astype(str).astype("category")
    return a


def kang2018_ctrl():
    """Kang 2018 control PBMCs, 8,684 cells × 2,511 genes, 4 cell types, 5 donors.

    Raw integer counts in ``X`` and ``layers["counts"]``; Ensembl ids in ``var_names`` with
    symbols in ``var["feature"]`` (use ``setup_anndata(..., symbol_key="feature")``). ``obs``:
    ``cluster_id``, ``sample_id`` plus ``cell_type`` and ``donor``. Licence: GPL-3 (muscat).
    """
    a = _read("kang2018_pbmc_ctrl_8684.h5ad")
    a.X = a.X.astype(np.float32)
    a.layers["counts"] = a.X.copy()
    a.obs["cell_type"] = a.obs["cluster_id"].astype(str).astype("category")
    a.obs["donor"] = a.obs["sample_id"].astype(str).astype("category")
    return a


def kang2018_tiny():
    """600 cells × 279 genes, ``obs["condition"]`` ctrl/stim (300 each); raw counts. Licence: GPL-3 (liger)."""
    a = _read("kang2018_pbmc_ifnb_tiny_600.h5ad")
    a.layers["counts"] = a.X.copy()
    return a


def krumsiek11():
    """Simulated myeloid progenitors (Krumsiek et al. 2011): 640 cells × 11 genes, ``obs["cell_type"]``.

    Parsed from scanpy's text format (BSD-3): 4 realizations × 160 time steps; as in
    ``scanpy.datasets.krumsiek11`` the second half of each realization is labelled by its fate
    (Mo, Ery, Mk, Neu), the rest "progenitor". Continuous expression on a [0, 1]-like scale;
    the simulation noise's tiny negative values (> −0.01) are clipped to 0.
    """
    import anndata as ad
    header, rows = None, []
    with open(_DATA / "krumsiek11.txt") as fh:
        for line in fh:
            if line.startswith("# it"):
                header = line[1:].split()[1:]  # drop the iteration column
            elif line.strip() and not line.startswith("#"):
                rows.append([float(v) for v in line.split()[1:]])
    # the simulation's observation noise leaves tiny negatives (≥ −0.01); expression is ≥ 0
    X = np.clip(np.asarray(rows, dtype=np.float32), 0.0, None)
    labels = np.array(["progenitor"] * X.shape[0], dtype=object)
    for start, fate in ((80, "Mo"), (240, "Ery"), (400, "Mk"), (560, "Neu")):
        labels[start:start + 80] = fate
    genes = header
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"cell{i}" for i in range(X.shape[0])])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


def krumsiek11_network() -> pd.DataFrame:
    """The signed 11-gene, 30-edge krumsiek11 network, long format ``source, target, weight``."""
    return pd.read_csv(_DATA / "krumsiek11_grn_long.csv")
