"""Perturbation prediction benchmark (docs/evaluation.md): unseen contexts and unseen knock-outs.

One command, results in ``benchmarks/results/perturbation.{json,md}``:

- **kang2018** — IFN-β stimulation of PBMCs. For each of the 5 cell types its stimulated cells are
  held out (no model and no PCA sees them); every method predicts them from that type's control
  cells. ``grndiff`` is the package default for a data set with control cells
  (``source="shifted_control"``: control cells moved by the cell-state-dependent OT shift of the
  training cell types, then the learned flow), trained ``--kang-steps`` steps, one row per seed.
  ``grndiff_shift`` is the same model untrained (the network outputs 0: the source's estimate
  alone, the neighbour estimate blended 3:1 with the mean shift) and ``grndiff_shift_knn`` the
  neighbour estimate alone (``blend=1``).
- **papalexi2021** — THP-1 CRISPR knock-outs under IFN-γ (``gd.datasets.papalexi2021()``). Only
  knock-outs of *measured* genes can be node interventions, so the set is control + the 9
  knock-outs whose target is among the 299 genes; 5 seeded folds hold out their knock-outs, which
  are predicted from 300 control cells. ``group="strong"`` averages the strong knock-outs
  (IFNGR2, JAK2, STAT1) apart.

Baselines in the same run (``grndiff.baselines``): ``no_change``; ``mean_shift`` (Kang: the
stim − ctrl shift averaged over the training cell types; Papalexi: over the training
knock-outs); ``linear`` (LinearPCARidge, Ahlmann-Eltze et al. 2025; gene perturbations only, so
not on Kang); ``split_half`` (one half of the true cells predicts the other: the resolution of the
metrics). Peers (scGen, CPA, CellFlow), run in their own environments by ``benchmarks/peers/``,
are scored by the same scorer when their prediction files exist (``--peers DIR``). Metrics
(``grndiff.metrics.evaluate_perturbation``) in log1p CP10k: Pearson Δ on the top-20 DE genes
(largest |true − ctrl|) and on all genes, direction accuracy on the top 20, energy distance in
the 30-PC space of every cell but the held-out ones.

Usage::

    python benchmarks/perturbation.py                    # full run (2 worker processes, 1 thread each)
    python benchmarks/perturbation.py --quick            # CI smoke run (< 2 min), results under /tmp
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import _protocol as proto  # (benchmarks/_protocol.py: the shared evaluation protocol)
import numpy as np
import pandas as pd
from _harness import run_jobs
from _results import command_string, finish, record, write_results

DEFAULT_PARTS = ("kang", "papalexi")
STRONG = ("IFNGR2", "JAK2", "STAT1")  # the strong knock-outs (gd.datasets.PAPALEXI_STRONG) that are measured


# ------------------------------------------------------------------------------ data
def kang_data(quick: bool):
    import grndiff as gd
    adata = gd.datasets.kang2018()
    if quick:  # a few hundred genes keep CI fast
        keep = np.argsort(-proto.dense(adata.layers["counts"]).mean(0))[:200]
        adata = adata[:, np.sort(keep)].copy()
    gd.GRNDiff.setup_anndata(adata, layer="counts", condition_keys=["cell_type", "condition"],
                             control_obs={"condition": "ctrl"})
    return adata


def papalexi_data(quick: bool):
    return proto.papalexi_measured(120 if quick else None)


def papalexi_folds(kos, n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    order = np.random.default_rng(seed).permutation(sorted(kos))
    return [sorted(order[i::n_folds].tolist()) for i in range(n_folds)]


# ------------------------------------------------------------------------------ one model (a worker job)
# Trained variants (issue 27's ablation). Each trained model gives two rows: ``<name>`` (predict() as
# a user calls it: what the validation gate chose) and ``<name>_flow`` (predict(flow=True): the whole
# flow). ``grndiff`` is the package default; the others change one thing.
_SC = "shifted_control"
VARIANTS = {
    "grndiff": {},
    "lowrank_ctx": {"source": {"name": _SC, "coupling": "lowrank"}, "options": {"context_conditioning": True}},
    "lowrank_noctx": {"source": {"name": _SC, "coupling": "lowrank"}, "options": {"context_conditioning": False}},
    "residual_ctx": {"source": {"name": _SC, "coupling": "residual"}, "options": {"context_conditioning": True}},
    "residual_noctx": {"source": {"name": _SC, "coupling": "residual"}, "options": {"context_conditioning": False}},
    "full_noctx": {"source": {"name": _SC, "coupling": "full"}, "options": {"context_conditioning": False}},
    "nogate": {"gate": False},
    "bf16": {"precision": "bf16"},  # issue 33: the default model trained under bfloat16 autocast
    # early-stopping schedules (issue 33's time to quality): a check every 25 steps, stop after 2 / 3
    # checks without a gain (the default: every 50, 3)
    "es25p2": {"check_every": 25, "patience": 2},
    "es25p3": {"check_every": 25, "patience": 3},
    # other backbones (issue 31), the package's source and gate: what the network architecture changes
    "latent_tokens": {"options": {"backbone": "latent_tokens"}},
    "ssm": {"options": {"backbone": "ssm"}},
    "cross_attention": {"options": {"conditioning": "cross_attention"}},  # condition tokens instead of adaLN
    # a latent flow with an NB count decoder (grndiff.train.LatentNBFlow): no source, no gate, no
    # graph; cells drawn for the held-out (cell type, stim) pair, an unseen combination of seen tokens
    "latent_nb": {"latent_nb": True},
}
TRAIN_KEYS = ("gate", "precision", "check_every", "patience")  # a variant's GRNDiff.train arguments


def _model(train, source, seed, net):
    import grndiff as gd
    return gd.GRNDiff(train, prior="collectri", modules="hallmark", source=source, seed=seed, **net)


def _predictions(model, ctrl_ad, conditions, name, n_steps, trained) -> dict:
    """{row name: predicted AnnData}: the default predict() and, for a trained model, the whole flow."""
    out = {name: model.predict(ctrl_ad, conditions, n_steps=n_steps if trained else 1, clip=False)}
    if trained and model.flow_weight < 1:
        out[f"{name}_flow"] = model.predict(ctrl_ad, conditions, n_steps=n_steps, clip=False, flow=True)
    elif trained:
        out[f"{name}_flow"] = out[name]
    return out


def run_job(job: dict) -> list[dict]:
    """Train (or not) one grndiff variant for one held-out group and score it; returns records."""
    import torch
    torch.set_num_threads(1)
    proto.quiet()
    recs: list[dict] = []
    ds, name, seed, steps = job["dataset"], job["method"], job["seed"], job["steps"]
    if job.get("deadline") is not None and time.time() > job["deadline"]:  # --max-minutes: start no new job
        return [{"skipped": f"{ds}/{name}/{job['group']}/seed{seed}"}]
    adata = kang_data(job["quick"]) if ds == "kang2018" else papalexi_data(job["quick"])
    X = proto.log_expression(adata)
    t0 = time.perf_counter()
    if ds == "kang2018" and job.get("latent_nb"):
        return _latent_nb_job(job, adata, X, t0)
    if ds == "kang2018":
        ct, cond = adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["condition"].astype(str).to_numpy()
        T = job["group"]
        held = (ct == T) & (cond == "stim")
        is_ctrl = (ct == T) & (cond == "ctrl")
        model = _model(adata[~held].copy(), job["source"], seed, job["net"])
        if steps:
            model.train(max_steps=steps, max_epochs=10_000, batch_size=64, val_fraction=0.02, progress_bar=False,
                        **job.get("train", {}))
            _gate_records(recs, ds, name, seed, T, model, steps)
        pca = proto.reference_pca(X[~held])
        msg = ""
        for row, pred in _predictions(model, adata[is_ctrl].copy(), {"condition": "stim"}, name, job["n_steps"],
                                      bool(steps)).items():
            m = proto.score_perturbation(recs, ds, row, seed, T, proto.dense(pred.X), X[held], X[is_ctrl], pca)
            if job.get("pred_dir") and seed == 0:
                pred.write_h5ad(os.path.join(job["pred_dir"], f"pred_{row}_{_safe(T)}.h5ad"))
            msg += f" {row} ρΔ20 {m['pearson_delta_top20']:.3f} energy {m['energy_distance']:.2f};"
    else:
        lab = adata.obs["perturbation"].astype(str).to_numpy()
        held_out = job["fold_kos"]
        held = np.isin(lab, held_out)
        model = _model(adata[~held].copy(), job["source"], seed, job["net"])
        if steps:
            model.train(max_steps=steps, max_epochs=10_000, batch_size=64, val_fraction=0.02, progress_bar=False,
                        **job.get("train", {}))
            _gate_records(recs, ds, name, seed, f"fold{job['fold']}", model, steps)
        ctrl_ad = _control_subset(adata, lab, job["pred_cells"], job["fold"])
        pca = proto.reference_pca(X[~held], seed=job["fold"])
        vals: dict = {}
        for p in held_out:
            for row, pred in _predictions(model, ctrl_ad, {"perturbation": p}, name, job["n_steps"],
                                          bool(steps)).items():
                m = proto.score_perturbation(recs, ds, row, seed, p, proto.dense(pred.X), X[lab == p],
                                             X[lab == "control"], pca)
                vals.setdefault(row, []).append(m["pearson_delta_top20"])
        msg = f"fold {job['fold']} " + "; ".join(f"{r} ρΔ20 {np.nanmean(v):.3f}" for r, v in vals.items())
    recs.append(record(ds, name, "train_seconds", time.perf_counter() - t0, seed=seed, group=str(job["group"])))
    print(f"  {ds} {str(job['group']):<18s} {name:<22s} seed {seed} {msg} ({time.perf_counter() - t0:.0f}s)",
          flush=True)
    return recs


def _latent_nb_job(job, adata, X, t0) -> list[dict]:
    """The ``latent_nb`` row on one held-out Kang cell type: fit on every other cell, draw as many
    cells for (cell type, stim) as the type has control cells, score as the other rows."""
    from grndiff.train import LatentNBFlow

    recs: list[dict] = []
    ds, name, seed, T = job["dataset"], job["method"], job["seed"], job["group"]
    ct, cond = adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["condition"].astype(str).to_numpy()
    held, is_ctrl = (ct == T) & (cond == "stim"), (ct == T) & (cond == "ctrl")
    keys = ["cell_type", "condition"]
    model = LatentNBFlow(32, flow_steps=max(job["steps"], 1), ae_steps=30 if job["quick"] else 2000, seed=seed)
    model.fit(adata.layers["counts"][~held], adata.obs.loc[~held, keys])
    pred, _ = model.sample(pd.DataFrame({"cell_type": [T] * int(is_ctrl.sum()), "condition": "stim"}), seed=seed,
                           n_steps=job["n_steps"])
    pca = proto.reference_pca(X[~held])
    m = proto.score_perturbation(recs, ds, name, seed, T, pred, X[held], X[is_ctrl], pca)
    recs.append(record(ds, name, "train_seconds", time.perf_counter() - t0, seed=seed, group=str(T)))
    print(f"  {ds} {T:<18s} {name:<22s} seed {seed} ρΔ20 {m['pearson_delta_top20']:.3f} "
          f"energy {m['energy_distance']:.2f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return recs


def _gate_records(recs, ds, name, seed, group, model, steps: int) -> None:
    """The gate's choice (flow weight α) and its validation scores, as records of the model's row."""
    gate = model.gate_ or {}
    if "alpha" in gate:
        recs.append(record(ds, name, "gate_alpha", gate["alpha"], seed=seed, group=group))
    for key in ("transport", "flow"):
        if gate.get(key) is not None:
            recs.append(record(ds, name, f"gate_val_{key}", gate[key], seed=seed, group=group))
    if gate.get("checks"):  # early stopping on the gate's hidden groups: the steps actually trained
        recs.append(record(ds, name, "steps_trained", gate["stopped_step"] or steps, seed=seed, group=group))


def _control_subset(adata, lab, n, seed):
    rows = np.flatnonzero(lab == "control")
    rng = np.random.default_rng(seed)
    return adata[np.sort(rng.choice(rows, min(n, rows.size), replace=False))].copy()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# ------------------------------------------------------------------------------ baselines (main process)
def kang_baselines(args, records):
    from grndiff.baselines import MeanShift
    adata = kang_data(args.quick)
    X = proto.log_expression(adata)
    ct, cond = adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["condition"].astype(str).to_numpy()
    types = sorted(set(ct))[: (2 if args.quick else None)]
    for T in types:
        held, is_ctrl = (ct == T) & (cond == "stim"), (ct == T) & (cond == "ctrl")
        true, ctrl = X[held], X[is_ctrl]
        pca = proto.reference_pca(X[~held])
        proto.score_perturbation(records, "kang2018", "no_change", 0, T, ctrl, true, ctrl, pca)
        ms = MeanShift().fit(X[~held], cond[~held], "ctrl", groups=ct[~held])
        proto.score_perturbation(records, "kang2018", "mean_shift", 0, T, ms.predict(ctrl, "stim", exclude_group=T),
                           true, ctrl, pca)
        proto.score_ceiling(records, "kang2018", 0, T, true, ctrl, pca)
        if args.pred_dir:
            _write_pred(adata[is_ctrl], ms.predict(ctrl, "stim", exclude_group=T), args.pred_dir, "mean_shift", T)
    return types


def _write_pred(ctrl_ad, X, out_dir, method, group):
    import anndata as ad
    a = ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=ctrl_ad.obs.copy(), var=pd.DataFrame(index=ctrl_ad.var_names))
    a.write_h5ad(os.path.join(out_dir, f"pred_{method}_{_safe(group)}.h5ad"))


def papalexi_baselines(args, records):
    from grndiff.baselines import LinearPCARidge, MeanShift
    adata = papalexi_data(args.quick)
    X = proto.log_expression(adata)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    kos = sorted(set(lab) - {"control"})
    folds = papalexi_folds(kos, 5 if not args.quick else 2)[: (1 if args.quick else None)]
    ctrl = X[lab == "control"]
    for f, held_out in enumerate(folds):
        held = np.isin(lab, held_out)
        pca = proto.reference_pca(X[~held], seed=f)
        train_kos = [p for p in kos if p not in held_out]
        deltas = {p: X[lab == p].mean(0) - ctrl.mean(0) for p in train_kos}
        ms = MeanShift().fit(X[~held], lab[~held], "control")
        lin = LinearPCARidge(n_comps=10, ridge=0.1).fit(deltas, expression=X[~held], genes=list(adata.var_names))
        for p in held_out:
            true = X[lab == p]
            proto.score_perturbation(records, "papalexi2021", "no_change", 0, p, ctrl, true, ctrl, pca)
            proto.score_perturbation(records, "papalexi2021", "mean_shift", 0, p, ms.predict(ctrl), true, ctrl, pca)
            proto.score_perturbation(records, "papalexi2021", "linear", 0, p, ctrl + lin.predict(p), true, ctrl, pca)
            proto.score_ceiling(records, "papalexi2021", 0, p, true, ctrl, pca)
    return folds, kos


# ------------------------------------------------------------------------------ main
def _summary(records) -> list[str]:
    s = proto.seed_summary(records, groups=("all", "strong"))
    out = []
    if s.empty:
        return out
    for (ds, grp), d in s[s["metric"].isin(["pearson_delta_top20", "energy_distance"])].groupby(["dataset", "group"],
                                                                                               sort=False):
        parts = []
        for meth, dm in d.groupby("method", sort=False):
            cells = []
            for _, r in dm.iterrows():
                sd = f" ± {r['sd']:.3f}" if r["n"] > 1 else ""
                metric = r["metric"].replace("pearson_delta_top20", "ρΔ20").replace("energy_distance", "energy")
                cells.append(f"{metric} {r['mean']:.3f}{sd}")
            parts.append(f"{meth}: " + ", ".join(cells))
        out.append(f"summary {ds} group={grp} (mean ± sd over seeds): " + "; ".join(parts))
    return out


def _variant(name: str, net: dict) -> dict:
    v = VARIANTS[name]
    opts = {**net, **v.get("options", {})}
    if "backbone" in opts:  # only the options that backbone takes (the quick net's token_depth is grn's)
        from grndiff.nn import backbone_options
        keep = set(backbone_options(opts["backbone"])) | {"backbone"}
        opts = {k: val for k, val in opts.items() if k in keep}
    return {"source": v.get("source", "auto"), "net": opts,
            "train": {k: v[k] for k in TRAIN_KEYS if k in v},
            "latent_nb": bool(v.get("latent_nb"))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run (< 2 min); writes under a temp dir")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated subset of {DEFAULT_PARTS}")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the trained grndiff rows")
    ap.add_argument("--kang-steps", type=int, default=400)
    ap.add_argument("--papalexi-steps", type=int, default=400)
    ap.add_argument("--n-steps", type=int, default=10, help="Euler steps of prediction")
    ap.add_argument("--pred-cells", type=int, default=300, help="Papalexi: control cells transported per knock-out")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    ap.add_argument("--peers", default=None, help="folder of peer predictions (benchmarks/peers) to score too")
    ap.add_argument("--pred-dir", default=None, help="also write grndiff (seed 0) / mean-shift Kang predictions here")
    ap.add_argument("--celleval", action="store_true", help="with --peers: also score every method's Kang prediction "
                    "files with cell-eval (benchmarks/peers/celleval.py)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="wall budget: grndiff jobs not started by then are skipped (listed in the notes); 0 runs "
                    "only the baselines, the peers and cell-eval")
    ap.add_argument("--variants", default="grndiff",
                    help=f"trained grndiff variants, comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--shift-rows", default="yes", choices=("yes", "no"),
                    help="also run the untrained rows (grndiff_shift, grndiff_shift_knn)")
    ap.add_argument("--name", default="perturbation")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    proto.quiet()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    net = {}
    out_dir = args.out_dir
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.quick:
        args.kang_steps = args.papalexi_steps = 20
        args.n_steps, args.pred_cells, seeds = 3, 60, [0]
        net = {"hidden": 16, "depth": 1, "token_depth": 1}
        out_dir = out_dir or tempfile.mkdtemp(prefix="grndiff-perturbation-")
    if args.pred_dir:
        os.makedirs(args.pred_dir, exist_ok=True)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in DEFAULT_PARTS]
    if bad:
        ap.error(f"unknown parts {bad}; choose from {DEFAULT_PARTS}")
    records: list[dict] = []
    skipped: list[str] = []
    t_start = time.perf_counter()
    jobs, groups = [], {}
    common = {"quick": args.quick, "net": net, "n_steps": args.n_steps, "pred_cells": args.pred_cells}
    if "kang" in parts:
        types = kang_baselines(args, records)
        groups["kang2018"] = types
        for T in types:
            if args.shift_rows == "yes":
                jobs += [{**common, "dataset": "kang2018", "group": T, "method": "grndiff_shift", "seed": s,
                          "steps": 0, "source": "shifted_control", "pred_dir": args.pred_dir} for s in seeds]
                jobs.append({**common, "dataset": "kang2018", "group": T, "method": "grndiff_shift_knn", "seed": 0,
                             "steps": 0, "source": {"name": "shifted_control", "blend": 1.0}})
        # trained jobs seed by seed (every type and variant of a seed before the next seed), so a run
        # cut by --max-minutes keeps whole seeds, whose type means are complete
        jobs += [{**common, **_variant(v, net), "dataset": "kang2018", "group": T, "method": v, "seed": s,
                  "steps": args.kang_steps, "pred_dir": args.pred_dir if v == "grndiff" else None}
                 for s in seeds for T in types for v in variants]
    if "papalexi" in parts:
        folds, kos = papalexi_baselines(args, records)
        groups["papalexi2021"] = [p for f in folds for p in f]
        for f, held_out in enumerate(folds):
            base = {**common, "dataset": "papalexi2021", "group": f"fold{f}", "fold": f, "fold_kos": held_out}
            if args.shift_rows == "yes":
                jobs += [{**base, "method": "grndiff_shift", "seed": s, "steps": 0, "source": "shifted_control"}
                         for s in seeds]
            jobs += [{**base, **_variant(v, net), "method": v, "seed": s, "steps": args.papalexi_steps}
                     for v in variants for s in seeds if not VARIANTS[v].get("latent_nb")]  # Kang only

    def save():
        recs = [r for r in records if r["group"] not in ("all", "strong")]
        for ds, grp in groups.items():
            proto.average_groups(recs, ds, grp, complete_only=True)
            if ds == "papalexi2021":
                proto.average_groups(recs, ds, [g for g in grp if g in STRONG], name="strong", complete_only=True)
        config = {"kang_steps": args.kang_steps, "papalexi_steps": args.papalexi_steps, "seeds": seeds,
                  "euler_steps": args.n_steps, "papalexi_pred_cells": args.pred_cells, "jobs": args.jobs,
                  "net": net or "defaults (hidden 32, depth 2, token_depth 2, cell_token)", "batch_size": 64,
                  "parts": parts, "quick": args.quick}
        notes = ["each worker process: torch.set_num_threads(1); the machine ran other jobs beside this one",
                 "linear (LinearPCARidge) needs gene perturbations: not applicable to Kang's IFN-β stimulation",
                 "no_change has Pearson Δ = – (NaN: a zero predicted change has no correlation)",
                 "grndiff rows are scored unclipped (predict(..., clip=False)), as the baselines are: clipping at 0 "
                 "lifts the mean of lowly expressed genes",
                 "grndiff_shift is seeded too: the seed draws the control cells the shifted control keeps per "
                 "(perturbation, context) pair; grndiff_shift_knn (an ablation of the blend) runs seed 0 only",
                 "compare methods in the 'mean ± sd over seeds' tables: a difference smaller than the spread is "
                 "not a win",
                 "papalexi2021: control + the 9 knock-outs whose target gene is measured (a knock-out of an "
                 "unmeasured gene cannot be a node intervention); 5 seeded folds; group 'strong' = IFNGR2, JAK2, STAT1"
                 ] + _summary(recs) + ([f"not run (--max-minutes {args.max_minutes} reached): " + ", ".join(skipped)]
                                       if skipped else [])
        return write_results(args.name, recs, command_string(), extra={"config": config, "notes": notes},
                             out_dir=out_dir), recs

    print(f"[{time.perf_counter() - t_start:5.0f}s] baselines done; {len(jobs)} grndiff jobs on {args.jobs} workers",
          flush=True)
    # cheap rows first (untrained: the source's estimate alone), then trained rows seed by seed, so a
    # --max-minutes budget cuts seeds, not whole cell types or data sets
    jobs.sort(key=lambda j: (j["steps"] > 0, j["seed"], j["dataset"] != "papalexi2021"))
    run_jobs(run_job, jobs, args.jobs, args.max_minutes, records, skipped, save)
    # peers last: their prediction files (benchmarks/peers/run_*.py) are read when the grndiff rows are done
    if args.peers:
        from peer_scores import peer_records  # grndiff's scorer on the peers' files
        records += [r for r in peer_records(args.peers) if r["group"] not in ("all", "strong")
                    and r["dataset"] in groups]
        if args.celleval:  # the independent judge on every method's Kang prediction files
            from peers.celleval import celleval_records  # benchmarks/peers/ (a namespace package here)
            records += [r for r in celleval_records(args.peers) if r["group"] != "all"]
    return finish(save, t_start, _summary)


if __name__ == "__main__":
    main()
