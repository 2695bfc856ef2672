"""Does the graph carry a knock-out? Unseen knock-outs with the true, degraded and null graphs.

One command, results in ``benchmarks/results/graph_claim.{json,md}``:

- **sim_ds2**, **sim_ds3** — the SERGIO DS2 (400 genes) / DS3 (1,200 genes) ground-truth GRNs,
  simulated by ``benchmarks/ko_sim.py`` (SERGIO kinetics; a knock-out zeroes the gene's production
  and keeps the wild-type half-responses, so it propagates to its descendants): control + the
  knock-out of every regulator with ≥ 3 targets, 3 cell types. A quarter of the knock-outs is
  held out (seeded splits); every method predicts each held-out knock-out's cells from control
  cells.
- **sim_ds1_double** — DS1 (100 genes): control, the single knock-outs of its 7 regulators with
  ≥ 3 targets and all their pairs; a quarter of the pairs is held out (the singles are seen).
- **papalexi2021** — the THP-1 CRISPR knock-outs whose target is measured (as in
  ``benchmarks/perturbation.py``), one held-out fold of the 9; priors compared: CollecTRI alone,
  Hallmark modules alone, both, and a CollecTRI shuffle matched among the measured genes.

grndiff rows (methods): ``grndiff`` the true graph; ``grndiff_rewired25|50|75`` that graph with
25 / 50 / 75 % of its edges rewired degree-preservingly (``grndiff.priors.null.rewire``);
``grndiff_shuffled`` a full degree-preserving shuffle among the same genes (same edge count,
same in/out-degrees); ``grndiff_nograph`` ``prior=None``; Papalexi: ``grndiff`` CollecTRI,
``grndiff_modules`` Hallmark only, ``grndiff_both``, ``grndiff_shuffled``. Baselines in the same
run: ``mean_shift`` (mean shift of the training knock-outs), ``linear`` (LinearPCARidge,
Ahlmann-Eltze et al. 2025), ``additive`` (doubles: control + the two single knock-outs' shifts),
``split_half`` (the ceiling). ``grndiff_shifted`` (when planned) is the true graph with the
package-default source ``shifted_control`` instead of ``--source``. Metrics as
``_protocol.score_perturbation`` writes them; per knock-out rows and ``group="all"`` averages.

Usage::

    python benchmarks/graph_claim.py              # every part, splits 0, 1, 2
    python benchmarks/graph_claim.py --plan sim_ds2:0,sim_ds1_double:0,papalexi2021:0,sim_ds2:1  # a subset, in order
    python benchmarks/graph_claim.py --quick      # CI smoke run (< 2 min), results under a temp dir
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import _protocol as proto  # (benchmarks/_protocol.py: the shared evaluation protocol)
import numpy as np
import pandas as pd
from _results import command_string, record, write_results

SIM = {"sim_ds2": "ds2", "sim_ds3": "ds3", "sim_ds1_double": "ds1"}
DEFAULT_PARTS = ("sim_ds2", "sim_ds1_double", "papalexi2021", "sim_ds3")
SIM_VARIANTS = ("grndiff", "grndiff_rewired25", "grndiff_rewired50", "grndiff_rewired75", "grndiff_shuffled",
                "grndiff_nograph")
PAPALEXI_VARIANTS = ("grndiff", "grndiff_modules", "grndiff_both", "grndiff_shuffled")


# ------------------------------------------------------------------------------ data
def sim_data(dataset: str, cells: int, quick: bool, cache: str):
    """Control + knock-outs of one SERGIO network (cached as h5ad in ``cache``)."""
    import anndata as ad
    import ko_sim
    import sergio

    import grndiff as gd
    path = os.path.join(cache, f"{dataset}.h5ad")
    if os.path.exists(path):
        adata = ad.read_h5ad(path)
    else:
        name = SIM[dataset]
        edges = sergio.read_network(name)
        regs = sergio.regulators(edges, 3)
        if quick:
            regs = regs[:8]
        labels = ["control"] + regs
        if dataset == "sim_ds1_double":
            labels += [f"{a}+{b}" for a, b in itertools.combinations(regs, 2)]
        net = ko_sim.Network.from_sergio(name, n_types=3, seed=0)
        adata = ko_sim.simulate(net, labels, n_cells=cells, seed=0)
        adata.uns["regulators"] = regs
        adata.write_h5ad(path)
    adata.obs["perturbation"] = pd.Categorical(adata.obs["perturbation"].astype(str))
    gd.GRNDiff.setup_anndata(adata, layer="counts", perturbation_key="perturbation", control="control")
    return adata


def papalexi_data(quick: bool):
    return proto.papalexi_measured(100 if quick else None)


def load(dataset: str, args):
    if dataset == "papalexi2021":
        return papalexi_data(args["quick"])
    return sim_data(dataset, args["cells"], args["quick"], args["cache"])


def held_out_groups(adata, dataset: str, split: int) -> list[str]:
    """A seeded quarter of the knock-outs (doubles only for ``sim_ds1_double``)."""
    kos = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    if dataset == "sim_ds1_double":
        kos = [k for k in kos if "+" in k]
    n = max(1, int(round(len(kos) / 4)))
    return sorted(np.random.default_rng(split).permutation(kos)[:n].tolist())


def true_prior(dataset: str) -> pd.DataFrame:
    import sergio
    return sergio.signed_prior(sergio.read_network(SIM[dataset]))


def prior_of(dataset: str, method: str, genes, split: int):
    """(prior, modules) of one grndiff row; nulls are drawn among ``genes`` with seed ``split``."""
    import grndiff as gd
    from grndiff.priors.null import rewire
    if dataset == "papalexi2021":
        net = gd.priors.load("collectri")
        return {"grndiff": (net, None), "grndiff_modules": (None, "hallmark"), "grndiff_both": (net, "hallmark"),
                "grndiff_shuffled": (gd.priors.shuffle_edges(net, genes=genes, seed=split), None)}[method]
    net = true_prior(dataset)
    if method in ("grndiff", "grndiff_shifted"):
        return net, None
    if method.startswith("grndiff_rewired"):
        return rewire(net, int(method[len("grndiff_rewired"):]) / 100, genes=genes, seed=split), None
    if method == "grndiff_shuffled":
        return gd.priors.shuffle_edges(net, genes=genes, seed=split), None
    if method == "grndiff_nograph":
        return None, None
    raise KeyError(method)


def _control_subset(lab, n, seed):
    rows = np.flatnonzero(lab == "control")
    return np.sort(np.random.default_rng(seed).choice(rows, min(n, rows.size), replace=False))


# ------------------------------------------------------------------------------ one model (a worker job)
def run_job(job: dict) -> list[dict]:
    """Train one grndiff row on one split and score every held-out knock-out; returns records."""
    import torch
    torch.set_num_threads(1)
    proto.quiet()
    import grndiff as gd
    ds, method, split = job["dataset"], job["method"], job["split"]
    adata = load(ds, job)
    X = proto.log_expression(adata)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    held_out = held_out_groups(adata, ds, split)
    held = np.isin(lab, held_out)
    prior, modules = prior_of(ds, method, list(adata.var_names), split)
    t0 = time.perf_counter()
    source = "shifted_control" if method == "grndiff_shifted" else job["source"]
    if isinstance(source, str) and source.lstrip().startswith("{"):  # a source config, e.g. '{"name": ..., ...}'
        import json
        source = json.loads(source)
    model = gd.GRNDiff(adata[~held].copy(), prior=prior, modules=modules, source=source, seed=split,
                       **job["net"])
    model.train(max_steps=job["steps"], max_epochs=10_000, batch_size=64, val_fraction=0.02, progress_bar=False)
    t_train = time.perf_counter() - t0
    ctrl_ad = adata[_control_subset(lab, job["pred_cells"], split)].copy()
    pca = proto.reference_pca(X[~held], seed=split)
    ctrl = X[lab == "control"]
    recs, vals = [], []
    transport = model.module.source.can_transport
    for p in held_out:
        pred = model.predict(ctrl_ad, {"perturbation": p}, n_steps=job["n_steps"], clip=False)
        m = proto.score_perturbation(recs, ds, method, split, p, proto.dense(pred.X), X[lab == p], ctrl, pca)
        vals.append(m["pearson_delta_top20"])
        if transport:  # the source's estimate alone (predict(flow=False)): what the network starts from
            pred = model.predict(ctrl_ad, {"perturbation": p}, clip=False, flow=False)
            proto.score_perturbation(recs, ds, f"{method}_transport", split, p, proto.dense(pred.X), X[lab == p],
                                     ctrl, pca)
    gate = model.gate_ or {}
    if gate.get("unit"):
        recs.append(record(ds, method, "gate_alpha", gate["alpha"], seed=split, group="all_time"))
        checks = gate.get("checks") or []
        steps = gate["stopped_step"] if gate.get("stopped_step") else job["steps"]
        recs.append(record(ds, method, "steps_trained", steps if checks else job["steps"], seed=split,
                           group="all_time"))
    recs.append(record(ds, method, "train_seconds", t_train, seed=split, group="all_time"))
    recs.append(record(ds, method, "n_edges", model.graph.n_edges, seed=split, group="all_time"))
    print(f"  {ds:<15s} split {split} {method:<20s} pearson_top20 {np.nanmean(vals):.3f} "
          f"({t_train:.0f}s train, {time.perf_counter() - t0:.0f}s total)", flush=True)
    return recs


# ------------------------------------------------------------------------------ baselines (main process)
def baselines(dataset: str, args: dict, splits, records: list) -> list[str]:
    from grndiff.baselines import LinearPCARidge, MeanShift
    adata = load(dataset, args)
    X = proto.log_expression(adata)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    ctrl = X[lab == "control"]
    mu0 = ctrl.mean(0)
    groups = []
    for split in splits:
        held_out = held_out_groups(adata, dataset, split)
        held = np.isin(lab, held_out)
        pca = proto.reference_pca(X[~held], seed=split)
        train = sorted(set(lab[~held]) - {"control"})
        deltas = {p: X[lab == p].mean(0) - mu0 for p in train}
        ms = MeanShift().fit(X[~held], lab[~held], "control")
        singles = {p: d for p, d in deltas.items() if "+" not in p}
        lin = LinearPCARidge(n_comps=10, ridge=0.1).fit(singles, expression=X[~held], genes=list(adata.var_names))
        for p in held_out:
            true = X[lab == p]
            proto.score_perturbation(records, dataset, "mean_shift", split, p, ms.predict(ctrl), true, ctrl, pca)
            parts = p.split("+")
            lin_delta = sum(lin.predict(g) for g in parts)  # a double: the sum of the linear singles
            proto.score_perturbation(records, dataset, "linear", split, p, ctrl + lin_delta, true, ctrl, pca)
            if len(parts) > 1:
                add = sum(deltas[g] for g in parts)
                proto.score_perturbation(records, dataset, "additive", split, p, ctrl + add, true, ctrl, pca)
            proto.score_ceiling(records, dataset, split, p, true, ctrl, pca)
            groups.append(p)
    return sorted(set(groups))


# ------------------------------------------------------------------------------ summary
def summary(records) -> list[str]:
    s = proto.seed_summary(records)
    out = []
    if s.empty:
        return out
    for ds, d in s[s["metric"] == "pearson_delta_top20"].groupby("dataset", sort=False):
        cells = [f"{r['method']} {r['mean']:.3f}" + (f" ± {r['sd']:.3f}" if r["n"] > 1 else "") + f" (n={r['n']})"
                 for _, r in d.iterrows()]
        out.append(f"summary {ds} Pearson Δ top-20 (mean ± sd over splits): " + "; ".join(cells))
    return out


def per_ko_table(records, dataset="papalexi2021") -> list[str]:
    """Papalexi: Pearson Δ top-20 of each knock-out under each prior (the 'which prior helps' line)."""
    df = pd.DataFrame([r for r in records if r["dataset"] == dataset and r["metric"] == "pearson_delta_top20"
                       and r["group"] not in ("all", "all_time")])
    if df.empty:
        return []
    t = df.groupby(["group", "method"])["value"].mean().unstack()
    lines = []
    for ko, row in t.iterrows():
        null = row.get("grndiff_shuffled", np.nan)
        cells = ", ".join(f"{m} {v:.3f}" + (f" ({v - null:+.3f} vs null)" if m != "grndiff_shuffled"
                                            and m.startswith("grndiff") and np.isfinite(null) else "")
                          for m, v in row.items() if np.isfinite(v))
        lines.append(f"{dataset} {ko}: {cells}")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run (< 2 min); writes under a temp dir")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated subset of {DEFAULT_PARTS}")
    ap.add_argument("--splits", default="0,1,2", help="seeded held-out splits (sim) / folds (Papalexi)")
    ap.add_argument("--plan", default=None,
                    help="job order as 'part:split[:method+method]' items, comma-separated, e.g. "
                         "'sim_ds2:0,sim_ds3:0:grndiff+grndiff_shuffled' (default: every part's split 0, then 1, ...)")
    ap.add_argument("--steps", type=int, default=300, help="training steps of each grndiff row")
    ap.add_argument("--cells", type=int, default=40, help="simulated cells per cell type and perturbation")
    ap.add_argument("--source", default="control",
                    help="grndiff source: a name (control, shifted_control, auto, ...) or a JSON config "
                    "('{\"name\": \"shifted_control\", \"coupling\": \"residual\"}')")
    ap.add_argument("--n-steps", type=int, default=10, help="Euler steps of prediction")
    ap.add_argument("--pred-cells", type=int, default=150, help="control cells transported per knock-out")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (1 torch thread each)")
    ap.add_argument("--name", default="graph_claim")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    proto.quiet()
    net = {"hidden": 32, "depth": 2}
    out_dir = args.out_dir
    splits = [int(s) for s in args.splits.split(",") if s.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if args.quick:
        args.steps, args.n_steps, args.pred_cells, args.cells = 15, 2, 40, 15
        splits, args.plan = [0], None
        net = {"hidden": 8, "depth": 1}
        parts = [p for p in parts if p != "sim_ds3"]
        out_dir = out_dir or tempfile.mkdtemp(prefix="grndiff-graph-claim-")
    plan = []  # (part, split, methods or None)
    for item in (args.plan.split(",") if args.plan else [f"{p}:{s}" for s in splits for p in parts]):
        bits = item.strip().split(":")
        plan.append((bits[0], int(bits[1]), bits[2].split("+") if len(bits) > 2 else None))
    parts = list(dict.fromkeys(p for p, _, _ in plan))
    bad = [p for p in parts if p not in DEFAULT_PARTS]
    if bad:
        ap.error(f"unknown parts {bad}; choose from {DEFAULT_PARTS}")
    cache = tempfile.mkdtemp(prefix="grndiff-graph-claim-data-")
    common = {"quick": args.quick, "cells": args.cells, "cache": cache, "net": net, "steps": args.steps,
              "n_steps": args.n_steps, "pred_cells": args.pred_cells, "source": args.source}
    records: list[dict] = []
    groups: dict[str, list[str]] = {}
    t_start = time.perf_counter()
    for part in parts:
        groups[part] = baselines(part, common, sorted({s for p, s, _ in plan if p == part}), records)
        print(f"[{time.perf_counter() - t_start:5.0f}s] {part}: data and baselines done", flush=True)
    jobs = []
    for part, split, methods in plan:
        if methods is None:
            methods = PAPALEXI_VARIANTS if part == "papalexi2021" else SIM_VARIANTS
            if args.quick:
                methods = (("grndiff", "grndiff_modules") if part == "papalexi2021" else
                           ("grndiff", "grndiff_shuffled", "grndiff_nograph"))
        jobs += [{**common, "dataset": part, "method": m, "split": split} for m in methods]

    def save():
        recs = [r for r in records if r["group"] != "all"]
        for ds, grp in groups.items():
            proto.average_groups(recs, ds, grp)
        config = {"steps": args.steps, "plan": [f"{p}:{s}" + (":" + "+".join(m) if m else "") for p, s, m in plan],
                  "cells_per_type": args.cells,
                  "cell_types": 3, "source": args.source, "euler_steps": args.n_steps, "pred_cells": args.pred_cells,
                  "net": net, "batch_size": 64, "jobs": args.jobs, "parts": parts, "quick": args.quick}
        done = {(r["dataset"], r["method"], r["seed"]) for r in recs if r["metric"] == "train_seconds"}
        missing = [f"{j['dataset']}/{j['method']}/split{j['split']}" for j in jobs
                   if (j["dataset"], j["method"], j["split"]) not in done]
        notes = ["simulator: benchmarks/ko_sim.py (SERGIO kinetics, half-responses fixed at the wild type; "
                 "a knock-out zeroes production), 3 cell types, Poisson counts with log-normal library size",
                 f"grndiff source={args.source!r}, modules=None on the simulations; each worker process "
                 "torch.set_num_threads(1) on a 2-core machine shared with other jobs",
                 "nulls (rewired, shuffled) are drawn among the genes the model sees, with the real graph's edge "
                 "count and in/out-degrees (grndiff.priors.null)",
                 "sim_ds1_double: singles always seen; held-out pairs only; linear for a pair = sum of its two "
                 "linear single predictions",
                 "group 'all' = mean over the held-out knock-outs of a split; seed = split",
                 ] + ([f"not run (time): {', '.join(missing)}"] if missing else []) + summary(recs) + per_ko_table(recs)
        return write_results(args.name, recs, command_string(), extra={"config": config, "notes": notes},
                             out_dir=out_dir), recs

    save()
    print(f"[{time.perf_counter() - t_start:5.0f}s] {len(jobs)} grndiff jobs on {args.jobs} worker(s)", flush=True)
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            for recs in pool.map(run_job, jobs):
                records += recs
                save()
    else:
        for job in jobs:
            records += run_job(job)
            save()
    paths, recs = save()
    print(f"[{time.perf_counter() - t_start:5.0f}s] wrote {paths[0]}")
    for line in summary(recs) + per_ko_table(recs):
        print(line)
    return recs


if __name__ == "__main__":
    main()
