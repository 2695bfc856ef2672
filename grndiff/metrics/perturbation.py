"""Perturbation-prediction metrics: is the predicted *change* from control the true one?

Every function takes ``pred``, ``true`` and ``ctrl`` as either mean profiles ``(G,)`` or cell
matrices ``(B, G)`` (reduced to their means) in log1p-normalised expression. With
``Δ = mean − mean(ctrl)``:

- :func:`pearson_delta` — ``corr(Δpred, Δtrue)`` on the ``top_n`` genes of largest ``|Δtrue|``
  (the "Pearson delta" of GEARS / Ahlmann-Eltze et al. 2025); :func:`pearson_delta_all` on all genes.
- :func:`direction_accuracy` — fraction of those genes whose change has the right sign.
- :func:`split_half_ceiling` — what a perfect model can reach given sampling noise: one random
  half of the true cells predicts the other half.
- :func:`evaluate_perturbation` — all of them, plus the energy distance in PC space.
- :func:`top_changes` — a table of the genes that change most: control mean, predicted and true Δ.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from .distances import energy_distance
from .gene_level import _pearson
from .pca import PCAProjection, fit_pca

__all__ = ["pearson_delta", "pearson_delta_all", "direction_accuracy", "split_half_ceiling",
           "evaluate_perturbation", "top_changes", "fit_pca", "PCAProjection"]


def _cells(X, name: str) -> np.ndarray:
    X = X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
    if X.ndim not in (1, 2):
        raise ValueError(f"{name} must be a mean profile (G,) or cells (B, G), got shape {X.shape}")
    return X.astype(np.float64, copy=False)


def _mean(X, name: str) -> np.ndarray:
    X = _cells(X, name)
    return X if X.ndim == 1 else X.mean(axis=0)  # (G,)


def _deltas(pred, true, ctrl) -> tuple[np.ndarray, np.ndarray]:
    p, t, c = _mean(pred, "pred"), _mean(true, "true"), _mean(ctrl, "ctrl")
    if not p.shape == t.shape == c.shape:
        raise ValueError(f"pred, true and ctrl must have the same genes, got {p.shape[0]}, {t.shape[0]}, {c.shape[0]}")
    return p - c, t - c


def _de_index(d_true: np.ndarray, top_n: int | None, de_genes) -> np.ndarray:
    """Indices of the genes to score: ``de_genes`` if given, else the ``top_n`` largest ``|Δtrue|``."""
    if de_genes is not None:
        idx = np.asarray(de_genes)
        if idx.dtype == bool:
            if idx.shape != d_true.shape:
                raise ValueError(f"a boolean de_genes mask needs {d_true.shape[0]} entries, got {idx.shape[0]}")
            idx = np.flatnonzero(idx)
        return idx.astype(np.int64)
    if top_n is None or top_n >= d_true.size:
        return np.arange(d_true.size)
    return np.argsort(-np.abs(d_true), kind="stable")[:top_n]


def pearson_delta(pred, true, ctrl, top_n: int | None = 20, de_genes=None) -> float:
    """Pearson correlation of predicted and true changes from control on the DE genes.

    Parameters
    ----------
    pred, true, ctrl
        Mean profiles ``(G,)`` or cells ``(B, G)`` (means are used).
    top_n
        Number of DE genes, those of largest ``|true − ctrl|``; ``None`` = all genes.
    de_genes
        Explicit gene indices ``(k,)`` or a boolean mask ``(G,)``; overrides ``top_n``.

    Returns
    -------
    float in [−1, 1]; NaN if either change is constant over the scored genes.
    """
    d_pred, d_true = _deltas(pred, true, ctrl)
    idx = _de_index(d_true, top_n, de_genes)
    return _pearson(d_pred[idx], d_true[idx])


def pearson_delta_all(pred, true, ctrl) -> float:
    """:func:`pearson_delta` over all genes."""
    return pearson_delta(pred, true, ctrl, top_n=None)


def direction_accuracy(pred, true, ctrl, top_n: int | None = 20, de_genes=None) -> float:
    """Fraction of DE genes whose predicted change has the sign of the true change.

    Parameters are those of :func:`pearson_delta`. Returns a float in [0, 1].
    """
    d_pred, d_true = _deltas(pred, true, ctrl)
    idx = _de_index(d_true, top_n, de_genes)
    return float(np.mean(np.sign(d_pred[idx]) == np.sign(d_true[idx])))


def _energy_in_pcs(pred, true, ctrl, pca: PCAProjection | None, seed: int) -> float:
    pred, true = _cells(pred, "pred"), _cells(true, "true")
    if pred.ndim == 1 or true.ndim == 1 or len(pred) < 2 or len(true) < 2:
        return float("nan")  # a mean profile is not a distribution
    if pca is None:
        ctrl = _cells(ctrl, "ctrl")
        ref = true if ctrl.ndim == 1 else np.vstack([true, ctrl])
        pca = fit_pca(ref, n=30, seed=seed)
    return energy_distance(pca.transform(pred), pca.transform(true))


def split_half_ceiling(true_cells, ctrl, seed: int = 0, top_n: int = 20,
                       pca: PCAProjection | None = None) -> dict:
    """Score one random half of the true perturbed cells as a prediction of the other half.

    The result is the resolution of the metrics for this perturbation: a model that sampled
    exactly from the true distribution would score about this (its Pearson Δ is limited by
    sampling noise, its energy distance is not 0 because the halves differ by chance).

    Parameters
    ----------
    true_cells
        ``(B, G)`` true perturbed cells (at least 4).
    ctrl
        Control profile ``(G,)`` or cells ``(B_c, G)``.
    seed
        Seed of the split (and of the PCA, if fitted here).
    top_n
        DE genes for Pearson Δ, chosen on the held-out half.
    pca
        A fitted :class:`PCAProjection` for the energy distance; default: PCA(30) of true + ctrl.

    Returns
    -------
    dict with ``pearson_delta_top{top_n}`` and ``energy_distance``.
    """
    X = _cells(true_cells, "true_cells")
    if X.ndim != 2 or len(X) < 4:
        raise ValueError(f"split_half_ceiling needs a (B, G) matrix with at least 4 cells, got shape {X.shape}")
    perm = np.random.default_rng(seed).permutation(len(X))
    a, b = X[perm[: len(X) // 2]], X[perm[len(X) // 2:]]
    if pca is None:
        c = _cells(ctrl, "ctrl")
        pca = fit_pca(X if c.ndim == 1 else np.vstack([X, c]), n=30, seed=seed)
    return {f"pearson_delta_top{top_n}": pearson_delta(a, b, ctrl, top_n=top_n),
            "energy_distance": energy_distance(pca.transform(a), pca.transform(b))}


def evaluate_perturbation(pred, true, ctrl, *, pca: PCAProjection | None = None, top_n: int = 20,
                          seed: int = 0) -> dict:
    """All perturbation metrics for one perturbation (or one held-out group).

    Parameters
    ----------
    pred
        Predicted perturbed cells ``(B_p, G)`` or a predicted mean profile ``(G,)``.
    true
        True perturbed cells ``(B_t, G)`` (or a mean profile; then no energy distance).
    ctrl
        Control cells ``(B_c, G)`` or the control mean ``(G,)``.
    pca
        A fitted :class:`PCAProjection` (see :func:`fit_pca`) for the energy distance, e.g. the
        PCA of all real cells of the data set; default: PCA(30) fitted here on true + ctrl.
    top_n
        Number of DE genes (largest ``|true − ctrl|``).
    seed
        Seed of the PCA fitted here when ``pca`` is None.

    Returns
    -------
    dict with keys ``pearson_delta_top{top_n}``, ``pearson_delta_all``,
    ``direction_acc_top{top_n}`` and ``energy_distance`` (NaN when ``pred`` or ``true`` is a
    mean profile).
    """
    return {f"pearson_delta_top{top_n}": pearson_delta(pred, true, ctrl, top_n=top_n),
            "pearson_delta_all": pearson_delta_all(pred, true, ctrl),
            f"direction_acc_top{top_n}": direction_accuracy(pred, true, ctrl, top_n=top_n),
            "energy_distance": _energy_in_pcs(pred, true, ctrl, pca, seed)}


def top_changes(pred, true, ctrl, n_top: int = 10, genes=None):
    """The ``n_top`` genes of largest true change ``|Δtrue|``: control mean, predicted and true Δ.

    ``pred``, ``true``, ``ctrl`` are mean profiles ``(G,)``, cell matrices ``(B, G)`` or AnnData
    (their ``.X``, log1p-normalised; ``genes`` then defaults to ``var_names``).

    Returns
    -------
    pandas.DataFrame indexed by gene, columns ``ctrl``, ``predicted Δ``, ``true Δ``
    (``n_top`` rows, largest ``|true Δ|`` first).
    """
    import pandas as pd

    if genes is None:
        genes = next((list(a.var_names) for a in (pred, true, ctrl) if hasattr(a, "var_names")), None)
    pred, true, ctrl = (a.X if hasattr(a, "var_names") else a for a in (pred, true, ctrl))
    c = _mean(ctrl, "ctrl")
    d_pred, d_true = _deltas(pred, true, ctrl)
    if not (d_pred.shape == d_true.shape == c.shape):
        raise ValueError(f"pred, true and ctrl must cover the same genes, got {d_pred.shape[0]}, {d_true.shape[0]} "
                         f"and {c.shape[0]}")
    genes = [str(g) for g in genes] if genes is not None else [str(i) for i in range(c.shape[0])]
    idx = np.argsort(-np.abs(d_true), kind="stable")[: int(n_top)]
    return pd.DataFrame({"ctrl": c[idx], "predicted Δ": d_pred[idx], "true Δ": d_true[idx]},
                        index=pd.Index([genes[i] for i in idx], name="gene"))
