"""The evaluation protocol shared by the benchmarks (docs/evaluation.md), written once.

- :func:`log_expression` — library-size normalise to 1e4 and log1p (the space every score uses);
- :func:`reference_pca` — the 30-PC space of the real cells a score may see (for perturbation:
  all cells except the held-out ones);
- :func:`score_perturbation` / :func:`score_ceiling` — :func:`grndiff.metrics.evaluate_perturbation`
  and the split-half ceiling, appended as tidy records;
- :func:`average_groups` — ``group="all"`` rows: the mean over groups of each (method, metric);
- :func:`quiet` — silence Lightning and warnings in benchmark processes;
- :func:`seed_summary` — mean ± sd over seeds of each (dataset, method, group, metric).
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from _results import record

TOP = 20


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "grndiff"):
        logging.getLogger(name).setLevel(logging.ERROR)


def dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)


def log_expression(adata, layer: str = "counts") -> np.ndarray:
    """(N, G) float64 log1p CP10k of ``adata.layers[layer]``."""
    from grndiff.data import log1p_normalized_copy
    return dense(log1p_normalized_copy(adata, layer=layer).X)


def reference_pca(X: np.ndarray, seed: int = 0, n: int = 30):
    from grndiff.metrics import fit_pca
    return fit_pca(X, n=n, seed=seed)


def score_perturbation(records: list, dataset: str, method: str, seed: int, group: str, pred, true, ctrl, pca) -> dict:
    """Score one prediction (cells or a mean profile) and append its records; returns the metrics."""
    from grndiff.metrics import evaluate_perturbation
    m = evaluate_perturbation(pred, true, ctrl, pca=pca, top_n=TOP)
    for k, v in m.items():
        records.append(record(dataset, method, k, v, seed=seed, group=group))
    return m


def score_ceiling(records: list, dataset: str, seed: int, group: str, true, ctrl, pca) -> None:
    from grndiff.metrics import split_half_ceiling
    for k, v in split_half_ceiling(true, ctrl, seed=seed, top_n=TOP, pca=pca).items():
        records.append(record(dataset, "split_half", k, v, seed=seed, group=group))


def average_groups(records: list, dataset: str, groups, name: str = "all", complete_only: bool = False) -> None:
    """Append ``group=name`` rows: per (method, seed, metric) the mean over ``groups``; with
    ``complete_only`` only where that (method, seed) has every one of ``groups`` (a seed cut short
    by a time budget then gets no average)."""
    df = pd.DataFrame([r for r in records if r["dataset"] == dataset and r["group"] in set(groups)])
    if df.empty:
        return
    n_groups = df.groupby(["method", "seed"])["group"].nunique()
    complete = set(n_groups[n_groups == len(set(groups))].index)
    for (meth, seed, met), v in df.groupby(["method", "seed", "metric"], sort=False)["value"]:
        if complete_only and (meth, seed) not in complete:
            continue
        v = v.dropna()
        records.append(record(dataset, meth, met, v.mean() if len(v) else None, seed=int(seed), group=name))


def seed_summary(records: list, groups=("all",)) -> pd.DataFrame:
    """Mean, sd and n over seeds of every (dataset, method, group, metric) in ``groups``."""
    df = pd.DataFrame([r for r in records if r["group"] in set(groups)])
    if df.empty:
        return df
    g = df.dropna(subset=["value"]).groupby(["dataset", "group", "method", "metric"], sort=False)["value"]
    return g.agg(mean="mean", sd="std", n="count").reset_index()


def papalexi_measured(quick_cells: int | None = None, extra_genes=()):
    """``gd.datasets.papalexi2021()`` restricted to control + the knock-outs of *measured* genes (a
    knock-out of an unmeasured gene cannot be a node intervention) and of ``extra_genes`` (e.g. the
    genes of a prior, whose knock-outs become latent nodes), registered for grndiff;
    ``quick_cells`` keeps that many cells per label (seeded) for CI runs."""
    import grndiff as gd
    adata = gd.datasets.papalexi2021()
    lab = adata.obs["perturbation"].astype(str)
    known = set(adata.var_names) | set(extra_genes)
    adata = adata[((lab == "control") | lab.isin(known)).to_numpy()].copy()
    if quick_cells:
        lab = adata.obs["perturbation"].astype(str).to_numpy()
        rng = np.random.default_rng(0)
        rows = np.concatenate([rng.permutation(np.flatnonzero(lab == p))[:quick_cells] for p in sorted(set(lab))])
        adata = adata[np.sort(rows)].copy()
    adata.obs["perturbation"] = pd.Categorical(adata.obs["perturbation"].astype(str))
    gd.GRNDiff.setup_anndata(adata, layer="counts", perturbation_key="perturbation", control="control")
    return adata
