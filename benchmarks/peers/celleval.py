"""cell-eval (Arc Institute's evaluator) as an independent judge of every method's Kang predictions.

    python benchmarks/peers/celleval.py [PRED_DIR] [--methods scgen,cpa,cellflow,grndiff,mean_shift]

For each method with ``PRED_DIR/pred_<method>_<T>.h5ad`` files (the peers' and the ones
``benchmarks/perturbation.py --pred-dir PRED_DIR`` writes for ``grndiff`` / ``mean_shift``), two
AnnData are assembled in the layout cell-eval expects and ``cell-eval run`` is called once per
method, in its own environment (``benchmarks/peers/.venvs/celleval``, or ``$CELL_EVAL``):

- ``real.h5ad``: every cell of the cell types the method predicted, log1p CP10k, with
  ``obs["condition"]`` = ``ctrl`` / ``stim`` (the perturbation column, control cells included)
  and ``obs["cell_type"]``;
- ``pred.h5ad``: per cell type T, T's real control cells (``ctrl``) plus the method's predicted
  stimulated cells (``stim``).

``cell-eval run --pert-col condition --control-pert ctrl --celltype-col cell_type`` evaluates each
cell type separately (its ``--celltype-col`` splits the files by cell type), so each held-out
Kang cell type is one context with one perturbation, ``stim`` vs ``ctrl``. cell-eval requires
log1p-range values (no negatives): predicted values below 0 (decoders and PCA reconstructions
produce a few) are clipped to 0 *for the judge only*; grndiff's scorer sees them unclipped.
Metrics: ``--profile full`` by default; :func:`celleval_records` returns the headline ones
(:data:`HEADLINE`) as tidy records named ``celleval_<metric>``.

The Papalexi knock-outs (``benchmarks/knockouts.py --pred-dir DIR --celleval``) use the other layout
cell-eval knows, many perturbations in one context (no ``--celltype-col``):
:func:`build_knockout_layout` writes ``real.h5ad`` (the control cells and the real cells of every
knock-out the method predicted, ``obs["perturbation"]``) and ``pred.h5ad`` (the same control cells
and the predicted cells of each knock-out); cell-eval then writes one ``results.csv`` with a row
per knock-out, which :func:`knockout_celleval_records` reads (:data:`KO_HEADLINE`: the headline
metrics plus ``discrimination_score_l1``, meaningful among many perturbations).

Runs in any environment with numpy, pandas and anndata (grndiff's included).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

try:  # imported from benchmarks/ as peers.celleval (perturbation.py --celleval)
    from . import _common as C
except ImportError:  # run as a script from benchmarks/peers/
    import _common as C

METHODS = ("scgen", "cpa", "cellflow", "grndiff", "grndiff_shift", "mean_shift")
PERT_COL, CTRL_PERT, CELLTYPE_COL = "condition", C.CTRL, "cell_type"
#: cell-eval's headline metrics: its "minimal" profile plus the DE-agreement ones of "full".
#: Left out: ``discrimination_score_*`` (1.0 by construction with one perturbation per context)
#: and ``de_nsig_counts_*`` (counts, not scores).
HEADLINE = ("pearson_delta", "mse", "mae", "overlap_at_N", "precision_at_N", "de_spearman_lfc_sig",
            "de_direction_match", "de_sig_genes_recall")
#: knock-outs: many perturbations share one context, so ``discrimination_score_l1`` (how highly a
#: predicted knock-out ranks its own real profile among those of the knock-outs the method
#: predicted, by L1 distance) measures something.
KO_HEADLINE = HEADLINE + ("discrimination_score_l1",)
KO_DATASET, KO_PERT_COL, KO_CONTROL = "papalexi2021", "perturbation", "control"


def celleval_exe() -> str:
    exe = os.environ.get("CELL_EVAL") or str(HERE / ".venvs" / "celleval" / "bin" / "cell-eval")
    if not (Path(exe).exists() or shutil.which(exe)):
        raise FileNotFoundError(f"cell-eval not found at {exe}: run `bash benchmarks/peers/setup.sh celleval` "
                                f"or set CELL_EVAL")
    return exe


def _record(method, metric, value, group, dataset: str = "kang2018") -> dict:
    """One tidy record ``{dataset, method, seed: 0, group, metric, value}`` (non-finite value: None)."""
    try:
        from _results import record
        return record(dataset, method, metric, value, seed=0, group=group)
    except ImportError:  # pragma: no cover - _results is stdlib-only, always importable here
        v = None if value is None or not np.isfinite(value) else float(value)
        return {"dataset": dataset, "method": method, "seed": 0, "group": group, "metric": metric, "value": v}


def _read_pred(path, genes) -> np.ndarray:
    import anndata as ad
    a = ad.read_h5ad(path)
    names = [str(v) for v in a.var_names]
    if names != list(genes):
        if set(names) != set(genes):
            raise ValueError(f"{Path(path).name}: its genes are not the data's genes")
        a = a[:, list(genes)]
    return C.dense(a.X)


def _write_pair(work, genes, real_X, real_obs, pred_X: list, pred_obs: list) -> tuple[Path, Path]:
    """Write ``work/real.h5ad`` (``real_X`` with ``real_obs``) and ``work/pred.h5ad`` (the row blocks
    ``pred_X`` stacked, with ``pred_obs`` concatenated), float32, ``var_names`` = ``genes``; returns
    their paths."""
    import anndata as ad
    import pandas as pd
    var = pd.DataFrame(index=pd.Index(genes))
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    real_path, pred_path = work / "real.h5ad", work / "pred.h5ad"
    ad.AnnData(X=np.asarray(real_X, dtype=np.float32), obs=real_obs, var=var).write_h5ad(real_path)
    ad.AnnData(X=np.vstack(pred_X).astype(np.float32), obs=pd.concat(pred_obs), var=var).write_h5ad(pred_path)
    return real_path, pred_path


def build_layout(pred_dir, method: str, work) -> tuple[Path, Path, list[str]] | None:
    """Write ``work/real.h5ad`` and ``work/pred.h5ad`` for ``method``; returns their paths and the
    cell types covered (None when the method has no Kang prediction file)."""
    import pandas as pd
    a = C.load_kang()
    X = C.log1p_cp10k(a.layers["counts"])
    genes = [str(g) for g in a.var_names]
    types = [T for T in C.kang_types(a) if C.pred_path(pred_dir, method, T).exists()]
    if not types:
        return None
    real_rows, pred_X, pred_obs = [], [], []
    for T in types:
        held, is_ctrl = C.kang_masks(a, T)
        real_rows.append(np.flatnonzero(held | is_ctrl))
        p = np.clip(_read_pred(C.pred_path(pred_dir, method, T), genes), 0.0, None)  # cell-eval: no negatives
        pred_X += [X[is_ctrl], p]
        pred_obs.append(pd.DataFrame({PERT_COL: C.CTRL, CELLTYPE_COL: C.safe(T)},
                                     index=[f"{n}" for n in a.obs_names[is_ctrl]]))
        pred_obs.append(pd.DataFrame({PERT_COL: C.STIM, CELLTYPE_COL: C.safe(T)},
                                     index=[f"pred{i}-{C.safe(T)}" for i in range(p.shape[0])]))
    rows = np.concatenate(real_rows)
    real_obs = pd.DataFrame({PERT_COL: a.obs[PERT_COL].astype(str).to_numpy()[rows],
                             CELLTYPE_COL: [C.safe(t) for t in a.obs["cell_type"].astype(str).to_numpy()[rows]]},
                            index=a.obs_names[rows])
    return (*_write_pair(work, genes, X[rows], real_obs, pred_X, pred_obs), types)


def run_celleval(real_path, pred_path, outdir, profile: str = "full", timeout: int = 1800, *,
                 pert_col: str = PERT_COL, control: str = CTRL_PERT, celltype_col: str | None = CELLTYPE_COL) -> None:
    """``cell-eval run`` on the two files, one thread, its output under ``outdir`` (``results.csv``
    with ``celltype_col=None``, else ``<cell type>_results.csv`` per cell type); returns nothing,
    raises RuntimeError with cell-eval's stderr when it fails."""
    cmd = [celleval_exe(), "run", "-ap", str(pred_path), "-ar", str(real_path), "--pert-col", pert_col,
           "--control-pert", control, "--profile", profile, "--num-threads", "1", "-o", str(outdir)]
    if celltype_col is not None:
        cmd += ["--celltype-col", celltype_col]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"cell-eval failed ({res.returncode}):\n{res.stderr[-3000:]}")


