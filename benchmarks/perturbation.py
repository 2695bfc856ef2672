"""Perturbation prediction benchmark (DESIGN.md §4): unseen perturbations vs simple baselines.

Two settings, one run, results in ``benchmarks/results/perturbation.{json,md}``:

- **kang2018** — IFN-β stimulation of PBMCs. For each of the 5 cell types, its stimulated cells
  are held out (the model and the PCA never see them); the model predicts them from that type's
  control cells. ``grndiff`` transports control cells (``source="control"``,
  ``match_keys=["cell_type"]``, CollecTRI + Hallmark); ``grndiff_noise`` is the same model with
  ``source="noise"``, predicting by inverting each control cell to noise and integrating forward
  under ``condition="stim"``.
- **sergio_ds2 / sergio_ds3** (single knock-outs) and **sergio_ds1_double** (pairs of
  knock-outs), simulated with sergio-rs on SERGIO's ground-truth networks (``benchmarks/sergio.py``).
  25 % of the knock-outs (of the doubles, for DS1) are held out, three seeded splits. grndiff is
  trained with the true signed network (``grndiff``), a degree-preserving shuffle of it
  (``grndiff_shuffled``) and no graph at all (``grndiff_nograph``: self-loops only, so the
  knocked-out gene's flag cannot reach other genes except through the global conditioning).

Baselines (``grndiff.baselines``): ``no_change``; ``mean_shift`` (Kang: stim − ctrl shift averaged
over the other cell types; SERGIO: averaged over all training knock-outs); ``additive`` (doubles:
ctrl + Δa + Δb of the singles); ``linear`` (LinearPCARidge, Ahlmann-Eltze et al. 2025: gene
perturbations only, so not on Kang); ``split_half`` (one half of the true cells predicts the other:
the resolution of the metrics). Metrics (``grndiff.metrics.evaluate_perturbation``) in log1p CP10k
space: Pearson Δ on the top-20 DE genes (largest |true − ctrl|) and on all genes, direction
accuracy on the top 20, energy distance in PCA(30) fitted on all cells except the held-out ones.

Usage::

    python benchmarks/perturbation.py            # full run (~1 h on 1 CPU thread)
    python benchmarks/perturbation.py --quick    # CI smoke run (< 2 min), results under /tmp

Every torch computation uses one CPU thread (``torch.set_num_threads(1)``) unless ``--threads``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _results import command_string, record, write_results  # noqa: E402
import sergio as S  # noqa: E402

DEFAULT_PARTS = ("kang", "ds2", "ds1_double", "ds3")
TOP = 20


# ------------------------------------------------------------------------------ helpers
def _quiet():
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "grndiff"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)


def _log(adata) -> np.ndarray:
    from grndiff.data import log1p_normalized_copy
    return _dense(log1p_normalized_copy(adata, layer="counts").X)


def _score(records, dataset, method, seed, group, pred, true, ctrl, pca):
    from grndiff.metrics import evaluate_perturbation
    m = evaluate_perturbation(pred, true, ctrl, pca=pca, top_n=TOP)
    for k, v in m.items():
        records.append(record(dataset, method, k, v, seed=seed, group=group))
    return m


def _ceiling(records, dataset, seed, group, true, ctrl, pca):
    from grndiff.metrics import split_half_ceiling
    m = split_half_ceiling(true, ctrl, seed=seed, top_n=TOP, pca=pca)
    for k, v in m.items():
        records.append(record(dataset, "split_half", k, v, seed=seed, group=group))


def _average(records, dataset, seed, groups):
    """Add ``group="all"`` rows: mean over ``groups`` of each (method, metric) of this dataset/seed."""
    df = pd.DataFrame([r for r in records if r["dataset"] == dataset and r["seed"] == seed and r["group"] in groups])
    for (meth, met), v in df.groupby(["method", "metric"], sort=False)["value"]:
        v = v.dropna()
        records.append(record(dataset, meth, met, v.mean() if len(v) else None, seed=seed, group="all"))


def _train(model, steps, seed, batch_size=64):
    t0 = time.perf_counter()
    model.train(max_steps=steps, max_epochs=10_000, batch_size=batch_size, val_fraction=0.02, seed=seed,
                split_seed=seed, progress_bar=False)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ Kang
def run_kang(args, records, log, checkpoint=lambda: None):
    import grndiff as gd
    from grndiff.baselines import MeanShift
    from grndiff.metrics import fit_pca

    ds = "kang2018"
    adata = gd.datasets.kang2018()
    if args.quick:  # a few hundred genes and two held-out types keep CI fast
        keep = np.argsort(-_dense(adata.layers["counts"]).mean(0))[:200]
        adata = adata[:, np.sort(keep)].copy()
    gd.GRNDiff.setup_anndata(adata, layer="counts", condition_keys=["cell_type", "condition"],
                             control_obs={"condition": "ctrl"})
    X = _log(adata)  # (N, G) log1p CP10k
    ct, cond = adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["condition"].astype(str).to_numpy()
    types = sorted(set(ct))[: (2 if args.quick else None)]
    sources = ["control", "noise"] if args.kang_noise else ["control"]
    for t in types:
        held = (ct == t) & (cond == "stim")
        is_ctrl = (ct == t) & (cond == "ctrl")
        true, ctrl = X[held], X[is_ctrl]
        pca = fit_pca(X[~held], n=30, seed=0)
        _score(records, ds, "no_change", 0, t, ctrl, true, ctrl, pca)
        ms = MeanShift().fit(X[~held], cond[~held], "ctrl", groups=ct[~held])
        _score(records, ds, "mean_shift", 0, t, ms.predict(ctrl, "stim", exclude_group=t), true, ctrl, pca)
        _ceiling(records, ds, 0, t, true, ctrl, pca)
        train = adata[~held].copy()
        for src in sources:
            name = "grndiff" if src == "control" else "grndiff_noise"
            model = gd.GRNDiff(train, prior="collectri", modules="hallmark", source=src,
                               match_keys=["cell_type"] if src == "control" else None, **args.net)
            sec = _train(model, args.kang_steps, seed=0)
            t1 = time.perf_counter()
            pred = model.predict(adata[is_ctrl].copy(), {"condition": "stim"}, n_steps=args.n_steps, seed=0)
            m = _score(records, ds, name, 0, t, _dense(pred.X), true, ctrl, pca)
            records.append(record(ds, name, "train_seconds", sec, seed=0, group=t))
            log(f"  kang {t:<18s} {name:<14s} train {sec:5.0f}s predict {time.perf_counter() - t1:4.0f}s "
                f"pearson_top20 {m['pearson_delta_top20']:.3f} energy {m['energy_distance']:.3f}")
        log(f"  kang {t:<18s} mean_shift pearson_top20 "
            f"{[r['value'] for r in records if r['group'] == t and r['method'] == 'mean_shift'][0]:.3f}")
        checkpoint()  # partial results survive an interrupted run
    _average(records, ds, 0, types)


# ------------------------------------------------------------------------------ SERGIO
def _splits(items, n_splits, frac, seed0=0):
    """``n_splits`` seeded random held-out subsets of ``frac`` of ``items``."""
    k = max(1, int(round(frac * len(items))))
    return [sorted(np.random.default_rng(seed0 + s).choice(items, size=k, replace=False).tolist())
            for s in range(n_splits)]


def run_sergio(args, records, log, net: str, doubles: bool = False, checkpoint=lambda: None):
    import grndiff as gd
    from grndiff.baselines import LinearPCARidge, MeanShift, additive
    from grndiff.metrics import fit_pca

    ds = f"sergio_{net}_double" if doubles else f"sergio_{net}"
    edges = S.read_network(net)
    regs = S.regulators(edges, 3)
    if args.quick:
        regs = regs[:6] if not doubles else regs[:4]
    pairs = [f"{a}+{b}" for i, a in enumerate(regs) for b in regs[i + 1:]] if doubles else []
    perts = ["control"] + regs + pairs
    t0 = time.perf_counter()
    adata = S.simulate(edges, S.N_GENES[net], perts, n_types=3, n_cells=args.sergio_cells, seed=0)
    log(f"  {ds}: simulated {len(perts)} conditions, {adata.n_obs} cells × {adata.n_vars} genes in "
        f"{time.perf_counter() - t0:.0f}s")
    gd.GRNDiff.setup_anndata(adata, layer="counts", condition_keys=["cell_type"], perturbation_key="perturbation",
                             control="control")
    X = _log(adata)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    is_ctrl = lab == "control"
    ctrl = X[is_ctrl]
    prior = S.signed_prior(edges)
    candidates = pairs if doubles else regs
    splits = _splits(candidates, args.n_splits, 0.25)
    for split, held_out in enumerate(splits):
        if split < args.first_split:  # done by an earlier run (split s is the same subset in every run)
            continue
        held = np.isin(lab, held_out)
        pca = fit_pca(X[~held], n=30, seed=split)
        train_labels = [p for p in regs + pairs if p not in held_out]
        deltas = {p: X[lab == p].mean(0) - ctrl.mean(0) for p in train_labels}
        ms = MeanShift().fit(X[~held], lab[~held], "control")
        lin = LinearPCARidge(n_comps=10, ridge=0.1).fit(deltas, expression=X[~held], genes=list(adata.var_names))
        for p in held_out:
            true = X[lab == p]
            _score(records, ds, "no_change", split, p, ctrl, true, ctrl, pca)
            _score(records, ds, "mean_shift", split, p, ms.predict(ctrl), true, ctrl, pca)
            if doubles:
                singles = {q: deltas[q] for q in regs}
                _score(records, ds, "additive", split, p, additive(ctrl, singles, p), true, ctrl, pca)
            _score(records, ds, "linear", split, p, ctrl + lin.predict(p), true, ctrl, pca)
            _ceiling(records, ds, split, p, true, ctrl, pca)
        train = adata[~held].copy()
        rng = np.random.default_rng(split)  # prediction starts from a random subset of control cells (CPU time)
        ctrl_rows = np.flatnonzero(is_ctrl)
        ctrl_ad = adata[np.sort(rng.choice(ctrl_rows, min(args.pred_cells, ctrl_rows.size), replace=False))].copy()
        variants = {"grndiff": prior, "grndiff_shuffled": gd.priors.shuffle_edges(prior, seed=split),
                    "grndiff_nograph": None}
        for name, pr in variants.items():
            model = gd.GRNDiff(train, prior=pr, modules=None, source="control", match_keys=["cell_type"], **args.net)
            sec = _train(model, args.sergio_steps, seed=split)
            t1 = time.perf_counter()
            vals = []
            for p in held_out:
                pred = model.predict(ctrl_ad, {"perturbation": p}, n_steps=args.n_steps, seed=split)
                m = _score(records, ds, name, split, p, _dense(pred.X), X[lab == p], ctrl, pca)
                vals.append(m["pearson_delta_top20"])
            records.append(record(ds, name, "train_seconds", sec, seed=split, group="all"))
            log(f"  {ds} split {split} {name:<17s} train {sec:4.0f}s predict {time.perf_counter() - t1:4.0f}s "
                f"pearson_top20 {np.nanmean(vals):.3f}")
            checkpoint()
        _average(records, ds, split, held_out)
        summ = {r["method"]: r["value"] for r in records if r["dataset"] == ds and r["seed"] == split
                and r["group"] == "all" and r["metric"] == "pearson_delta_top20"}
        log(f"  {ds} split {split} pearson_top20: " + ", ".join(f"{k} {v:.3f}" for k, v in summ.items()
                                                                  if v is not None))


# ------------------------------------------------------------------------------ main
def _summary(records) -> list[str]:
    """Headline lines: per dataset, each method's Pearson Δ top-20 and energy averaged over splits."""
    df = pd.DataFrame([r for r in records if r["group"] == "all"])
    if df.empty:
        return []
    out = []
    for ds, d in df.groupby("dataset", sort=False):
        tab = d.pivot_table(index="method", columns="metric", values="value", aggfunc="mean", sort=False)
        cols = [c for c in ("pearson_delta_top20", "pearson_delta_all", "direction_acc_top20", "energy_distance")
                if c in tab.columns]
        line = "; ".join(f"{m}: " + ", ".join(f"{c.replace('_delta', 'Δ')} {tab.loc[m, c]:.3f}" for c in cols
                                              if pd.notna(tab.loc[m, c])) for m in tab.index)
        out.append(f"summary {ds} (group=all, mean over splits) — {line}")
    return out


