"""SERGIO simulations with known ground-truth networks and gene knock-outs (benchmark helpers).

The networks are the DS1–DS3 ground-truth GRNs of SERGIO (Dibaeinia & Sinha 2020, Cell Systems
11:252; PayamDiba/SERGIO, GPL-3), shipped in ``benchmarks/data/sergio/`` (see its README). Cells
are simulated with ``sergio-rs`` (Rust re-implementation of SERGIO v2, GPL-3), an optional,
benchmark-only dependency (``pip install sergio-rs``); grndiff itself never imports it.

A knock-out in sergio-rs copies the GRN without the gene and recomputes the hierarchy; the
removed gene is absent from the output, so here its row is filled with zeros (the gene is not
expressed). Control and knock-out cells share one master-regulator profile (same cell types), and
technical noise is added once to the concatenated matrix so that its per-gene outlier factors are
the same for every perturbation (noising each perturbation separately would create spurious DE).

Functions
---------
- :func:`read_network` — edges ``reg, target, k, n`` of DS1/DS2/DS3 (gene names ``G<i>``).
- :func:`signed_prior` — the ground-truth edges as a grndiff prior (``source, target, weight=sign(K)``).
- :func:`regulators` — regulators with at least ``min_targets`` targets.
- :func:`simulate` — an AnnData of control and perturbed cells (raw counts).
"""
from __future__ import annotations

import glob
import time
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

DATA_DIR = Path(__file__).resolve().parent / "data" / "sergio"
NETWORKS = {"ds1": "De-noised_100G_9T_300cPerT_4_DS1", "ds2": "De-noised_400G_9T_300cPerT_5_DS2",
            "ds3": "De-noised_1200G_9T_300cPerT_6_DS3"}
N_GENES = {"ds1": 100, "ds2": 400, "ds3": 1200}


def _sergio_rs():
    try:
        import sergio_rs  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("the SERGIO benchmarks need the optional simulator sergio-rs: "
                          "pip install sergio-rs (GPL-3; benchmark-only)") from e
    return sergio_rs


def gene_name(i: int) -> str:
    return f"G{int(i)}"


def read_network(name: str) -> pd.DataFrame:
    """Edges of a SERGIO network from its ``Interaction_cID_*.txt`` file.

    Each line is ``target, n_regs, reg_1..reg_n, K_1..K_n, coop_1..coop_n`` (``K`` signed:
    activation > 0, repression < 0; ``coop`` the Hill coefficient).

    Returns
    -------
    DataFrame with columns ``reg, target`` (gene names ``G<i>``), ``k`` (float), ``n`` (int).
    """
    if name not in NETWORKS:
        raise KeyError(f"unknown SERGIO network {name!r}; choose one of {sorted(NETWORKS)}")
    files = glob.glob(str(DATA_DIR / NETWORKS[name] / "Interaction_cID_*.txt"))
    if not files:
        raise FileNotFoundError(f"no Interaction_cID_*.txt under {DATA_DIR / NETWORKS[name]}")
    rows = []
    with open(files[0]) as fh:
        for line in fh:
            v = [float(x) for x in line.strip().split(",") if x]
            if not v:
                continue
            tar, m = int(v[0]), int(v[1])
            regs, ks, ns = v[2:2 + m], v[2 + m:2 + 2 * m], v[2 + 2 * m:2 + 3 * m]
            rows += [(gene_name(r), gene_name(tar), k, int(n)) for r, k, n in zip(regs, ks, ns)]
    return pd.DataFrame(rows, columns=["reg", "target", "k", "n"])


def signed_prior(edges: pd.DataFrame) -> pd.DataFrame:
    """The ground-truth GRN in decoupler long format: ``source, target, weight = sign(K)``."""
    return pd.DataFrame({"source": edges["reg"].to_numpy(), "target": edges["target"].to_numpy(),
                         "weight": np.sign(edges["k"].to_numpy()).astype(float)})


def regulators(edges: pd.DataFrame, min_targets: int = 3) -> list[str]:
    """Regulators with at least ``min_targets`` targets, sorted by gene index."""
    n = edges.groupby("reg")["target"].nunique()
    return sorted(n.index[n >= min_targets], key=lambda g: int(g[1:]))