def _results_csv(outdir, T=None) -> Path:
    """cell-eval's per-perturbation table: ``<T>_results.csv`` for cell type T of ``--celltype-col``,
    ``results.csv`` for a run without one (``T=None``)."""
    return Path(outdir) / ("results.csv" if T is None else f"{C.safe(T)}_results.csv")


def parse_results(outdir, groups, method, metrics=HEADLINE, *, by: str = "celltype",
                  dataset: str = "kang2018") -> list[dict]:
    """Records ``celleval_<metric>`` (one per metric of ``metrics`` that cell-eval wrote, NaN → None)
    for each group of ``groups``, read from cell-eval's output in ``outdir``:

    - ``by="celltype"`` (Kang): a group is a cell type, read from ``<group>_results.csv``, row ``stim``;
    - ``by="perturbation"`` (knock-outs): a group is a perturbation, read from the row of that
      perturbation in ``results.csv``.

    A group without its file or row gets no records."""
    if by not in ("celltype", "perturbation"):
        raise ValueError(f"by must be 'celltype' or 'perturbation', not {by!r}")
    tables: dict[Path, list[dict]] = {}
    recs = []
    for g in groups:
        path, pert = (_results_csv(outdir, g), C.STIM) if by == "celltype" else (_results_csv(outdir), str(g))
        if path not in tables:
            if not path.exists():
                tables[path] = []
            else:
                with open(path) as fh:
                    tables[path] = list(csv.DictReader(fh))
        rows = [r for r in tables[path] if r.get("perturbation", pert) == pert]
        for r in rows[:1]:
            for m in metrics:
                if m in r and r[m] not in ("", None):
                    try:
                        v = float(r[m])
                    except ValueError:
                        continue
                    recs.append(_record(method, f"celleval_{m}", v, g, dataset=dataset))
    return recs