def merge(paths, name="perturbation", out_dir=None):
    """Combine the results of runs done in parallel processes (``--name`` each) into one file."""
    import json
    objs = [json.loads(open(p).read()) for p in paths]
    records = [r for o in objs for r in o["records"]]
    def key(i, cfg):  # "ds3", or "ds3@split1" for a run that added splits from split 1 on
        if not cfg["parts_done"]:
            return f"run{i}"
        return cfg["parts_done"][0] + (f"@split{cfg['first_split']}" if cfg.get("first_split") else "")
    config = {key(i, o["config"]): o["config"] for i, o in enumerate(objs)}
    notes = []
    for o in objs:
        notes += [n for n in o.get("notes", []) if n not in notes and not n.startswith("summary")]
    notes += _summary(records)
    command = " ; ".join(o["command"] for o in objs)
    return write_results(name, records, command, extra={"config": config, "notes": notes}, out_dir=out_dir)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run (< 2 min); writes under a temp dir")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                    help=f"comma-separated subset of {','.join(DEFAULT_PARTS)} (run in this order)")
    ap.add_argument("--kang-steps", type=int, default=300)
    ap.add_argument("--sergio-steps", type=int, default=300)
    ap.add_argument("--sergio-cells", type=int, default=100, help="cells per cell type (3 types) and condition")
    ap.add_argument("--n-splits", type=int, default=3)
    ap.add_argument("--first-split", type=int, default=0,
                    help="SERGIO: skip splits below this one (to add splits to an earlier run; merge with --merge)")
    ap.add_argument("--n-steps", type=int, default=10, help="Euler steps of prediction")
    ap.add_argument("--pred-cells", type=int, default=150, help="SERGIO: control cells transported per knock-out")
    ap.add_argument("--no-kang-noise", dest="kang_noise", action="store_false",
                    help="skip the source='noise' variant on Kang")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="perturbation", help="results file name")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--merge", default=None,
                    help="comma-separated result JSONs of parallel runs to combine into --name (no training)")
    args = ap.parse_args(argv)
    if args.merge:
        print(merge(args.merge.split(","), args.name, args.out_dir))
        return None
    import torch
    torch.set_num_threads(args.threads)
    _quiet()
    args.net = {}
    out_dir = args.out_dir
    if args.quick:
        args.kang_steps, args.sergio_steps, args.n_splits, args.sergio_cells, args.n_steps = 30, 30, 1, 30, 5
        args.net = {"hidden": 16, "depth": 1, "token_depth": 1}
        args.kang_noise = False
        args.parts = "kang,ds2,ds1_double"
        out_dir = out_dir or tempfile.mkdtemp(prefix="grndiff-perturbation-")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in DEFAULT_PARTS]
    if bad:
        ap.error(f"unknown parts {bad}; choose from {DEFAULT_PARTS}")
    records: list[dict] = []
    t_start = time.perf_counter()
    done: list[str] = []

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    def save():
        config = {"kang_steps": args.kang_steps, "sergio_steps": args.sergio_steps, "sergio_cells_per_type": args.sergio_cells,
                  "n_splits": args.n_splits, "euler_steps": args.n_steps, "sergio_pred_cells": args.pred_cells, "threads": args.threads,
                  "net": args.net or "defaults (hidden 32, depth 2, token_depth 2, cell_token)",
                  "batch_size": 64, "parts_done": done, "quick": args.quick, "first_split": args.first_split}
        notes = ["torch.set_num_threads(%d); OMP_NUM_THREADS as set by the caller" % args.threads,
                 "linear (LinearPCARidge) needs gene perturbations: not applicable to Kang's IFN-β stimulation",
                 "no_change has Pearson Δ = – (NaN: a zero predicted change has no correlation)"] + _summary(records)
        return write_results(args.name, records, command_string(), extra={"config": config, "notes": notes},
                             out_dir=out_dir)

    runners = {"kang": lambda: run_kang(args, records, log, save),
               "ds2": lambda: run_sergio(args, records, log, "ds2", checkpoint=save),
               "ds1_double": lambda: run_sergio(args, records, log, "ds1", doubles=True, checkpoint=save),
               "ds3": lambda: run_sergio(args, records, log, "ds3", checkpoint=save)}
    for p in parts:
        log(f"part {p}")
        runners[p]()
        done.append(p)
        paths = save()
        log(f"wrote {paths[0]}")
    for line in _summary(records):
        print(line)
    return records


if __name__ == "__main__":
    main()
