"""Data sets shipped with grndiff: offline, small, each call returns a fresh AnnData.

The files live in ``grndiff/_data/`` (see its ``README.md`` for checksums); they keep their own
licences, separate from the BSD-3 code:

- Kang et al. (2018) Multiplexed droplet single-cell RNA-sequencing using natural genetic
  variation. *Nature Biotechnology* 36:89. GEO GSE96583: PBMCs, control vs IFN-β stimulated.
  ``kang2018`` and ``kang2018_ctrl`` are converted from the muscat Bioconductor package's example
  data (Crowell et al. 2020, *Nature Communications* 11:6077; HelenaLC/muscat, GPL-3);
  ``kang2018_tiny`` from the liger package's example files (Welch et al. 2019, *Cell* 177:1873;
  welch-lab/liger, GPL-3). The underlying data are public on GEO.
- ``krumsiek11``: simulated myeloid differentiation from the Boolean network of Krumsiek et al.
  (2011) Hierarchical differentiation of myeloid progenitors is encoded in the transcription
  factor network. *PLoS ONE* 6:e22649; simulation and file as shipped by scanpy (Wolf et al. 2018,
  *Genome Biology* 19:15; BSD-3).
- ``papalexi2021``: Papalexi et al. (2021) Characterizing the molecular regulation of inhibitory
  immune checkpoints with multimodal single-cell screens. *Nature Genetics* 53:322. THP-1 CRISPR
  knock-outs under IFN-γ, 299 genes, via the sceptredata R package (Katsevich lab; MIT).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

_DATA = Path(__file__).parent / "_data"


def _path(name: str) -> Path:
    path = _DATA / name
    if not path.is_file():
        raise FileNotFoundError(f"the shipped data file {name} is missing from this grndiff installation "
                                f"(expected in {_DATA.name}/ inside the package); reinstall grndiff.")
    return path


def _read(name: str):
    import anndata as ad

    return ad.read_h5ad(_path(name))  # a fresh object on every call


def _as_counts(adata) -> None:
    """Counts in ``X`` (float32, as scanpy expects) and an identical ``layers["counts"]``."""
    adata.X = adata.X.astype(np.float32)
    adata.layers["counts"] = adata.X.copy()


def _category(values) -> pd.Categorical:
    return pd.Categorical(pd.Series(values).astype(str))


def kang2018():
    """PBMCs of 2 donors, control and IFN-β stimulated (Kang et al. 2018, via muscat).

    Returns
    -------
    anndata.AnnData
        1,556 cells × 1,267 genes (symbols in ``var_names``, Ensembl ids in
        ``var["ENSEMBL"]``).

        - ``X`` and ``layers["counts"]``: raw UMI counts (float32, sparse CSR);
          ``layers["logcounts"]``: muscat's log-normalised values.
        - ``obs``: the original ``cluster_id`` (5 cell types), ``group_id`` (ctrl 750 / stim 806),
          ``sample_id`` (donor × condition), plus ``cell_type`` (= ``cluster_id``),
          ``condition`` (= ``group_id``: ``ctrl``/``stim``) and ``donor`` (``101``/``107``).

    Notes
    -----
    Licence GPL-3 (muscat example data; Crowell et al. 2020, *Nat. Commun.* 11:6077); data from
    Kang et al. 2018, *Nat. Biotechnol.* 36:89, GEO GSE96583. The IFN-β response is strong:
    ISG15 has median 0 in ctrl and ~130 CP10k in stim.

    Examples
    --------
    >>> import grndiff as gd
    >>> adata = gd.datasets.kang2018()   # doctest: +SKIP
    """
    a = _read("kang2018_pbmc_ifnb_1556.h5ad")
    _as_counts(a)
    a.obs["cell_type"] = _category(a.obs["cluster_id"])
    a.obs["condition"] = _category(a.obs["group_id"])
    a.obs["donor"] = _category(a.obs["sample_id"].astype(str).str.replace(r"^(ctrl|stim)", "", regex=True))
    return a


def kang2018_ctrl():
    """Control PBMCs of 5 donors (Kang et al. 2018, via muscat), indexed by Ensembl ids.

    Returns
    -------
    anndata.AnnData
        8,684 cells × 2,511 genes. ``var_names`` are Ensembl ids; gene symbols are in
        ``var["feature"]`` (match priors with ``GeneGraph.from_prior(..., symbols=adata.var["feature"])``
        or ``setup_anndata(..., symbol_key="feature")``); ``var["beta"]``, ``var["dispersion"]``
        as shipped by muscat.

        - ``X`` and ``layers["counts"]``: raw UMI counts (float32, sparse CSR).
        - ``obs``: the original ``cluster_id`` (B cells, CD14+ Monocytes, CD4 T cells, NK
          cells), ``sample_id`` (donor), ``offset``, plus ``cell_type`` (= ``cluster_id``) and
          ``donor`` (= ``sample_id``).

    Notes
    -----
    Licence GPL-3 (muscat example data; Crowell et al. 2020); data from Kang et al. 2018,
    GEO GSE96583. Stored with integer counts and gzip to stay small.
    """
    a = _read("kang2018_pbmc_ctrl_8684.h5ad")
    _as_counts(a)
    a.obs["cell_type"] = _category(a.obs["cluster_id"])
    a.obs["donor"] = _category(a.obs["sample_id"])
    return a


def kang2018_tiny():
    """A tiny control vs IFN-β PBMC subset (Kang et al. 2018, via liger).

    Returns
    -------
    anndata.AnnData
        600 cells × 279 genes (symbols); ``X`` and ``layers["counts"]``: raw counts (float32,
        sparse); ``obs["condition"]``: ``ctrl`` 300 / ``stim`` 300.

    Notes
    -----
    Licence GPL-3 (liger example files; Welch et al. 2019, *Cell* 177:1873); data from
    Kang et al. 2018, GEO GSE96583.
    """
    a = _read("kang2018_pbmc_ifnb_tiny_600.h5ad")
    _as_counts(a)
    a.obs["condition"] = _category(a.obs["condition"])
    return a


# scanpy.datasets.krumsiek11 labels the late half of each of the 4 simulated trajectories
_KRUMSIEK_FATES = ((80, "Mo"), (240, "Ery"), (400, "Mk"), (560, "Neu"))


def krumsiek11():
    """Simulated myeloid differentiation (Krumsiek et al. 2011), as shipped by scanpy.

    Returns
    -------
    anndata.AnnData
        640 cells × 11 transcription factors. ``X``: continuous simulated expression on a
        [0, 1]-like scale (float32); the simulation's tiny negative noise values (> −0.01) are
        clipped to 0. ``obs["cell_type"]``: ``progenitor``, ``Mo``, ``Ery``, ``Mk``, ``Neu``
        (80 cells each for the fates, labelled as ``scanpy.datasets.krumsiek11`` does: the
        second half of each of the 4 trajectories of 160 steps); ``obs["time"]``: the
        simulation step (0–159). ``uns["iroot"] = 0`` (the root cell, for scanpy's DPT).

    Notes
    -----
    Licence BSD-3 (scanpy). Krumsiek et al. 2011, *PLoS ONE* 6:e22649. Its network:
    :func:`krumsiek11_network`.
    """
    import anndata as ad

    header, steps, rows = None, [], []
    with open(_path("krumsiek11.txt"), encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("# it"):
                header = line[1:].split()[1:]  # the first column is the time step
            elif line.strip() and not line.startswith("#"):
                parts = line.split()
                steps.append(int(parts[0]))
                rows.append([float(v) for v in parts[1:]])
    if header is None or any(len(r) != len(header) for r in rows):
        raise ValueError("krumsiek11.txt is malformed: expected a '# it gene1 gene2 ...' header and one "
                         "value per gene on every line")
    X = np.clip(np.asarray(rows, dtype=np.float32), 0.0, None)  # (640, 11); noise leaves values ≥ −0.01
    labels = np.array(["progenitor"] * X.shape[0], dtype=object)
    for start, fate in _KRUMSIEK_FATES:
        labels[start:start + 80] = fate
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels), "time": np.asarray(steps, dtype=np.int64)},
                       index=[f"cell{i}" for i in range(X.shape[0])])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(header)))
    adata.uns["iroot"] = 0
    return adata


def krumsiek11_network() -> pd.DataFrame:
    """The signed regulatory network behind :func:`krumsiek11`.

    Returns
    -------
    pandas.DataFrame
        30 edges ``source, target, weight`` among the 11 genes (Hill-model coupling strengths
        of the simulation: positive activates, negative represses; 4 are autoregulation).

    Notes
    -----
    Licence BSD-3 (scanpy's ``sim_models/krumsiek11.txt`` coupling list); Krumsiek et al. 2011.
    """
    return pd.read_csv(_path("krumsiek11_grn_long.csv"))


#: The knock-outs of Papalexi et al. 2021 that move many of the 299 genes (IFN-γ pathway).
PAPALEXI_STRONG = ("IFNGR1", "IFNGR2", "JAK2", "STAT1", "IRF1")


def papalexi2021(keep_unassigned: bool = False):
    """THP-1 cells under IFN-γ in a pooled CRISPR knock-out screen (ECCITE-seq; Papalexi et al. 2021).

    Parameters
    ----------
    keep_unassigned
        Keep the 4,636 cells whose guides did not pass the assignment rule
        (``obs["perturbation"] == "unassigned"``); dropped by default.

    Returns
    -------
    anndata.AnnData
        16,093 cells × 299 genes (20,729 with ``keep_unassigned``), gene symbols in ``var_names``.

        - ``X`` and ``layers["counts"]``: raw UMI counts (float32, sparse CSR).
        - ``obs["perturbation"]``: ``control`` (1,912 non-targeting cells) or the knocked-out gene
          (25 genes, 33–1,056 cells each); ``obs["bio_rep"]``; guide-assignment columns.
        - ``var["is_perturbation_target"]``: the 9 knocked-out genes that are measured (CMTM6,
          IFNGR2, JAK2, NFKBIA, STAT1, STAT2, STAT3, TNFRSF14, UBE2L6). A knock-out of a gene
          that is not measured cannot be a node intervention of a grndiff model.
        - ``obsm["grna_counts"]`` (cells × 110 gRNAs), names in ``uns["grna_names"]``.

    Notes
    -----
    Licence MIT (sceptredata, Katsevich lab, 2024: ``data/lowmoi_example_data.rda``, converted);
    data from Papalexi E. et al. 2021, *Nat. Genet.* 53:322–331, GEO GSE153056. The genes were
    downsampled to 299 by the sceptredata authors, so library sizes cover these genes only.
    Guides were assigned with sceptre's low-MOI "maximum" rule (top gRNA > 80 % of a cell's gRNA
    UMIs and ≥ 5 gRNA UMIs). The strong knock-outs (IFNGR1/2, JAK2, STAT1, IRF1:
    :data:`PAPALEXI_STRONG`) shift 17–22 of the 299 genes by more than 0.2 log units; most others
    move little.
    """
    a = _read("papalexi2021_thp1_crisprko_299genes.h5ad")
    if not keep_unassigned:
        a = a[a.obs["perturbation"].astype(str) != "unassigned"].copy()
    a.X = a.layers["counts"].astype(np.float32)
    a.layers["counts"] = a.X.copy()
    a.obs["perturbation"] = _category(a.obs["perturbation"])
    return a
