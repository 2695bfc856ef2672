"""Sanity check of the evaluation protocol (docs/evaluation.md) on kang2018: not a benchmark, not a test.

Reproduces the reference points the team relies on:

- real-vs-real: 80/20 split of every (cell type × condition) group; held-out cells compared with
  the training cells. This is the resolution of each metric (expected energy ≈ 0.02, AUC ≈ 0.5).
- per-group Gaussian in PCA (:class:`grndiff.baselines.GaussianPCA` fitted on the training
  cells, as many cells sampled per group as are held out): expected energy ≈ 0.12, AUC ≈ 0.54;
  reported with (``gaussian_pca``, the shipped default) and without (``gaussian_pca_noclip``)
  clipping the decoded values at 0.

With 20–40 held-out cells per group the figures move by ~0.1 (energy) from split to split, so
the script averages over several seeded splits and prints the standard error.

Distances are computed in the 30-PC space of *all* real cells (train + held-out). With
``--pca-on-train`` the PCA is fitted on the training cells only, the biased variant the design
warns against, for comparison.

    python benchmarks/_protocol_check.py [--n-seeds 10] [--all-metrics] [--pca-on-train]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "expression"
                / "kang2018_pbmc_ifnb_1556.h5ad")
GROUPBY = ["cluster_id", "group_id"]


def load_log(path: Path):
    """Counts in X → CP10k → log1p; a single ``group`` column = cluster_id|group_id."""
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(path)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.X = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
    adata.obs["group"] = adata.obs[GROUPBY].astype(str).agg("|".join, axis=1).astype("category")
    return adata


def split(adata, frac: float = 0.2, seed: int = 0):
    """Seeded per-group split: returns (train, held_out)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(adata.n_obs, dtype=bool)
    for g in adata.obs["group"].cat.categories:
        idx = np.flatnonzero(adata.obs["group"].to_numpy() == g)
        held[rng.choice(idx, int(round(frac * len(idx))), replace=False)] = True
    return adata[~held].copy(), adata[held].copy()


def main(argv=None) -> pd.DataFrame:
    from grndiff.baselines import GaussianPCA
    from grndiff.metrics import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--n-seeds", type=int, default=10, help="number of seeded splits (seeds 0..n-1)")
    p.add_argument("--all-metrics", action="store_true", help="also MMD, W2 and the gene-space metrics")
    p.add_argument("--pca-on-train", action="store_true", help="fit the PCA on the training cells only (biased)")
    args = p.parse_args(argv)

    metrics = None if args.all_metrics else ["energy_distance", "classifier_auc"]
    adata = load_log(args.data)
    rows = []
    seeds = list(range(args.n_seeds))
    for seed in seeds:
        t0 = time.perf_counter()
        train, held = split(adata, seed=seed)
        reference = train if args.pca_on_train else adata
        n_held = held.obs["group"].value_counts().to_dict()
        generated = {"real_vs_real": train}
        for name, clip in (("gaussian_pca", True), ("gaussian_pca_noclip", False)):
            gauss = GaussianPCA(n_comps=30, seed=seed, clip=clip).fit_anndata(train, groupby="group")
            generated[name] = gauss.sample_anndata(n_held, seed=seed)
        for method, gen in generated.items():
            rep = evaluate(held, gen, groupby="group", pca_reference=reference, metrics=metrics, seed=seed)
            rows.append(rep.assign(method=method, seed=seed))
        print(f"seed {seed}: {time.perf_counter() - t0:.1f} s", flush=True)
    res = pd.concat(rows, ignore_index=True)
    per_group = res.pivot_table(index=["method", "group"], columns="metric", values="value", aggfunc="mean")
    avg = res[res.group == "all"].pivot_table(index="method", columns="metric", values="value",
                                              aggfunc=["mean", "sem"])
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
        print(f"\nPCA fitted on {'train cells only' if args.pca_on_train else 'all real cells'}; {len(seeds)} splits")
        print("\nper group (mean over seeds):\n", per_group)
        print("\naveraged over groups (mean and standard error over splits):\n", avg)
    return res


if __name__ == "__main__":
    main()
