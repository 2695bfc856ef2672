"""Gene-space fidelity metrics: per-gene moments, dropout, markers, regulatory correlations.

Inputs are ``(B, G)`` matrices of log1p-normalised expression (dense, or scipy sparse which is
densified) with the same genes in the same order; ``real`` and ``gen`` may have different
numbers of cells.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

ZERO_THRESHOLD = 1e-3
"""Values ≤ this count as zeros. In log1p(CP10k) a single count in a cell of 100,000 UMIs is
log1p(0.1) ≈ 0.095, so no detected real count lies below 1e-3; generated values are continuous
and a generator that has learnt dropout puts mass *near* 0 rather than exactly on it."""


def _dense(X, name: str) -> np.ndarray:
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    X = X.astype(np.float64, copy=False)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a (B, G) matrix, got shape {X.shape}")
    return X


def _pair(real, gen) -> tuple[np.ndarray, np.ndarray]:
    real, gen = _dense(real, "real"), _dense(gen, "gen")
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"real and gen must have the same genes, got {real.shape[1]} and {gen.shape[1]} columns")
    return real, gen


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors; NaN if either is constant or fewer than 2 values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else float("nan")


def mean_pearson(real, gen) -> float:
    """Pearson correlation between the per-gene means of ``real`` ``(n, G)`` and ``gen`` ``(m, G)``."""
    real, gen = _pair(real, gen)
    return _pearson(real.mean(axis=0), gen.mean(axis=0))


def var_pearson(real, gen) -> float:
    """Pearson correlation between the per-gene variances (``ddof=1``) of ``real`` and ``gen``."""
    real, gen = _pair(real, gen)
    return _pearson(real.var(axis=0, ddof=1), gen.var(axis=0, ddof=1))


def zero_frac_error(real, gen, threshold: float = ZERO_THRESHOLD) -> float:
    """Mean over genes of ``|zero fraction(real) − zero fraction(gen)|``.

    Parameters
    ----------
    real, gen
        ``(n, G)`` and ``(m, G)`` log1p-normalised expression.
    threshold
        A value ``≤ threshold`` counts as zero (see :data:`ZERO_THRESHOLD` for why 1e-3).

    Returns
    -------
    float in [0, 1]; 0 = identical dropout pattern per gene.
    """
    real, gen = _pair(real, gen)
    return float(np.abs((real <= threshold).mean(axis=0) - (gen <= threshold).mean(axis=0)).mean())


def rank_markers(X, labels, n_top: int = 50, method: str = "t-test") -> dict:
    """Top up-regulated genes of each group against the rest of the cells.

    Parameters
    ----------
    X
        ``(B, G)`` log expression.
    labels
        ``(B,)`` group labels.
    n_top
        Number of markers per group.
    method
        ``"t-test"`` (Welch t statistic, scanpy's default ranking) or ``"mean_diff"``
        (difference of means, a log fold change).

    Returns
    -------
    dict ``group → (n_top,)`` gene indices, best first; groups with < 2 cells in the group or in
    the rest are left out.
    """
    X = _dense(X, "X")
    labels = np.asarray(labels)
    if len(labels) != len(X):
        raise ValueError(f"labels has {len(labels)} entries for {len(X)} cells")
    if method not in ("t-test", "mean_diff"):
        raise ValueError(f"method must be 't-test' or 'mean_diff', got {method!r}")
    total, total_sq, N = X.sum(axis=0), (X**2).sum(axis=0), len(X)
    out = {}
    for g in pd.unique(labels):
        mask = labels == g
        n1, n2 = int(mask.sum()), N - int(mask.sum())
        if n1 < 2 or n2 < 2:
            continue
        s1, q1 = X[mask].sum(axis=0), (X[mask] ** 2).sum(axis=0)
        m1, m2 = s1 / n1, (total - s1) / n2
        if method == "mean_diff":
            score = m1 - m2
        else:
            v1 = np.maximum(q1 - n1 * m1**2, 0) / (n1 - 1)
            v2 = np.maximum(total_sq - q1 - n2 * m2**2, 0) / (n2 - 1)
            se = np.sqrt(v1 / n1 + v2 / n2)
            score = np.divide(m1 - m2, se, out=np.zeros_like(se), where=se > 0)  # constant gene → 0
        out[g] = np.argsort(-score, kind="stable")[:n_top]  # ties broken by gene order
    return out


def marker_overlap(real, gen, labels_real, labels_gen, n_top: int = 50, method: str = "t-test") -> dict:
    """Overlap of the top marker genes of each group, found on real and on generated cells.

    Parameters
    ----------
    real, gen
        ``(n, G)`` and ``(m, G)`` log expression.
    labels_real, labels_gen
        ``(n,)`` and ``(m,)`` group labels; at least two groups are needed (markers are group
        vs rest).
    n_top
        Markers per group (capped at ``G``).
    method
        Marker ranking, see :func:`rank_markers`.

    Returns
    -------
    dict ``group → |top_real ∩ top_gen| / n_top`` for the groups present in both.
    """
    real, gen = _pair(real, gen)
    n_top = min(n_top, real.shape[1])
    top_r = rank_markers(real, labels_real, n_top, method)
    top_g = rank_markers(gen, labels_gen, n_top, method)
    return {g: len(np.intersect1d(top_r[g], top_g[g])) / n_top for g in top_r if g in top_g}


def tf_target_pairs(genes, prior_df: pd.DataFrame) -> np.ndarray:
    """Index pairs ``(E, 2)`` (source, target) of the prior's edges whose genes are both in ``genes``.

    Self-loops and duplicated edges are dropped; ``prior_df`` is a long table with columns
    ``source, target`` (decoupler format).
    """
    missing = {"source", "target"} - set(prior_df.columns)
    if missing:
        raise ValueError(f"prior_df needs columns 'source' and 'target' (decoupler format); missing {sorted(missing)}")
    index = pd.Index(genes)
    if not index.is_unique:
        raise ValueError("genes contains duplicated names; make var_names unique (adata.var_names_make_unique())")
    src = index.get_indexer(prior_df["source"].astype(str))
    tgt = index.get_indexer(prior_df["target"].astype(str))
    keep = (src >= 0) & (tgt >= 0) & (src != tgt)
    pairs = np.stack([src[keep], tgt[keep]], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def _pair_correlations(X: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pearson correlation across cells of each gene pair: ``(E,)``."""
    used = np.unique(pairs)
    Z = X[:, used] - X[:, used].mean(axis=0)
    Z /= np.linalg.norm(Z, axis=0)  # callers remove constant genes first
    col = np.searchsorted(used, pairs)  # (E, 2) positions in Z
    return np.einsum("be,be->e", Z[:, col[:, 0]], Z[:, col[:, 1]])


def tf_target_corr(real, gen, genes, prior_df: pd.DataFrame) -> float:
    """Agreement of gene–gene correlations over the prior's TF→target pairs.

    For each TF→target edge of ``prior_df`` with both genes in ``genes`` (and neither constant
    in ``real`` nor in ``gen``), the Pearson correlation of the two genes across cells is
    computed on real and on generated cells; the result is the Pearson correlation between
    these two vectors of edge correlations. 1 = the generator reproduces the co-expression of
    regulators and targets.

    Parameters
    ----------
    real, gen
        ``(n, G)`` and ``(m, G)`` log expression.
    genes
        ``G`` gene names, the column order of ``real`` and ``gen``.
    prior_df
        Long table ``source, target[, weight]``.

    Returns
    -------
    float; NaN (with a warning) if fewer than 3 usable edges remain.
    """
    import warnings

    real, gen = _pair(real, gen)
    if len(genes) != real.shape[1]:
        raise ValueError(f"genes has {len(genes)} names for {real.shape[1]} columns")
    pairs = tf_target_pairs(genes, prior_df)
    varying = (real.std(axis=0) > 0) & (gen.std(axis=0) > 0)
    pairs = pairs[varying[pairs].all(axis=1)]
    if len(pairs) < 3:
        warnings.warn(f"tf_target_corr: only {len(pairs)} prior edges between non-constant genes in the data; "
                      "returning NaN (check that the prior's gene symbols match var_names)", stacklevel=2)
        return float("nan")
    return _pearson(_pair_correlations(real, pairs), _pair_correlations(gen, pairs))