def build_grn(edges: pd.DataFrame, decay: float = 0.8):
    """A ``sergio_rs.GRN`` from :func:`read_network` edges (master regulators set)."""
    s = _sergio_rs()
    grn = s.GRN()
    for reg, tar, k, n in edges.itertuples(index=False):
        grn.add_interaction(reg=s.Gene(name=reg, decay=decay), tar=s.Gene(name=tar, decay=decay), k=float(k),
                            h=None, n=int(n))  # h=None: half-response computed from the regulators' steady state
    grn.set_mrs()
    return grn


def simulate(edges: pd.DataFrame, n_genes: int, perturbations: Sequence[str], *, n_types: int = 3,
             n_cells: int = 100, seed: int = 0, noise: str | None = "DS1", sep: str = "+",
             control: str = "control", verbose: bool = False) -> ad.AnnData:
    """Simulate control and knock-out cells of one network.

    Parameters
    ----------
    edges
        :func:`read_network` output.
    n_genes
        Number of genes ``G`` (genes ``G0 … G<G-1>``).
    perturbations
        Labels: ``control``, a gene (``"G30"``) or a combination (``"G30+G41"``, knocked out together).
    n_types, n_cells
        Cell types of the random master-regulator profile and cells per type and perturbation.
    seed
        Seeds the master-regulator profile, every simulation and the technical noise.
    noise
        sergio-rs ``NoiseSetting`` name (``"DS1"`` …) or None for clean expression.

    Returns
    -------
    AnnData (N, G) with raw counts in ``X`` and ``layers["counts"]`` (float32); ``obs``:
    ``perturbation`` and ``cell_type`` (``type_0`` …). Cells left without any count by the
    technical noise (rare) are dropped.
    """
    s = _sergio_rs()
    genes = [gene_name(i) for i in range(n_genes)]
    pos = {g: i for i, g in enumerate(genes)}
    grn = build_grn(edges)
    mr = s.MrProfile.from_random(grn, num_cell_types=n_types, low_range=(0.5, 2.0), high_range=(2.0, 4.0), seed=seed)
    blocks, labels, types = [], [], []
    t0 = time.perf_counter()
    for j, p in enumerate(perturbations):
        g, m = grn, mr
        parts = [] if p == control else str(p).split(sep)
        for q in parts:
            if q not in pos:
                raise KeyError(f"perturbed gene {q!r} of {p!r} is not one of the {n_genes} network genes")
            g, m = g.ko_perturbation(q, m)
        df = s.Sim(g, num_cells=n_cells, safety_iter=150, scale_iter=10, dt=0.01, noise_s=1,
                   seed=seed * 100_003 + j).simulate(m)
        block = np.zeros((n_genes, df.width - 1))  # (G, n_types · n_cells); knocked-out rows stay 0
        block[[pos[x] for x in df["Genes"].to_list()]] = df.drop("Genes").to_numpy()
        blocks.append(block)
        labels += [p] * block.shape[1]
        types += [c.rsplit("_cell_", 1)[0] for c in df.columns[1:]]
    clean = np.concatenate(blocks, axis=1)  # (G, N)
    if verbose:
        print(f"  simulated {len(perturbations)} conditions × {clean.shape[1] // len(perturbations)} cells in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    X = clean if noise is None else s.add_technical_noise(clean, getattr(s.NoiseSetting, noise), seed=seed)
    X = np.ascontiguousarray(X.T, dtype=np.float32)  # (N, G)
    if noise is None:
        X = np.round(X)  # clean expression as pseudo-counts
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels), "cell_type": pd.Categorical(types)},
                       index=[f"cell{i}" for i in range(X.shape[0])])
    keep = X.sum(1) > 0  # heavy dropout can empty a cell; library-size normalisation needs ≥ 1 count
    if verbose and not keep.all():
        print(f"  dropped {int((~keep).sum())} cells without counts", flush=True)
    X, obs = X[keep], obs[keep]
    out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    out.layers["counts"] = X.copy()
    return out
