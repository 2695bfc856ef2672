"""``evaluate(real, generated)``: the generation-fidelity protocol of ``docs/evaluation.md`` on AnnData.

Protocol
--------
1. Both AnnData hold log1p-normalised expression (``.X`` or a layer); genes are matched by
   ``var_names`` (reordered when the sets agree, an error naming the difference otherwise).
2. A centred PCA (``n_pcs`` = 30, no scaling, like scanpy) is fitted on *all real cells*:
   ``pca_reference`` when given (benchmarks pass train + held-out), else ``real``. Generated
   cells are projected with it. Fitting on train cells only inflates the real-vs-real reference
   (0.25 instead of ~0.02 on kang2018) and lets over-smoothed generators look better than data.
3. Per group of ``groupby`` present on both sides: energy distance, RBF-MMD, W2 and classifier
   AUC in PC space; mean/variance Pearson, zero-fraction error, marker overlap and TF–target
   correlation agreement in gene space.
4. The ``"all"`` row of each metric is the unweighted mean over groups.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse

from . import gene_level
from .distances import classifier_auc, energy_distance, mmd_rbf, wasserstein2
from .pca import fit_pca

PC_METRICS = ("energy_distance", "mmd_rbf", "wasserstein2", "classifier_auc")
GENE_METRICS = ("mean_pearson", "var_pearson", "zero_frac_error", "marker_overlap", "tf_target_corr")
ALL_METRICS = PC_METRICS + GENE_METRICS
_GROUP_SEP = "|"  # joins the labels of several groupby columns: "B cells|stim"


def _matrix(adata, layer: str | None, name: str):
    if layer is None:
        X = adata.X
    elif layer in adata.layers:
        X = adata.layers[layer]
    else:
        raise KeyError(f"{name}.layers has no {layer!r}; available: {list(adata.layers)} (or layer=None for .X)")
    X = X.tocsr() if sparse.issparse(X) else np.asarray(X)
    sample = X[: min(200, X.shape[0])]
    values = sample.data if sparse.issparse(sample) else np.ravel(sample)
    if values.size and values.max() > 30 and np.allclose(values, np.round(values)):
        # raw counts: distances on them are meaningless (energy ~100 instead of ~4), so normalise
        # as `grndiff evaluate` does, and say so
        from ..data.conditions import warn
        from ..data.normalize import log1p_cp10k
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        warn(f"evaluate(): {name} ({where}) looks like raw counts (integers up to {values.max():.0f}); it was "
             "log1p-normalised (counts per 10,000, as `grndiff evaluate` does) before comparing. Pass "
             "log1p-normalised expression (gd.data.log1p_normalized_copy(adata, layer='counts')) to silence this.")
        X = log1p_cp10k(X, 1e4)
        X = X.tocsr() if sparse.issparse(X) else np.asarray(X)
    return X


def _align(adata, genes: pd.Index, name: str):
    """``adata`` with its genes in the order of ``genes`` (the real data's var_names)."""
    names = pd.Index(adata.var_names)
    if names.equals(genes):
        return adata
    if not names.is_unique:
        raise ValueError(f"{name}.var_names has duplicates; call {name}.var_names_make_unique()")
    missing, extra = genes.difference(names), names.difference(genes)
    if len(missing) or len(extra):
        raise ValueError(f"{name} and real have different genes: {len(missing)} of real's var_names missing "
                         f"from {name} (e.g. {list(missing[:10])}), {len(extra)} extra in {name} "
                         f"(e.g. {list(extra[:10])}). Subset both to the shared genes first, e.g. "
                         f"{name} = {name}[:, real.var_names.intersection({name}.var_names)]")
    return adata[:, genes]


def _labels(adata, groupby, name: str) -> np.ndarray:
    if groupby is None:
        return np.full(adata.n_obs, "all", dtype=object)
    keys = [groupby] if isinstance(groupby, str) else list(groupby)
    absent = [k for k in keys if k not in adata.obs]
    if absent:
        raise KeyError(f"{name}.obs has no column(s) {absent}; available: {list(adata.obs.columns)}")
    cols = [adata.obs[k].astype(str).to_numpy() for k in keys]
    out = cols[0].astype(object)
    for c in cols[1:]:
        out = out + _GROUP_SEP + c
    return out


def _shared_groups(lab_r: np.ndarray, lab_g: np.ndarray) -> list:
    """Groups with ≥ 2 cells on both sides, in the order they appear in real."""
    count_r, count_g = pd.Series(lab_r).value_counts(), pd.Series(lab_g).value_counts()
    groups = [g for g in pd.unique(lab_r) if count_r.get(g, 0) >= 2 and count_g.get(g, 0) >= 2]
    dropped = sorted((set(count_r.index) | set(count_g.index)) - set(groups))
    if not groups:
        raise ValueError(f"no group has ≥ 2 cells in both real and generated; real groups: "
                         f"{list(count_r.index)[:10]}, generated groups: {list(count_g.index)[:10]}")
    if dropped:
        warnings.warn(f"evaluate: groups left out (absent or < 2 cells on one side): {dropped[:10]}", stacklevel=3)
    return groups


def evaluate(real, generated, *, groupby=None, n_pcs: int = 30, pca_reference=None, layer=None,
             metrics=None, prior=None, seed: int = 0) -> pd.DataFrame:
    """Compare generated cells with real cells, per group and on average.

    Parameters
    ----------
    real
        AnnData ``(B_r, G)`` of real (typically held-out) cells, log1p-normalised.
    generated
        AnnData ``(B_g, G)`` of generated cells, same genes (any order), same scale.
    groupby
        ``obs`` column, or list of columns (labels joined by ``"|"``), present in both; None =
        one group ``"all"``.
    n_pcs
        Number of principal components of the distance space.
    pca_reference
        AnnData of *all* real cells (train + held-out) to fit the PCA on; default ``real``.
    layer
        Layer holding the log expression (None = ``.X``), or a pair ``(real_layer,
        generated_layer)``; the first also applies to ``pca_reference``.
    metrics
        Subset of :data:`ALL_METRICS`; default all of them, except ``marker_overlap`` without
        at least 2 groups and ``tf_target_corr`` without a ``prior``.
    prior
        TF→target long table (``source, target[, weight]``) or a name for
        :func:`grndiff.priors.load`, for ``tf_target_corr``.
    seed
        Seed of the PCA, of W2 subsampling and of the classifier folds.

    Returns
    -------
    Tidy :class:`pandas.DataFrame` with columns ``group, metric, value``: one row per group and
    metric plus ``group == "all"`` (mean over groups; the only group when ``groupby`` is None).
    Wide view: ``report.pivot(index="group", columns="metric", values="value")``; records:
    :func:`to_records`. ``report.attrs`` holds the parameters and the cell counts per group.

    Notes
    -----
    Every metric has a resolution set by the number of cells per group; measure it with a
    real-vs-real split (``benchmarks/_protocol_check.py`` prints it for kang2018). Per-group
    gene–gene correlations are much noisier than the distances: with few cells per group
    ``tf_target_corr`` of two real halves is far below its pooled value (``groupby=None``).
    """
    layer_r, layer_g = layer if isinstance(layer, (tuple, list)) else (layer, layer)
    genes = pd.Index(real.var_names)
    generated = _align(generated, genes, "generated")
    reference = real if pca_reference is None else _align(pca_reference, genes, "pca_reference")
    lab_r, lab_g = _labels(real, groupby, "real"), _labels(generated, groupby, "generated")
    groups = _shared_groups(lab_r, lab_g)

    if metrics is None:
        metrics = [m for m in ALL_METRICS
                   if not (m == "marker_overlap" and len(groups) < 2) and not (m == "tf_target_corr" and prior is None)]
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {list(ALL_METRICS)}")
    if "tf_target_corr" in metrics and prior is None:
        raise ValueError("metric 'tf_target_corr' needs prior= (a source,target table or a prior name)")
    if "marker_overlap" in metrics and len(groups) < 2:
        raise ValueError("metric 'marker_overlap' needs groupby with at least 2 shared groups "
                         "(markers are group vs rest)")
    if isinstance(prior, str):
        from grndiff.priors import load

        prior = load(prior)

    X_r, X_g = _matrix(real, layer_r, "real"), _matrix(generated, layer_g, "generated")
    pca = fit_pca(_matrix(reference, layer_r, "pca_reference"), n=n_pcs, seed=seed)
    Z_r, Z_g = pca.transform(X_r), pca.transform(X_g)  # (B_r, K), (B_g, K)

    pc_fns = {"energy_distance": energy_distance, "mmd_rbf": lambda a, b: mmd_rbf(a, b, seed=seed),
              "wasserstein2": lambda a, b: wasserstein2(a, b, seed=seed),
              "classifier_auc": lambda a, b: classifier_auc(a, b, seed=seed)}
    gene_fns = {"mean_pearson": gene_level.mean_pearson, "var_pearson": gene_level.var_pearson,
                "zero_frac_error": gene_level.zero_frac_error,
                "tf_target_corr": lambda a, b: gene_level.tf_target_corr(a, b, genes, prior)}
    rows = []
    for g in groups:
        mr, mg = lab_r == g, lab_g == g
        rows += [(g, m, pc_fns[m](Z_r[mr], Z_g[mg])) for m in metrics if m in pc_fns]
        if any(m in gene_fns for m in metrics):
            xr, xg = _dense_rows(X_r, mr), _dense_rows(X_g, mg)
            rows += [(g, m, gene_fns[m](xr, xg)) for m in metrics if m in gene_fns]
    if "marker_overlap" in metrics:
        kr, kg = np.isin(lab_r, groups), np.isin(lab_g, groups)
        overlap = gene_level.marker_overlap(_dense_rows(X_r, kr), _dense_rows(X_g, kg), lab_r[kr], lab_g[kg])
        rows += [(g, "marker_overlap", overlap.get(g, np.nan)) for g in groups]

    report = pd.DataFrame(rows, columns=["group", "metric", "value"])
    if groupby is not None:  # without groupby the single group already is "all"
        means = report.groupby("metric", sort=False)["value"].mean().reset_index()  # NaN-skipping mean
        report = pd.concat([report, means.assign(group="all")[["group", "metric", "value"]]], ignore_index=True)
    report.attrs["params"] = {"groupby": groupby, "n_pcs": pca.n_comps, "seed": seed,
                              "pca_reference": "pca_reference" if pca_reference is not None else "real",
                              "pca_explained_variance": pca.explained_variance.tolist()}
    report.attrs["n_cells"] = {g: [int((lab_r == g).sum()), int((lab_g == g).sum())] for g in groups}
    return report


def _dense_rows(X, mask: np.ndarray) -> np.ndarray:
    rows = X[np.flatnonzero(mask)]
    return rows.toarray() if sparse.issparse(rows) else np.asarray(rows)


def to_records(report: pd.DataFrame, **fields) -> list[dict]:
    """Tidy records for ``benchmarks/results/<name>.json``.

    Parameters
    ----------
    report
        Output of :func:`evaluate` (columns ``group, metric, value``).
    **fields
        Constant fields added to every record, e.g. ``dataset="kang2018", method="gaussian_pca", seed=0``.

    Returns
    -------
    list of dicts ``{**fields, group, metric, value}`` with plain Python types (NaN → None).
    """
    out = []
    for g, m, v in report[["group", "metric", "value"]].itertuples(index=False):
        v = float(v)
        out.append({**fields, "group": str(g), "metric": str(m), "value": None if np.isnan(v) else v})
    return out