def celleval_records(pred_dir, methods=METHODS, profile: str = "full", keep_dir=None) -> list[dict]:
    """cell-eval's headline metrics for every method's Kang predictions in ``pred_dir``:
    tidy records ``{dataset: 'kang2018', method, seed: 0, group: <cell type>, metric:
    'celleval_<name>', value}``, plus ``group='all'`` means for a method that predicted all types."""
    recs: list[dict] = []
    all_types = C.kang_types(C.load_kang())
    for m in methods:
        with tempfile.TemporaryDirectory(prefix=f"celleval-{m}-") as tmp:
            work = Path(keep_dir) / m if keep_dir else Path(tmp)
            built = build_layout(pred_dir, m, work)
            if built is None:
                continue
            real_path, pred_path, types = built
            run_celleval(real_path, pred_path, work / "out", profile=profile)
            got = parse_results(work / "out", types, m)
            recs += got
            if set(types) == set(all_types):
                by_metric: dict[str, list[float]] = {}
                for r in got:
                    if r["value"] is not None:
                        by_metric.setdefault(r["metric"], []).append(r["value"])
                recs += [_record(m, k, float(np.mean(v)), "all") for k, v in by_metric.items()]
    return recs


def build_knockout_layout(X, labels, pred: dict, genes, work,
                          control: str = KO_CONTROL) -> tuple[Path, Path, list[str]]:
    """Write ``work/real.h5ad`` and ``work/pred.h5ad`` for one method's knock-out predictions.

    ``X`` (N, G) log1p expression of the real cells, ``labels`` (N,) their perturbation (``control``
    for the control cells), ``pred`` ``{knock-out: (n_k, G) predicted cells}``, ``genes`` (G,) names.
    ``real.h5ad``: the control cells, then the real cells of each knock-out in ``pred``;
    ``pred.h5ad``: the same control cells, then each knock-out's predicted cells clipped at 0 (cell-eval
    refuses negatives; the clip is for the judge only). Both: float32 ``X``, ``obs["perturbation"]``,
    ``var_names`` = ``genes``, one context (no cell-type column). Returns (real path, pred path, the
    knock-outs written, in ``pred``'s order)."""
    import pandas as pd
    X, labels, genes = np.asarray(X), np.asarray(labels).astype(str), [str(g) for g in genes]
    if X.shape != (labels.size, len(genes)):
        raise ValueError(f"X has shape {X.shape}, expected {(labels.size, len(genes))}")
    kos = [str(k) for k in pred]
    bad = [k for k in kos if k == control or not np.any(labels == k)]
    if bad:
        raise ValueError(f"predicted knock-outs without real cells: {bad}")
    is_ctrl = labels == control
    if not is_ctrl.any():
        raise ValueError(f"no cell is labelled {control!r}")
    ctrl_names = [f"ctrl{i}" for i in range(int(is_ctrl.sum()))]
    rows = [np.flatnonzero(is_ctrl)] + [np.flatnonzero(labels == k) for k in kos]
    real_rows = np.concatenate(rows)
    real_obs = pd.DataFrame({KO_PERT_COL: labels[real_rows]},
                            index=ctrl_names + [f"real{i}" for i in range(real_rows.size - len(ctrl_names))])
    pred_X, pred_obs = [X[is_ctrl]], [pd.DataFrame({KO_PERT_COL: control}, index=ctrl_names)]
    for k, p in pred.items():
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(genes) or not p.shape[0]:
            raise ValueError(f"{k}: prediction has shape {p.shape}, expected (cells > 0, {len(genes)})")
        pred_X.append(np.clip(p, 0.0, None))  # cell-eval: no negatives
        pred_obs.append(pd.DataFrame({KO_PERT_COL: str(k)}, index=[f"pred{i}-{C.safe(k)}" for i in range(len(p))]))
    return (*_write_pair(work, genes, X[real_rows], real_obs, pred_X, pred_obs), kos)


