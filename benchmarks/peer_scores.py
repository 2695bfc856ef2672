"""Score the peers' prediction files with grndiff's own scorer, exactly as the grndiff rows are scored.

Runs in grndiff's environment (not a peer's). ``benchmarks/perturbation.py --peers DIR`` imports
:func:`peer_records`; on its own::

    python benchmarks/peer_scores.py [DIR]        # default DIR: benchmarks/peers/_out

For every ``DIR/pred_<method>_<T>.h5ad`` (``method`` in :data:`PEERS`, ``T`` a Kang cell type with
non-alphanumerics → ``_``) the prediction is scored by ``_protocol.score_perturbation`` against the
log1p CP10k of T's stimulated (true) and control cells, with the PCA of every cell but T's
stimulated ones — the calls of ``perturbation.py::kang_baselines``. Papalexi predictions, if any,
live in ``DIR/papalexi2021/pred_<method>_<KO>.h5ad`` and are scored as the Papalexi baselines are
(true = the knock-out's cells, ctrl = all control cells, PCA of every cell outside the fold).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from _protocol import average_groups, dense, log_expression, reference_pca, score_perturbation
from _results import record

PEERS = ("scgen", "cpa", "cellflow")
PAPALEXI_SUBDIR = "papalexi2021"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(name))


def find_predictions(pred_dir, methods=PEERS, groups=None) -> dict:
    """``{(method, group): path}`` of the prediction files in ``pred_dir``; ``groups`` (real names)
    maps file suffixes back to group names (a file whose suffix matches none is ignored)."""
    pred_dir = Path(pred_dir)
    by_safe = {_safe(g): g for g in (groups or [])}
    found = {}
    if not pred_dir.is_dir():
        return found
    for m in sorted(methods, key=len, reverse=True):  # longest first: 'grndiff_shift' before 'grndiff'
        prefix = f"pred_{m}_"
        for p in sorted(pred_dir.glob(f"{prefix}*.h5ad")):
            suffix = p.name[len(prefix):-len(".h5ad")]
            g = by_safe.get(suffix)
            if g is not None and not any(v == p for v in found.values()):
                found[(m, g)] = p
    return found


def read_prediction(path, genes) -> np.ndarray:
    """The (cells, genes) float64 prediction, columns in the order of ``genes``."""
    import anndata as ad
    a = ad.read_h5ad(path)
    names = [str(v) for v in a.var_names]
    genes = [str(g) for g in genes]
    if names != genes:
        if set(names) != set(genes):
            raise ValueError(f"{path.name}: its genes are not the data's genes "
                             f"({len(set(names) & set(genes))} of {len(genes)} shared)")
        a = a[:, genes]
    X = dense(a.X)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{path.name}: non-finite predicted values")
    return X


def _train_seconds(pred_dir, method, group):
    path = Path(pred_dir) / "run_info.json"
    if not path.exists():
        return None
    info = json.loads(path.read_text()).get(method, {})
    return info.get("groups", {}).get(str(group), {}).get("seconds")


def _kang():
    """``perturbation.py::kang_data`` without ``GRNDiff.setup_anndata`` (slow; it does not touch the
    counts the scores are computed from)."""
    import grndiff as gd
    return gd.datasets.kang2018()


def _papalexi():
    """``perturbation.py::papalexi_data`` without ``GRNDiff.setup_anndata``: control + the
    knock-outs whose target gene is measured."""
    import pandas as pd

    import grndiff as gd
    adata = gd.datasets.papalexi2021()
    lab = adata.obs["perturbation"].astype(str)
    adata = adata[((lab == "control") | lab.isin(set(adata.var_names))).to_numpy()].copy()
    adata.obs["perturbation"] = pd.Categorical(adata.obs["perturbation"].astype(str))
    return adata


def seed_dirs(pred_dir) -> dict:
    """``{seed: folder}``: ``pred_dir`` holds seed 0's files, ``pred_dir/seed<s>`` those of seed s
    (``run_all.sh`` with ``SEEDS="0 1 2"`` writes them there)."""
    pred_dir = Path(pred_dir)
    out = {0: pred_dir}
    for p in sorted(pred_dir.glob("seed*")) if pred_dir.is_dir() else []:
        if p.is_dir() and p.name[4:].isdigit() and int(p.name[4:]) > 0:
            out[int(p.name[4:])] = p
    return out


def kang_peer_records(pred_dir, methods=PEERS) -> list[dict]:
    """Kang records of every seed's folder (:func:`seed_dirs`)."""
    adata = _kang()
    records: list[dict] = []
    for seed, folder in seed_dirs(pred_dir).items():
        records += _kang_seed_records(adata, folder, methods, seed)
    return records


