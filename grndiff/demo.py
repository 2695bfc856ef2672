"""The main job (``make demo`` / ``grndiff demo``): train on the shipped Kang 2018 PBMC data with the
CollecTRI graph and Hallmark modules, generate every (cell type, condition) group, evaluate against
held-out real cells next to two baselines, and write ``report.md`` with a table and a UMAP."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def run_demo(out: str = "runs/demo", *, quick: bool = False, seed: int = 0) -> pd.DataFrame:
    import anndata as ad
    import matplotlib
    matplotlib.use("Agg")
    import scanpy as sc

    from . import datasets, metrics
    from .baselines import GaussianPCA
    from .data import log1p_normalized_copy, split_indices
    from .model import GRNDiff

    t_start = time.time()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    adata = datasets.kang2018()
    adata.obs["group"] = (adata.obs["cell_type"].astype(str) + " | "
                          + adata.obs["condition"].astype(str)).astype("category")
    train_idx, test_idx = split_indices(adata.obs, val_fraction=0.2, seed=seed, stratify_key="group")
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    real_all = log1p_normalized_copy(adata, layer="counts")
    real_test = real_all[test_idx].copy()
    print(f"[grndiff demo] kang2018: {adata.n_obs} cells × {adata.n_vars} genes; "
          f"train {train.n_obs}, held-out {test.n_obs}", flush=True)  # a log file sees each line as it happens

    GRNDiff.setup_anndata(train, layer="counts", condition_keys=["cell_type", "condition"])
    steps = 150 if quick else 1500
    rows, generated = [], {}
    cond_df = test.obs[["cell_type", "condition"]].astype(str).reset_index(drop=True)
    for name, kw in [("grndiff", {"prior": "collectri", "modules": "hallmark"}),
                     ("mlp", {"prior": None, "modules": None, "backbone": "mlp", "hidden": 512, "depth": 3})]:
        t0 = time.time()
        model = GRNDiff(train, **kw)
        print(f"[grndiff demo] training {name} ({steps} steps; progress on stderr): {model}", flush=True)
        model.train(max_steps=steps, max_epochs=10_000, batch_size=64, val_fraction=0.0, seed=seed,
                    progress_bar=not quick)
        train_s = time.time() - t0
        print(f"[grndiff demo] sampling {len(cond_df)} cells from {name}", flush=True)
        gen = model.sample(len(cond_df), cond_df, n_steps=20 if quick else 50, seed=seed, progress=not quick)
        generated[name] = gen
        rows.append((name, train_s))
        if name == "grndiff":
            model.save(out_dir / "model", overwrite=True)
    # per-group Gaussian in the 30-PC space of the training cells, decoded back to genes
    real_train = real_all[train_idx]
    g = GaussianPCA(n_comps=30, seed=seed).fit(_dense(real_train.X), real_train.obs["group"].astype(str).to_numpy())
    counts = test.obs["group"].astype(str).value_counts()
    Xg, labels = g.sample({k: int(v) for k, v in counts.items()})
    gauss = ad.AnnData(Xg.astype(np.float32), var=real_test.var[[]],  # str obs names: anndata would warn
                       obs=pd.DataFrame({"group": labels}, index=[f"gaussian-{i}" for i in range(len(labels))]))
    gauss.obs["cell_type"] = [s.split(" | ")[0] for s in labels]
    gauss.obs["condition"] = [s.split(" | ")[1] for s in labels]
    generated["gaussian"] = gauss

    tables = []
    for name, gen in generated.items():
        gen.obs["group"] = (gen.obs["cell_type"].astype(str) + " | " + gen.obs["condition"].astype(str)).values
        rep = metrics.evaluate(real_test, gen, groupby="group", pca_reference=real_all, seed=seed)
        rep = rep[rep["group"] == "all"].assign(method=name)
        tables.append(rep)
    real_train_eval = real_all[train_idx].copy()
    rr = metrics.evaluate(real_test, real_train_eval, groupby="group", pca_reference=real_all, seed=seed)
    tables.append(rr[rr["group"] == "all"].assign(method="real_vs_real"))
    table = pd.concat(tables).pivot_table(index="method", columns="metric", values="value")
    for name, s in rows:
        table.loc[name, "train_seconds"] = round(s, 1)
    order = [m for m in ("real_vs_real", "gaussian", "mlp", "grndiff") if m in table.index]
    table = table.loc[order]
    table.to_csv(out_dir / "metrics.csv")

    # UMAP of held-out real vs grndiff-generated cells
    both = ad.concat({"real": real_test, "grndiff": generated["grndiff"]}, label="source", join="inner",
                     index_unique="-")
    sc.pp.pca(both, n_comps=30, random_state=seed)
    sc.pp.neighbors(both, random_state=seed)
    sc.tl.umap(both, random_state=seed)
    fig = sc.pl.umap(both, color=["source", "cell_type", "condition"], return_fig=True, show=False, wspace=0.35)
    fig.savefig(out_dir / "umap.png", dpi=110, bbox_inches="tight")

    wall = time.time() - t_start
    cols = [c for c in ("energy_distance", "mmd_rbf", "wasserstein2", "mean_pearson", "var_pearson", "classifier_auc",
                        "train_seconds") if c in table.columns]
    md = ["# grndiff demo report", "",
          f"Kang et al. 2018 PBMCs (IFN-β), {adata.n_obs} cells × {adata.n_vars} genes; 80/20 split stratified "
          f"by cell type × condition (seed {seed}); {steps} training steps; "
          "generated as many cells per group as held out.",
          "Distances in the 30-PC space of all real cells (lower is better; `real_vs_real` = train vs held-out real "
          "cells, the metric's resolution); Pearson of per-gene means/variances (higher is better); classifier AUC "
          "(0.5 = indistinguishable).", "",
          table[cols].round(4).to_markdown(), "", "![UMAP of held-out real vs generated cells](umap.png)", "",
          f"Wall time: {wall:.0f} s. Command: `grndiff demo --out {out}{' --quick' if quick else ''}`."]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(table.reset_index().to_dict(orient="records"), indent=1))
    print("\n".join(md))
    return table


def _dense(X):
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)