def knockout_celleval_records(pred_dir, X, labels, genes, methods, kos=None, profile: str = "full",
                              keep_dir=None, control: str = KO_CONTROL, dataset: str = KO_DATASET) -> list[dict]:
    """cell-eval's :data:`KO_HEADLINE` metrics for every method's knock-out predictions in ``pred_dir``
    (``pred_<method>_<knock-out>.h5ad``, as ``_common.write_pred`` writes them), against the real
    cells ``X`` (N, G) log1p with ``labels`` (N,) and ``genes`` (G,): one cell-eval run per method over
    the knock-outs of ``kos`` (default: every label but ``control``) it has a file for. Returns tidy
    records ``{dataset, method, seed: 0, group: <knock-out>, metric: 'celleval_<name>', value}`` (no
    averages: the caller averages over its groups). ``keep_dir``: keep each method's files and
    cell-eval's output in ``keep_dir/<method>``."""
    labels = np.asarray(labels).astype(str)
    kos = sorted(set(labels) - {control}) if kos is None else [str(k) for k in kos]
    recs: list[dict] = []
    for m in methods:
        found = [k for k in kos if C.pred_path(pred_dir, m, k).exists()]
        if not found:
            continue
        with tempfile.TemporaryDirectory(prefix=f"celleval-{m}-") as tmp:
            work = Path(keep_dir) / m if keep_dir else Path(tmp)
            pred = {k: _read_pred(C.pred_path(pred_dir, m, k), genes) for k in found}
            real_path, pred_path, found = build_knockout_layout(X, labels, pred, genes, work, control=control)
            run_celleval(real_path, pred_path, work / "out", profile=profile, pert_col=KO_PERT_COL, control=control,
                         celltype_col=None)
            recs += parse_results(work / "out", found, m, KO_HEADLINE, by="perturbation", dataset=dataset)
    return recs


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="cell-eval on every method's Kang predictions")
    ap.add_argument("pred_dir", nargs="?", default=str(C.DEFAULT_OUT))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--profile", default="full")
    ap.add_argument("--keep", default=None, help="keep the assembled files and cell-eval's output here")
    ap.add_argument("--json", default=None, help="write the records to this JSON file")
    args = ap.parse_args(argv)
    recs = celleval_records(args.pred_dir, [m.strip() for m in args.methods.split(",") if m.strip()],
                            profile=args.profile, keep_dir=args.keep)
    import pandas as pd
    df = pd.DataFrame(recs)
    if df.empty:
        print("(no predictions found)")
    else:
        print(df.pivot_table(index=["method", "group"], columns="metric", values="value").round(3).to_string())
    if args.json:
        Path(args.json).write_text(json.dumps(recs, indent=1))
    return recs


if __name__ == "__main__":
    main()