def _kang_seed_records(adata, pred_dir, methods, seed: int) -> list[dict]:
    X = log_expression(adata)
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    cond = adata.obs["condition"].astype(str).to_numpy()
    types = sorted(set(ct))
    found = find_predictions(pred_dir, methods, types)
    records: list[dict] = []
    for T in types:
        todo = [(m, p) for (m, g), p in found.items() if g == T]
        if not todo:
            continue
        held, is_ctrl = (ct == T) & (cond == "stim"), (ct == T) & (cond == "ctrl")
        true, ctrl = X[held], X[is_ctrl]
        pca = reference_pca(X[~held])
        for m, p in sorted(todo):
            pred = read_prediction(p, adata.var_names)
            score_perturbation(records, "kang2018", m, seed, T, pred, true, ctrl, pca)
            secs = _train_seconds(pred_dir, m, T)
            if secs is not None:
                records.append(record("kang2018", m, "train_seconds", secs, seed=seed, group=T))
    average_groups(records, "kang2018", types)  # the mean over types; kept only where every type was predicted
    return _complete_only(records, "kang2018", types)


def _complete_only(records, dataset, groups):
    """Keep ``group='all'`` rows only for methods that have every group."""
    have = {}
    for r in records:
        if r["dataset"] == dataset and r["group"] != "all":
            have.setdefault(r["method"], set()).add(r["group"])
    full = {m for m, g in have.items() if set(groups) <= g}
    return [r for r in records if r["group"] != "all" or r["method"] in full]


def papalexi_peer_records(pred_dir, methods=PEERS) -> list[dict]:
    from perturbation import STRONG, papalexi_folds
    sub = Path(pred_dir) / PAPALEXI_SUBDIR
    if not sub.is_dir():
        return []
    adata = _papalexi()
    X = log_expression(adata)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    kos = sorted(set(lab) - {"control"})
    folds = papalexi_folds(kos, 5)
    found = find_predictions(sub, methods, kos)
    if not found:
        return []
    ctrl = X[lab == "control"]
    records: list[dict] = []
    for f, held_out in enumerate(folds):
        todo = [(m, g, p) for (m, g), p in found.items() if g in held_out]
        if not todo:
            continue
        held = np.isin(lab, held_out)
        pca = reference_pca(X[~held], seed=f)
        for m, g, p in sorted(todo):
            pred = read_prediction(p, adata.var_names)
            score_perturbation(records, "papalexi2021", m, 0, g, pred, X[lab == g], ctrl, pca)
    average_groups(records, "papalexi2021", kos)
    strong = [g for g in kos if g in STRONG]
    average_groups(records, "papalexi2021", strong, name="strong")
    return _complete_only(records, "papalexi2021", kos)


def peer_records(pred_dir, methods=PEERS) -> list[dict]:
    """Tidy records ``{dataset, method, seed, group, metric, value}`` of every peer prediction
    file in ``pred_dir`` (Kang) and ``pred_dir/papalexi2021`` (Papalexi), scored like grndiff's rows.
    Per-group rows, plus ``group='all'`` (and Papalexi ``'strong'``) means for a method that
    predicted every group."""
    return kang_peer_records(pred_dir, methods) + papalexi_peer_records(pred_dir, methods)


def summary_table(records, metrics=("pearson_delta_top20", "energy_distance")) -> str:
    import pandas as pd
    df = pd.DataFrame(records)
    if df.empty:
        return "(no prediction files found)"
    lines = []
    for (ds, met), d in df[df["metric"].isin(metrics)].groupby(["dataset", "metric"], sort=False):
        t = d.pivot_table(index="method", columns="group", values="value", aggfunc="mean")
        cols = [c for c in t.columns if c not in ("all", "strong")] + [c for c in ("strong", "all") if c in t.columns]
        lines.append(f"{ds} — {met}")
        lines.append(t[cols].to_string(float_format=lambda v: f"{v:.3f}"))
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="Score peer prediction files with grndiff's scorer")
    ap.add_argument("pred_dir", nargs="?", default=str(Path(__file__).resolve().parent / "peers" / "_out"))
    ap.add_argument("--methods", default=",".join(PEERS))
    ap.add_argument("--json", default=None, help="also write the records to this JSON file")
    args = ap.parse_args(argv)
    from _protocol import quiet
    quiet()
    recs = peer_records(args.pred_dir, [m.strip() for m in args.methods.split(",") if m.strip()])
    print(summary_table(recs))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(recs, fh, indent=1)
    return recs


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
