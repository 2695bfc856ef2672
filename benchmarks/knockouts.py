"""Knock-outs never perturbed — and mostly never measured — through a signalling + regulatory graph.

One command, results in ``benchmarks/results/knockouts.{json,md}``:

**papalexi2021**, all knock-outs (``gd.datasets.papalexi2021()``: THP-1 cells under IFN-γ, 299
measured genes, 25 knocked-out genes of which 16 are not measured). A knock-out whose gene is in
neither the data nor the prior (MARCH8) cannot be a node and is left out (named in the notes).
5 seeded folds over the knocked-out genes hold each out once; every method predicts a held-out
knock-out from all control cells. ``group="strong"`` averages IFNGR1, IFNGR2, JAK2, STAT1 and IRF1.

grndiff rows (CollecTRI ∪ OmniPath signalling prior, Hallmark modules, unmeasured perturbed genes
and the prior genes on paths of ≤ 2 edges to measured genes as latent nodes):

- ``grndiff``: the package default constructor (``source="auto"`` → shifted control with
  ``coupling="auto"``: a knock-out seen in one context trains on the leave-it-out error of the
  pooled shift, and an unseen one may move on every axis; the validation gate hides whole
  knock-outs) and ``grndiff_flow`` (``flow=True``);
- ``grndiff_shuffled``: the same on a degree-preserving shuffle of the union prior (edge kinds kept
  with their edges), ``grndiff_collectri`` on CollecTRI alone, ``grndiff_nograph`` with
  ``prior=None`` (no edges; the perturbed measured genes keep their flag, unmeasured ones only the
  global summary);
- ``grndiff_lowrank``: the default before (``coupling="lowrank"``: an unseen knock-out keeps the
  pooled shift's principal-axis state).

Baselines in the same run: ``no_change``, ``mean_shift`` (the training knock-outs' mean change),
``linear`` (Ahlmann-Eltze et al. 2025 PCA-ridge; measured knock-outs only), ``linear_graph`` (the
same ridge with knock-outs looked up in a spectral embedding of the union prior, so unmeasured
genes get a prediction: the information grndiff gets) and ``split_half`` (the ceiling). Every row
records its wall seconds (``train_seconds``: fit + predict). Metrics as
``_protocol.score_perturbation``.

Every method can also be scored by cell-eval (Arc Institute's evaluator,
``benchmarks/peers/celleval.py``): ``--pred-dir DIR`` writes the seed-0 prediction of every row
(grndiff rows and the baselines but ``split_half``) as ``DIR/pred_<method>_<knock-out>.h5ad``, and
``--celleval`` scores them after the run, one cell-eval run per method (all control cells and the
method's knock-outs in one context), adding records ``celleval_<metric>`` per knock-out, averaged
into ``all`` / ``strong`` like every other metric.

Usage::

    python benchmarks/knockouts.py                   # full run (2 worker processes)
    python benchmarks/knockouts.py --quick           # CI smoke run, results under a temp dir
    python benchmarks/knockouts.py --pred-dir DIR --celleval   # + cell-eval (bash benchmarks/peers/setup.sh celleval)
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import _protocol as proto  # (benchmarks/_protocol.py: the shared evaluation protocol)
import numpy as np
import pandas as pd
from _harness import run_jobs
from _results import command_string, finish, record, write_results
from perturbation import _control_subset, _gate_records, _predictions, _summary, papalexi_folds

STRONG = ("IFNGR1", "IFNGR2", "JAK2", "STAT1", "IRF1")
UNION = ["collectri", "omnipath_signaling"]
VARIANTS = {  # name → (prior, source)
    "grndiff": ("union", "auto"),
    "grndiff_shuffled": ("shuffled", "auto"),
    "grndiff_lowrank": ("union", {"name": "shifted_control", "coupling": "lowrank"}),
    "grndiff_nograph": (None, "auto"),
    "grndiff_collectri": ("collectri", "auto"),
    "grndiff_omnipath": ("omnipath_signaling", "auto"),
}
BASELINES = ("no_change", "mean_shift", "linear", "linear_graph")  # the rows --pred-dir writes besides grndiff's


def write_prediction(pred_dir, method: str, ko: str, pred, ctrl_obs: pd.DataFrame, genes) -> None:
    """Write one seed-0 prediction, ``pred`` (n_ctrl, G) log1p, to ``pred_dir/pred_<method>_<ko>.h5ad``
    (float32, ``obs`` = the transported control cells', ``var_names`` = ``genes``); returns nothing."""
    from peers._common import write_pred  # benchmarks/peers/ (a namespace package here)
    write_pred(pred_dir, method, ko, proto.dense(pred), ctrl_obs, genes)


def pred_methods(variants) -> list[str]:
    """Every row ``--pred-dir`` writes files for: the baselines, then each variant and its ``_flow`` row."""
    return list(BASELINES) + [r for v in variants for r in (v, f"{v}_flow")]


def papalexi_all(quick_cells: int | None = None):
    """Every assigned Papalexi cell whose knock-out the data or the union prior names, registered."""
    import grndiff as gd
    return proto.papalexi_measured(quick_cells, gd.priors.combine(UNION)[["source", "target"]].to_numpy().ravel())


def unnameable(kinds) -> dict:
    """{prior kind: the Papalexi knock-outs (sorted) that the data do not measure and that prior does
    not name}, among those the union prior names; the data and the union are read once for all kinds."""
    import grndiff as gd
    adata = gd.datasets.papalexi2021()
    measured = set(adata.var_names)
    union = set(gd.priors.combine(UNION)[["source", "target"]].to_numpy().ravel())
    kos = (set(adata.obs["perturbation"].astype(str)) - {"control"}) & (union | measured)

    def named(kind):
        if kind in ("union", "shuffled"):
            return union
        return set() if kind is None else set(gd.priors.combine([kind])[["source", "target"]].to_numpy().ravel())
    return {kind: sorted(kos - named(kind) - measured) for kind in dict.fromkeys(kinds)}


def _prior(kind, fold):
    import grndiff as gd
    if kind == "union":
        return UNION
    if kind == "shuffled":
        return gd.priors.shuffle_edges(gd.priors.combine(UNION), seed=fold)
    return kind


def run_job(job: dict) -> list[dict]:
    """Train one grndiff row on one fold and score its held-out knock-outs; returns records."""
    import torch
    torch.set_num_threads(1)
    proto.quiet()
    import grndiff as gd
    recs: list[dict] = []
    name, seed, fold = job["method"], job["seed"], job["fold"]
    if job.get("deadline") is not None and time.time() > job["deadline"]:
        return [{"skipped": f"{name}/fold{fold}/seed{seed}"}]
    adata = papalexi_all(job["quick_cells"])
    X = proto.log_expression(adata)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    held = np.isin(lab, job["fold_kos"])
    scored = [p for p in job["fold_kos"] if p not in job.get("skip_kos", ())]  # --skip-unnamed leaves some out
    prior_kind, source = VARIANTS[name]
    t0 = time.perf_counter()
    # the held-out knock-outs are declared perturbable (graph_kwargs): an unmeasured one becomes a latent node
    train = ~held & ~np.isin(lab, job.get("skip_kos", []))  # cells of a knock-out the prior cannot name: unused
    model = gd.GRNDiff(adata[train].copy(), prior=_prior(prior_kind, fold), modules="hallmark", source=source,
                       seed=seed, graph_kwargs={"perturbed": scored}, **job["net"])
    model.train(max_steps=job["steps"], max_epochs=10_000, batch_size=64, val_fraction=0.02, progress_bar=False)
    _gate_records(recs, "papalexi2021", name, seed, f"fold{fold}", model, job["steps"])
    recs.append(record("papalexi2021", name, "n_latent", model.graph.n_latent, seed=seed, group=f"fold{fold}"))
    # every control cell by default: the baselines' control mean is that of all of them, and a subset's mean
    # differs from it by sampling noise that is as large as a weak knock-out's change
    ctrl_ad = (_control_subset(adata, lab, job["pred_cells"], fold) if job["pred_cells"]
               else adata[lab == "control"].copy())
    pca = proto.reference_pca(X[~held], seed=fold)
    vals: dict = {}
    for p in scored:
        for row, pred in _predictions(model, ctrl_ad, {"perturbation": p}, name, job["n_steps"], True).items():
            m = proto.score_perturbation(recs, "papalexi2021", row, seed, p, proto.dense(pred.X), X[lab == p],
                                   X[lab == "control"], pca)
            if job.get("pred_dir") and seed == 0:
                write_prediction(job["pred_dir"], row, p, pred.X, ctrl_ad.obs, adata.var_names)
            vals.setdefault(row, []).append(m["pearson_delta_top20"])
    secs = time.perf_counter() - t0
    for row in vals:
        recs.append(record("papalexi2021", row, "train_seconds", secs, seed=seed, group=f"fold{fold}"))
    print(f"  fold {fold} seed {seed} {name:<20s} "
          + "; ".join(f"{r} ρΔ20 {np.nanmean(v):.3f}" for r, v in vals.items())
          + f" ({secs:.0f}s, {model.graph.n_latent} latent nodes)", flush=True)
    return recs


def baselines(args, records) -> tuple[list, list]:
    import grndiff as gd
    from grndiff.baselines import LinearPCARidge, MeanShift, graph_gene_embedding
    adata = papalexi_all(args.quick_cells)
    X = proto.log_expression(adata)
    genes = list(adata.var_names)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    kos = sorted(set(lab) - {"control"})
    folds = papalexi_folds(kos, 2 if args.quick else 5)[: (1 if args.quick else None)]
    ctrl = X[lab == "control"]
    ctrl_obs = adata.obs[lab == "control"]
    emb = graph_gene_embedding(gd.priors.combine(UNION), dim=10)
    emb = emb.reindex(emb.index.union(pd.Index(kos)), fill_value=0.0)  # a gene outside the prior: no graph signal
    for f, held_out in enumerate(folds):
        held = np.isin(lab, held_out)
        pca = proto.reference_pca(X[~held], seed=f)
        t0 = time.perf_counter()
        train_kos = [p for p in kos if p not in held_out]
        deltas = {p: X[lab == p].mean(0) - ctrl.mean(0) for p in train_kos}
        ms = MeanShift().fit(X[~held], lab[~held], "control")
        t_ms = time.perf_counter() - t0
        t0 = time.perf_counter()
        measured = {p: d for p, d in deltas.items() if p in set(genes)}
        lin = LinearPCARidge(n_comps=10, ridge=0.1).fit(measured, expression=X[~held], genes=genes)
        t_lin = time.perf_counter() - t0
        t0 = time.perf_counter()
        lin_g = LinearPCARidge(n_comps=10, ridge=0.1).fit(deltas, expression=X[~held], genes=genes, pert_embedding=emb)
        t_ling = time.perf_counter() - t0
        for method, secs in (("mean_shift", t_ms), ("linear", t_lin), ("linear_graph", t_ling)):
            records.append(record("papalexi2021", method, "train_seconds", secs, seed=0, group=f"fold{f}"))
        for p in held_out:
            true = X[lab == p]
            preds = {"no_change": ctrl, "mean_shift": ms.predict(ctrl)}
            if p in set(genes):
                preds["linear"] = ctrl + lin.predict(p)
            preds["linear_graph"] = ctrl + lin_g.predict(p)
            for method, pred in preds.items():
                proto.score_perturbation(records, "papalexi2021", method, 0, p, pred, true, ctrl, pca)
                if args.pred_dir:
                    write_prediction(args.pred_dir, method, p, pred, ctrl_obs, genes)
            proto.score_ceiling(records, "papalexi2021", 0, p, true, ctrl, pca)
    return folds, kos


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run; writes under a temp dir")
    ap.add_argument("--seeds", default="0", help="seeds of the trained grndiff rows")
    ap.add_argument("--variants", default="grndiff,grndiff_shuffled,grndiff_lowrank",
                    help=f"grndiff rows, of {list(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=400, help="training steps of each grndiff row")
    ap.add_argument("--n-steps", type=int, default=10, help="Euler steps of prediction")
    ap.add_argument("--pred-cells", type=int, default=0,
                    help="control cells transported per knock-out (0: all, as the baselines use)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    ap.add_argument("--max-minutes", type=float, default=None, help="grndiff jobs not started by then are skipped")
    ap.add_argument("--skip-unnamed", action="store_true",
                    help="score a variant on the knock-outs its prior names (instead of refusing it)")
    ap.add_argument("--pred-dir", default=None,
                    help="write every row's seed-0 predictions here (pred_<method>_<knock-out>.h5ad, log1p)")
    ap.add_argument("--celleval", action="store_true",
                    help="after the run, also score every row's predictions with cell-eval (benchmarks/peers/"
                         "celleval.py; files in --pred-dir, else in a temporary folder removed afterwards)")
    ap.add_argument("--name", default="knockouts")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    if args.celleval:  # before any work: the judge must be installed
        from peers.celleval import celleval_exe
        try:
            celleval_exe()
        except FileNotFoundError as e:
            ap.error(f"--celleval: {e}")
    proto.quiet()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {list(VARIANTS)}")
    missing_by_prior = unnameable(VARIANTS[v][0] for v in variants)
    unscored = {v: missing_by_prior[VARIANTS[v][0]] for v in variants if missing_by_prior[VARIANTS[v][0]]}
    for v, missing in unscored.items():  # a knock-out its prior does not name cannot be a node: say so first
        if not args.skip_unnamed:
            ap.error(f"{v}: the knock-outs {missing} are neither measured nor in its prior, so this variant cannot "
                     "predict them (a gene in no prior cannot be a node); use a variant whose prior names them, "
                     "or --skip-unnamed to score the others")
    net, out_dir, args.quick_cells = {}, args.out_dir, None
    if args.quick:
        args.steps, args.n_steps, args.pred_cells, seeds, args.quick_cells = 10, 2, 40, [0], 30
        net = {"hidden": 8, "depth": 1, "token_depth": 1}
        variants = variants[:2]
        out_dir = out_dir or tempfile.mkdtemp(prefix="grndiff-knockouts-")
    tmp_pred = args.celleval and not args.pred_dir
    if tmp_pred:
        args.pred_dir = tempfile.mkdtemp(prefix="grndiff-knockouts-pred-")
    records: list[dict] = []
    skipped: list[str] = []
    t_start = time.perf_counter()
    folds, kos = baselines(args, records)
    common = {"quick_cells": args.quick_cells, "net": net, "n_steps": args.n_steps, "pred_cells": args.pred_cells,
              "steps": args.steps, "pred_dir": args.pred_dir}
    # fold-major: a run cut short keeps each fold's variants side by side
    jobs = [{**common, "method": v, "seed": s, "fold": f, "fold_kos": held_out, "skip_kos": unscored.get(v, [])}
            for s in seeds for f, held_out in enumerate(folds) for v in variants]
    groups = [p for f in folds for p in f]
    dropped = sorted(set(__import__("grndiff").datasets.papalexi2021().obs["perturbation"].astype(str))
                     - set(kos) - {"control"})

    def save():
        recs = [r for r in records if r["group"] not in ("all", "strong")]
        proto.average_groups(recs, "papalexi2021", groups, complete_only=True)
        strong = [g for g in groups if g in STRONG]
        proto.average_groups(recs, "papalexi2021", strong, name="strong", complete_only=True)
        if unscored:  # every method on the knock-outs every variant scores: comparable means
            shared = [g for g in groups if not any(g in m for m in unscored.values())]
            proto.average_groups(recs, "papalexi2021", shared, name="scored_by_all", complete_only=True)
        config = {"steps": args.steps, "seeds": seeds, "euler_steps": args.n_steps, "pred_cells": args.pred_cells,
                  "variants": variants, "jobs": args.jobs, "net": net or "defaults", "quick": args.quick,
                  "knockouts": kos, "folds": folds}
        if args.pred_dir and not tmp_pred:
            config["pred_dir"] = args.pred_dir
        if args.celleval:
            config["celleval"] = True
        notes = ["each worker process: torch.set_num_threads(1); the machine ran other jobs beside this one",
                 f"left out (gene in neither the data nor CollecTRI ∪ OmniPath): {dropped}",
                 "train_seconds: wall seconds of fit + prediction of the fold (grndiff: per model; both rows of a "
                 "model carry its time)",
                 "linear needs the perturbed gene's PCA row: measured knock-outs only; linear_graph embeds every "
                 "prior gene (spectral embedding of the union prior, 10 dimensions; a knocked-out gene outside the "
                 "prior gets the zero row: the mean change)",
                 "group 'strong' = IFNGR1, IFNGR2, JAK2, STAT1, IRF1"] + ([
                     "celleval_*: cell-eval (benchmarks/peers/celleval.py, profile full) on each row's seed-0 "
                     "predictions, one run per method: all control cells and the knock-outs the method predicted in "
                     "one context, predicted values clipped at 0 for cell-eval only; discrimination_score_l1 ranks "
                     "among the knock-outs that method predicted (linear: measured ones only)"]
                     if args.celleval else []) + [
                     f"{v} neither trains on nor scores {m} (--skip-unnamed: not measured, not in its prior); group "
                     "'scored_by_all' averages every method over the knock-outs every variant scores"
                     for v, m in unscored.items()] + _summary(recs) + (
                     [f"not run (--max-minutes {args.max_minutes} reached): " + ", ".join(skipped)] if skipped else [])
        return write_results(args.name, recs, command_string(), extra={"config": config, "notes": notes},
                             out_dir=out_dir), recs

    save()
    print(f"[{time.perf_counter() - t_start:5.0f}s] baselines done; {len(jobs)} grndiff jobs on {args.jobs} workers",
          flush=True)
    run_jobs(run_job, jobs, args.jobs, args.max_minutes, records, skipped, save)
    if args.celleval:  # the independent judge on every row's prediction files
        from peers.celleval import knockout_celleval_records
        adata = papalexi_all(args.quick_cells)
        t0 = time.perf_counter()
        X, lab = proto.log_expression(adata), adata.obs["perturbation"].astype(str).to_numpy()
        scored: dict[str, list[str]] = {}  # the files of this run only (not those of a job --max-minutes skipped)
        for r in records:
            if r["metric"] == "pearson_delta_top20" and r["seed"] == 0 and r["group"] in set(groups):
                scored.setdefault(r["method"], []).append(r["group"])
        for m in (m for m in pred_methods(variants) if m in scored):
            records += knockout_celleval_records(args.pred_dir, X, lab, adata.var_names, [m], kos=scored[m])
        print(f"[{time.perf_counter() - t_start:5.0f}s] cell-eval done ({time.perf_counter() - t0:.0f}s)", flush=True)
        if tmp_pred:
            shutil.rmtree(args.pred_dir, ignore_errors=True)
    return finish(save, t_start, _summary)


if __name__ == "__main__":
    main()
