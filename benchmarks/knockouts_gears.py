"""GEARS as a peer on the Papalexi knock-out benchmark: the GEARS architecture with our prior.

One command, results in ``benchmarks/results/knockouts_gears.{json,md}``::

    python benchmarks/knockouts_gears.py                 # 5 folds (needs: bash benchmarks/peers/setup.sh gears)
    python benchmarks/knockouts_gears.py --folds 0,1     # some folds
    python benchmarks/knockouts_gears.py --quick         # smoke run (few cells, 1 epoch), under a temp dir

The protocol is that of ``benchmarks/knockouts.py``: ``papalexi_all()`` (every knock-out the data
or the CollecTRI ∪ OmniPath-signalling prior names), ``papalexi_folds(kos, 5)``, each held-out
knock-out predicted from all control cells and scored by ``_protocol.score_perturbation`` against
its cells, the control cells and the PCA of the cells outside the fold. ``no_change``,
``mean_shift`` and ``split_half`` are scored again in the same run, on the same folds.

GEARS (Roohani et al. 2024, ``cell-gears`` 0.1.2) runs in its own venv
(``benchmarks/peers/.venvs/gears``, or ``$GEARS_PYTHON``) through ``benchmarks/peers/run_gears.py``.
For each fold this script writes the fold's training cells + all control cells with
``X`` = ``log_expression`` (log1p CP10k of the counts: the space that is scored, and the
log-normalised input GEARS expects) and the prior's edges; GEARS's GO graph (downloaded at run
time, unreachable here) is replaced by the same prior (see run_gears.py). GEARS returns its mean
prediction over every control cell; since its output is ``x + f(knock-out)`` for a control cell x,
the predicted cells are the control cells + (predicted mean − control mean), which is what GEARS
predicts for each of them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_GEARS_PYTHON = HERE / "peers" / ".venvs" / "gears" / "bin" / "python"
RUN_GEARS = HERE / "peers" / "run_gears.py"
CTRL = "control"


# ------------------------------------------------------------------------------ helpers (tested)
def write_gears_input(path, X, lab, genes) -> Path:
    """The h5ad run_gears.py reads: ``X`` (cells × genes, CSR float32) as given, ``obs["perturbation"]``."""
    import anndata as ad
    import scipy.sparse as sp
    X = np.asarray(X, dtype=np.float32)
    if X.shape != (len(lab), len(genes)):
        raise ValueError(f"X has shape {X.shape}, expected {(len(lab), len(genes))}")
    obs = pd.DataFrame({"perturbation": pd.Categorical([str(v) for v in lab])},
                       index=[f"cell{i}" for i in range(len(lab))])
    a = ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=pd.Index([str(g) for g in genes])))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path


def write_prior_tsv(path, prior: pd.DataFrame) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prior[["source", "target"]].astype(str).drop_duplicates().to_csv(path, sep="\t", index=False)
    return path


def read_gears_means(path, genes) -> pd.DataFrame:
    """``pred_mean.tsv`` of run_gears.py: rows ``control`` and the predicted knock-outs, columns in the
    order of ``genes``; raises if genes are missing or a value is not finite."""
    df = pd.read_csv(path, sep="\t", index_col=0)
    df.columns = [str(c) for c in df.columns]
    genes = [str(g) for g in genes]
    missing = [g for g in genes if g not in df.columns]
    if missing:
        raise ValueError(f"{path}: {len(missing)} genes missing, e.g. {missing[:3]}")
    if CTRL not in df.index:
        raise ValueError(f"{path}: no '{CTRL}' row")
    df = df[genes].astype(np.float64)
    if not np.all(np.isfinite(df.to_numpy())):
        raise ValueError(f"{path}: non-finite predicted values")
    return df


def cells_from_means(ctrl: np.ndarray, means: pd.DataFrame, ko: str) -> np.ndarray:
    """Predicted cells of ``ko``: every control cell + (GEARS's predicted mean − its control mean)."""
    return np.asarray(ctrl, dtype=np.float64) + (means.loc[ko] - means.loc[CTRL]).to_numpy()[None, :]


# ------------------------------------------------------------------------------ one fold
def run_gears_fold(python, work: Path, X, lab, genes, held_out, prior_tsv, epochs: int, hidden: int,
                   timeout: float | None, seed: int = 0) -> tuple[pd.DataFrame | None, dict, float, str]:
    """Write the fold's inputs, run GEARS in its venv; returns (means or None, run_info, seconds, log tail)."""
    keep = ~np.isin(lab, held_out)
    inp = write_gears_input(work / "train.h5ad", X[keep], lab[keep], genes)
    out = work / "out"
    cmd = [str(python), str(RUN_GEARS), "--input", str(inp), "--heldout", ",".join(held_out), "--prior",
           str(prior_tsv), "--out", str(out), "--epochs", str(epochs), "--hidden", str(hidden), "--seed", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
        log, ok = (res.stdout + res.stderr)[-3000:], res.returncode == 0
    except subprocess.TimeoutExpired as e:
        log, ok = f"timed out after {timeout}s: {str(e.stderr)[-2000:] if e.stderr else ''}", False
    secs = time.perf_counter() - t0
    (work / "gears.log").write_text(log)
    if not ok or not (out / "pred_mean.tsv").exists():
        return None, {}, secs, log
    info = json.loads((out / "run_info.json").read_text())
    return read_gears_means(out / "pred_mean.tsv", genes), info, secs, log


# ------------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (30 cells per knock-out, 1 epoch); temp dir")
    ap.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    ap.add_argument("--epochs", type=int, default=2, help="GEARS training epochs per fold")
    ap.add_argument("--hidden", type=int, default=64, help="GEARS hidden size (its default: 64)")
    ap.add_argument("--gears-python", default=os.environ.get("GEARS_PYTHON", str(DEFAULT_GEARS_PYTHON)),
                    help="python of the GEARS venv (env GEARS_PYTHON)")
    ap.add_argument("--fold-timeout", type=float, default=None, help="seconds a GEARS fold may run")
    ap.add_argument("--max-minutes", type=float, default=None, help="folds not started by then are skipped")
    ap.add_argument("--work-dir", default=None, help="where the per-fold inputs/outputs go (default: temp)")
    ap.add_argument("--name", default="knockouts_gears")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)

    from _protocol import average_groups, log_expression, quiet, reference_pca, score_ceiling, score_perturbation
    from _results import command_string, record, write_results
    from knockouts import STRONG, UNION, papalexi_all
    from perturbation import _summary, papalexi_folds

    import grndiff as gd
    from grndiff.baselines import MeanShift
    quiet()

    quick_cells, out_dir = None, args.out_dir
    if args.quick:
        quick_cells, args.epochs, args.hidden = 30, 1, 16
        out_dir = out_dir or tempfile.mkdtemp(prefix="grndiff-knockouts-gears-")
    if not Path(args.gears_python).exists():
        raise SystemExit(f"no GEARS venv at {args.gears_python}: run `bash benchmarks/peers/setup.sh gears` "
                         "or set GEARS_PYTHON")
    work_root = Path(args.work_dir or tempfile.mkdtemp(prefix="gears-work-"))
    t_start = time.perf_counter()
    adata = papalexi_all(quick_cells)
    X = log_expression(adata)
    genes = [str(g) for g in adata.var_names]
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    kos = sorted(set(lab) - {CTRL})
    folds = papalexi_folds(kos, 2 if args.quick else 5)[: (1 if args.quick else None)]
    fold_ids = list(range(len(folds))) if not args.folds else [int(f) for f in args.folds.split(",") if f.strip()]
    ctrl = X[lab == CTRL]
    prior = gd.priors.combine(UNION)
    prior_tsv = write_prior_tsv(work_root / "prior.tsv", prior)
    dropped = sorted(set(gd.datasets.papalexi2021().obs["perturbation"].astype(str)) - set(kos) - {CTRL})

    records: list[dict] = []
    fold_info: dict = {}
    failed: dict = {}
    skipped: list[int] = []

    def save():
        groups = [p for f in fold_ids if f not in skipped for p in folds[f]]
        recs = [r for r in records if r["group"] not in ("all", "strong")]
        average_groups(recs, "papalexi2021", groups, complete_only=True)
        average_groups(recs, "papalexi2021", [g for g in groups if g in STRONG], name="strong", complete_only=True)
        predicted = sorted(p for i in fold_info.values() for p in i.get("predicted", []))
        not_pred = {k: v for i in fold_info.values() for k, v in i.get("not_predicted", {}).items()}
        neighbours = {k: v for i in fold_info.values() for k, v in i.get("prior_neighbours", {}).items()}
        no_nb = sorted(k for k, v in neighbours.items() if v == 0)
        config = {"epochs": args.epochs, "hidden_size": args.hidden, "quick": args.quick, "folds_run": fold_ids,
                  "knockouts": kos, "folds": folds, "gears_python": os.path.relpath(args.gears_python, HERE.parent)
                  if str(args.gears_python).startswith(str(HERE.parent)) else str(args.gears_python),
                  "gears_runs": {str(f): {k: i.get(k) for k in ("versions", "settings", "seconds", "n_pert_genes",
                                                                   "n_go_edges_before_topk", "n_cells",
                                                                   "max_cell_shift_deviation")}
                                 for f, i in fold_info.items()}}
        notes = [
            "gears = the GEARS architecture (cell-gears 0.1.2, its default model and training settings but "
            f"{args.epochs} epoch(s) and hidden {args.hidden}) with OUR prior in place of GO: GEARS's "
            "perturbation graph joins genes by the Jaccard similarity of their GO-term sets; here a gene's 'term "
            "set' is the gene and its CollecTRI ∪ OmniPath-signalling neighbours (GEARS's own rule then: > 0.1, "
            "20 most similar per gene). GO is downloaded at run time and cannot be reached here. The co-expression "
            "gene graph is GEARS's own (from the fold's training cells).",
            "GEARS's perturbable genes (pert_list) = the 299 measured genes + every knocked-out gene (training "
            "and held-out), so unmeasured knock-outs are perturbation nodes. Predicted: "
            f"{len(predicted)} knock-outs ({', '.join(predicted)}); not predicted: "
            + (", ".join(f"{k} ({v})" for k, v in not_pred.items()) or "none")
            + (f"; in the prior with no neighbour (only a self-loop in GEARS's graph, an untrained embedding when "
               f"held out): {', '.join(no_nb)}" if no_nb else ""),
            "input X = log1p CP10k of the counts (log_expression, the scored space); GEARS's output for a control "
            "cell x is x + f(knock-out), so its predicted cells are every control cell + (GEARS's mean "
            "prediction over all control cells − the control mean); predicted values are not clipped",
            "GEARS model selection: the epoch with the lowest top-20-DE MSE on 2 seeded training knock-outs "
            "(kept in training); CPU, 1 torch thread, nice 10; the machine ran another benchmark beside this one",
            "train_seconds: gears = wall seconds of its whole subprocess per fold (data processing, graph, "
            "training, prediction of every held-out knock-out); mean_shift = its fit",
            f"left out (gene in neither the data nor CollecTRI ∪ OmniPath): {dropped}",
            "group 'strong' = IFNGR1, IFNGR2, JAK2, STAT1, IRF1; 'all' averages only methods with every knock-out "
            "of the folds run",
        ] + ([f"GEARS failed on folds {sorted(failed)}: " + "; ".join(f"{k}: {v[-300:]}" for k, v in failed.items())]
             if failed else []) + (
            [f"not run (--max-minutes {args.max_minutes} reached): folds {skipped}"] if skipped else []
        ) + _summary(recs)
        return write_results(args.name, recs, command_string(), extra={"config": config, "notes": notes},
                             out_dir=out_dir), recs

    for f in fold_ids:
        if args.max_minutes is not None and time.perf_counter() - t_start > 60 * args.max_minutes:
            skipped.append(f)
            continue
        held_out = folds[f]
        held = np.isin(lab, held_out)
        pca = reference_pca(X[~held], seed=f)
        t0 = time.perf_counter()
        ms = MeanShift().fit(X[~held], lab[~held], CTRL)
        secs = time.perf_counter() - t0
        records.append(record("papalexi2021", "mean_shift", "train_seconds", secs, group=f"fold{f}"))
        work = work_root / f"fold{f}"
        means, info, secs, log = run_gears_fold(args.gears_python, work, X, lab, genes, held_out, prior_tsv,
                                                args.epochs, args.hidden, args.fold_timeout, seed=0)
        if means is None:
            failed[f] = log
            print(f"  fold {f}: GEARS failed after {secs:.0f}s:\n{log[-1500:]}", flush=True)
        else:
            fold_info[f] = info
            records.append(record("papalexi2021", "gears", "train_seconds", secs, group=f"fold{f}"))
        vals: dict = {}
        for p in held_out:
            true = X[lab == p]
            for name, pred in (("no_change", ctrl), ("mean_shift", ms.predict(ctrl))):
                vals.setdefault(name, []).append(
                    score_perturbation(records, "papalexi2021", name, 0, p, pred, true, ctrl,
                                       pca)["pearson_delta_top20"])
            if means is not None and p in means.index:
                vals.setdefault("gears", []).append(score_perturbation(
                    records, "papalexi2021", "gears", 0, p, cells_from_means(ctrl, means, p), true, ctrl,
                    pca)["pearson_delta_top20"])
            score_ceiling(records, "papalexi2021", 0, p, true, ctrl, pca)
        print(f"  fold {f} [{time.perf_counter() - t_start:5.0f}s] gears {secs:.0f}s; "
              + "; ".join(f"{m} ρΔ20 {np.mean(v):.3f}" for m, v in vals.items()), flush=True)
        save()
    paths, recs = save()
    print(f"[{time.perf_counter() - t_start:5.0f}s] wrote {paths[0]}")
    for line in _summary(recs):
        print(line)
    return recs


if __name__ == "__main__":
    main()
