#!/usr/bin/env python
"""Interpretation benchmark (issue 8): do grndiff's pathway tokens say what biology expects?

Data: ``kang2018`` (1,556 PBMCs × 1,267 genes, 5 cell types, ctrl vs IFN-β stim). Model: the
default grndiff (CollecTRI graph + Hallmark tokens; with ``min_module_size=5`` 45 of the 50 Hallmark
sets keep ≥ 5 of Kang's genes, so there are 45 tokens), trained on all cells.

Metrics
-------
``rank_ifn_alpha`` / ``rank_ifn_gamma``  (group = cell type)
    Within each cell type, tokens are ranked by |Cohen's d| of stim vs ctrl
    (:func:`grndiff.tl.rank_tokens`); the rank (1 = moves most) of HALLMARK_INTERFERON_ALPHA_RESPONSE
    and HALLMARK_INTERFERON_GAMMA_RESPONSE, out of ``n_tokens``. Goal: both ≤ 3 in every cell type.
    ``ifn_top3_all_types`` (group "all") is 1 when that holds.
``spearman_vs_ulm`` (group = module; "all" = median over modules)
    Spearman correlation across all cells between a module's token activity and decoupler's ULM
    score (``decoupler.mt.ulm``) of the same gene set on CP10k + log1p data. Goal: ≥ 0.5 for both IFN
    modules.
``n_enriched_learned_modules``
    A second model with 32 learned soft modules (graph CollecTRI, no Hallmark tokens): learned
    modules whose top-50 genes are enriched (hypergeometric, BH FDR < 0.05 over all module × set
    tests; :func:`grndiff.tl.module_enrichment`) for at least one Hallmark set.

Methods (rows): ``grndiff`` token activities computed with the null condition token (activities
then depend on the expression only; the condition label cannot leak into them), ``grndiff_cond``
with each cell's own conditions, and ``ulm`` (decoupler's ULM scores ranked the same way: the
reference for what a per-cell gene-set score gives), ``grndiff_learned32`` for the learned model.

    python benchmarks/interpretation.py            # full → benchmarks/results/interpretation.{json,md}
    python benchmarks/interpretation.py --quick --out DIR   # CI smoke run (tiny budgets)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
from _results import command_string, record, write_results
from scipy import stats

IFN = {"rank_ifn_alpha": "HALLMARK_INTERFERON_ALPHA_RESPONSE",
       "rank_ifn_gamma": "HALLMARK_INTERFERON_GAMMA_RESPONSE"}
DATASET = "kang2018"


def ulm_scores(adata, net) -> pd.DataFrame:
    """decoupler ULM scores (cells × gene sets) on CP10k + log1p of the counts."""
    import decoupler as dc
    import scanpy as sc

    a = adata.copy()
    a.X = a.layers["counts"].copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    dc.mt.ulm(a, net=net, tmin=5)
    return a.obsm["score_ulm"].copy()


def ifn_ranks(adata, scores: pd.DataFrame, method: str, seed: int) -> tuple[list[dict], bool]:
    """Records of the IFN tokens' ranks (stim vs ctrl, |Cohen's d|) within each cell type."""
    import grndiff as gd

    recs, ok = [], True
    for ct in sorted(adata.obs["cell_type"].astype(str).unique()):
        sub = adata[adata.obs["cell_type"].astype(str) == ct].copy()
        sub.obsm["bench_tokens"] = scores.loc[sub.obs_names]
        tab = gd.tl.rank_tokens(sub, "condition", reference="ctrl", key="bench")
        tab = tab[tab["group"] == "stim"].set_index("token")
        for metric, name in IFN.items():
            r = int(tab.loc[name, "rank"]) if name in tab.index else None
            ok = ok and r is not None and r <= 3
            recs.append(record(DATASET, method, metric, r, seed, ct))
            recs.append(record(DATASET, method, metric.replace("rank", "d"),
                               tab.loc[name, "effect_size"] if name in tab.index else None, seed, ct))
        recs.append(record(DATASET, method, "n_tokens", len(tab), seed, ct))
        top = tab.sort_values("rank").index[:3].tolist()
        print(f"  [{method}] {ct:>18}: top-3 {top}", flush=True)
    recs.append(record(DATASET, method, "ifn_top3_all_types", float(ok), seed))
    return recs, ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets for CI (numbers meaningless)")
    p.add_argument("--steps", type=int, default=2000, help="training steps of the Hallmark model")
    p.add_argument("--learned-steps", type=int, default=1200, help="training steps of the learned-module model")
    p.add_argument("--n-learned", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import grndiff as gd

    steps = 20 if args.quick else args.steps
    lsteps = 20 if args.quick else args.learned_steps
    adata = gd.datasets.kang2018()
    gd.GRNDiff.setup_anndata(adata, layer="counts", condition_keys=["cell_type", "condition"])
    hallmark = gd.priors.load("hallmark")
    records: list[dict] = []

    # ---------------------------------------------------------------- Hallmark-token model
    t0 = time.time()
    model = gd.GRNDiff(adata, prior="collectri", modules="hallmark")
    model.train(max_steps=steps, max_epochs=10_000, batch_size=64, seed=args.seed, progress_bar=False)
    train_s = time.time() - t0
    print(f"trained {model} in {train_s:.0f} s", flush=True)
    records.append(record(DATASET, "grndiff", "train_seconds", train_s, args.seed))
    records.append(record(DATASET, "grndiff", "train_steps", steps, args.seed))

    acts = {"grndiff": model.get_token_activities(adata, use_conditions=False),
            "grndiff_cond": model.get_token_activities(adata, use_conditions=True)}
    net = hallmark[hallmark["source"].isin(model.token_names)]
    ulm = ulm_scores(adata, net)
    ulm = ulm[[c for c in model.token_names if c in ulm.columns]]
    acts["ulm"] = ulm

    status = {}
    for method, scores in acts.items():
        recs, ok = ifn_ranks(adata, scores, method, args.seed)
        records += recs
        status[method] = ok

    rho_by_method = {}
    for method in ("grndiff", "grndiff_cond"):
        rhos = {}
        for m in ulm.columns:
            rhos[m] = stats.spearmanr(acts[method][m].to_numpy(), ulm[m].to_numpy()).statistic
        for m in IFN.values():
            records.append(record(DATASET, method, "spearman_vs_ulm", rhos.get(m), args.seed, m))
        records.append(record(DATASET, method, "spearman_vs_ulm", float(np.nanmedian(list(rhos.values()))),
                              args.seed))
        records.append(record(DATASET, method, "spearman_vs_ulm_min", float(np.nanmin(list(rhos.values()))),
                              args.seed))
        print(f"  [{method}] spearman vs ULM: median {np.nanmedian(list(rhos.values())):.3f}; "
              + ", ".join(f"{m.split('_', 1)[1]} {rhos[m]:.3f}" for m in IFN.values()), flush=True)
        rho_by_method[method] = rhos
    per_module = rho_by_method["grndiff"]

    # partial results first: an interrupted run keeps the Hallmark-model numbers
    write_results("interpretation", records, command_string(),
                  extra={"config": {"steps": steps, "quick": bool(args.quick)},
                         "notes": ["PARTIAL: learned-module model still running or interrupted."]},
                  out_dir=args.out)

    # ---------------------------------------------------------------- learned-module model
    t0 = time.time()
    learned = gd.GRNDiff(adata, prior="collectri", modules=None, n_learned_modules=args.n_learned)
    learned.train(max_steps=lsteps, max_epochs=10_000, batch_size=64, seed=args.seed, progress_bar=False)
    lt = time.time() - t0
    enr = gd.tl.module_enrichment(learned, "hallmark", n_top=50, fdr=0.05)
    best = enr.sort_values("pval").groupby("module", sort=False).head(1)
    best = best[best["significant"]].sort_values("fdr")
    n_enriched = int(best["module"].nunique())
    print(f"learned model ({lt:.0f} s): {n_enriched}/{args.n_learned} modules enriched (FDR < 0.05)", flush=True)
    records += [record(DATASET, "grndiff_learned32", "n_enriched_learned_modules", n_enriched, args.seed),
                record(DATASET, "grndiff_learned32", "n_learned_modules", args.n_learned, args.seed),
                record(DATASET, "grndiff_learned32", "train_steps", lsteps, args.seed),
                record(DATASET, "grndiff_learned32", "train_seconds", lt, args.seed)]

    goals = {
        "ifn_top3_every_cell_type (grndiff)": status["grndiff"],
        "ifn_top3_every_cell_type (grndiff_cond)": status["grndiff_cond"],
        "spearman_vs_ulm >= 0.5 for both IFN modules (grndiff)": bool(all(per_module[m] >= 0.5 for m in IFN.values())),
    }
    enriched = [f"{r.module}: {r.gene_set} (overlap {r.overlap}/{r.n_top}, FDR {r.fdr:.1e})" for r in best.itertuples()]
    notes = [
        f"Hallmark model: CollecTRI + Hallmark tokens ({len(model.token_names)} of 50 Hallmark sets keep ≥ 5 of "
        f"{adata.n_vars} genes), hidden 32, depth 2, token_depth 2, batch 64, {steps} steps, trained on all "
        f"{adata.n_obs} cells, {args.threads} thread(s).",
        "Ranks are out of n_tokens (per cell type); rank 1 = largest |Cohen's d| stim vs ctrl within the cell type.",
        "grndiff: activities with the null condition token (expression only); grndiff_cond: with each cell's "
        "own cell_type/condition labels; ulm: decoupler ULM scores ranked the same way (reference).",
        f"Learned model: CollecTRI + {args.n_learned} learned soft modules, no Hallmark tokens, {lsteps} steps; "
        "enrichment = hypergeometric test of each module's top-50 genes against Hallmark (background = the "
        "1,267 genes), BH over all module × set tests.",
        "Goals: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in goals.items()),
        "Enriched learned modules: " + ("; ".join(enriched) if enriched else "none"),
    ]
    if args.quick:
        notes.insert(0, "QUICK RUN: tiny budgets, numbers are not meaningful.")
    extra = {"config": {"steps": steps, "learned_steps": lsteps, "n_learned": args.n_learned, "seed": args.seed,
                        "threads": args.threads, "quick": bool(args.quick)},
             "goals": goals,
             "spearman_vs_ulm_per_module": {k: round(float(v), 4) for k, v in sorted(per_module.items())},
             "notes": notes}
    paths = write_results("interpretation", records, command_string(), extra=extra, out_dir=args.out)
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
