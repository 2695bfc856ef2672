"""Two-sample distances between cell populations, on plain ``(B, D)`` arrays.

All functions take two samples ``x`` ``(n, D)`` and ``y`` ``(m, D)`` (the protocol of
``docs/evaluation.md`` passes 30-PC coordinates) and return one float:

- :func:`energy_distance` — Székely & Rizzo's energy distance, ``2E|X−Y| − E|X−X'| − E|Y−Y'|``.
- :func:`mmd_rbf` — squared maximum mean discrepancy with RBF kernels at several bandwidths
  (Gretton et al. 2012, JMLR), unbiased estimator.
- :func:`wasserstein2` — exact optimal transport (POT ``ot.emd2``) on squared Euclidean costs.
- :func:`classifier_auc` — cross-validated ROC AUC of a logistic regression telling ``x`` from
  ``y`` (a classifier two-sample test, Lopez-Paz & Oquab 2017); 0.5 = indistinguishable.

Pairwise sums are computed in row blocks so memory stays ``O(block · m)``.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

_BLOCK = 2048  # rows per cdist block: 2048 × 10k float64 ≈ 160 MB at most


def _as_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected two (n, D) and (m, D) arrays with the same D, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"each sample needs at least 2 cells, got {len(x)} and {len(y)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("samples contain NaN or inf values")
    return x, y


def _pair_sums(a: np.ndarray, b: np.ndarray, fns) -> np.ndarray:
    """``[Σ_ij f(‖a_i − b_j‖²) for f in fns]``, block by block."""
    out = np.zeros(len(fns))
    for s in range(0, len(a), _BLOCK):
        d2 = cdist(a[s:s + _BLOCK], b, "sqeuclidean")  # (block, m)
        for k, f in enumerate(fns):
            out[k] += f(d2).sum()
    return out


def _within_mean(a: np.ndarray, fns, diag_values, unbiased: bool) -> np.ndarray:
    """Mean of ``f`` over pairs of one sample: U-statistic (i ≠ j) or V-statistic (all i, j)."""
    n = len(a)
    total = _pair_sums(a, a, fns)
    if unbiased:
        return (total - n * np.asarray(diag_values)) / (n * (n - 1))
    return total / n**2


def energy_distance(x, y, unbiased: bool = True) -> float:
    """Energy distance ``E = 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖``.

    Parameters
    ----------
    x, y
        ``(n, D)`` and ``(m, D)`` samples.
    unbiased
        Estimate the within-sample terms by U-statistics (mean over pairs ``i ≠ j``). The
        estimate is then unbiased and ≈ 0 for two samples of one distribution, and can be
        slightly negative. ``False`` gives the V-statistic (≥ 0, biased upwards for small samples).

    Returns
    -------
    float, in the units of ``x`` (not squared).
    """
    x, y = _as_pair(x, y)
    sqrt = [np.sqrt]
    exy = _pair_sums(x, y, sqrt)[0] / (len(x) * len(y))
    exx = _within_mean(x, sqrt, [0.0], unbiased)[0]
    eyy = _within_mean(y, sqrt, [0.0], unbiased)[0]
    return float(2 * exy - exx - eyy)


def median_distance(x, y, max_points: int = 1000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of the pooled sample (subsampled to ``max_points``)."""
    z = np.vstack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)])
    if len(z) > max_points:
        z = z[np.random.default_rng(seed).choice(len(z), max_points, replace=False)]
    d = cdist(z, z)[np.triu_indices(len(z), k=1)]
    return float(np.median(d))


def mmd_rbf(x, y, bandwidths=None, seed: int = 0) -> float:
    """Unbiased squared MMD with RBF kernels, averaged over bandwidths.

    ``k_σ(a, b) = exp(−‖a−b‖² / (2σ²))``; ``MMD² = E k(X,X') + E k(Y,Y') − 2 E k(X,Y)`` with
    U-statistics for the within terms (Gretton et al. 2012, eq. 3), so it is ≈ 0, possibly
    slightly negative, for two samples of one distribution.

    Parameters
    ----------
    x, y
        ``(n, D)`` and ``(m, D)`` samples.
    bandwidths
        Kernel widths σ. Default: ``(0.5, 1, 2, 4) ×`` the median pairwise distance of the
        pooled sample, which covers local and global structure without tuning.
    seed
        Seed of the subsample used for the median heuristic.

    Returns
    -------
    float, mean of MMD² over the bandwidths.
    """
    x, y = _as_pair(x, y)
    if bandwidths is None:
        med = median_distance(x, y, seed=seed)
        bandwidths = med * np.array([0.5, 1.0, 2.0, 4.0]) if med > 0 else np.array([1.0])
    bandwidths = np.atleast_1d(np.asarray(bandwidths, dtype=np.float64))
    if (bandwidths <= 0).any():
        raise ValueError(f"bandwidths must be positive, got {bandwidths}")
    fns = [lambda d2, s=s: np.exp(-d2 / (2 * s * s)) for s in bandwidths]
    ones = np.ones(len(fns))  # k(a, a) = 1 on the diagonal
    kxx = _within_mean(x, fns, ones, unbiased=True)
    kyy = _within_mean(y, fns, ones, unbiased=True)
    kxy = _pair_sums(x, y, fns) / (len(x) * len(y))
    return float(np.mean(kxx + kyy - 2 * kxy))


def wasserstein2(x, y, max_points: int = 2000, seed: int = 0) -> float:
    """Wasserstein-2 distance between the empirical measures of ``x`` and ``y``.

    Exact optimal transport (POT ``ot.emd2``) with uniform weights and squared Euclidean costs,
    then a square root. Exact OT is ``O(n³)``: each side is subsampled (seeded, without
    replacement) to at most ``max_points`` cells.

    Parameters
    ----------
    x, y
        ``(n, D)`` and ``(m, D)`` samples.
    max_points
        Per-side subsample size cap.
    seed
        Seed of the subsample.

    Returns
    -------
    float, ``W2`` in the units of ``x``.
    """
    import ot

    x, y = _as_pair(x, y)
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    if len(y) > max_points:
        y = y[rng.choice(len(y), max_points, replace=False)]
    cost = cdist(x, y, "sqeuclidean")  # (n, m)
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    w2sq = ot.emd2(a, b, cost, numItermax=10_000_000)
    return float(np.sqrt(max(float(w2sq), 0.0)))


def classifier_auc(x, y, seed: int = 0, n_splits: int = 5) -> float:
    """Cross-validated ROC AUC of a logistic regression separating ``x`` from ``y``.

    The larger sample is subsampled (seeded) to the size of the smaller one so chance is
    exactly 0.5; features are standardised inside each fold; the AUC is the mean over
    stratified folds. 0.5 = indistinguishable, 1.0 = perfectly separable. With no signal,
    cross-validated AUCs scatter around, and slightly below, 0.5. Values far *below* 0.5 mean
    that ``y`` contains copies of cells of ``x`` (a memorising generator): a held-out copy is
    then classified like its twin of the other class in the training folds.

    Parameters
    ----------
    x, y
        ``(n, D)`` and ``(m, D)`` samples (at least 2 cells each).
    seed
        Seed of the subsample and of the fold assignment.
    n_splits
        Number of stratified folds (reduced to the smaller sample size if needed).

    Returns
    -------
    float in [0, 1].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _as_pair(x, y)
    rng = np.random.default_rng(seed)
    n = min(len(x), len(y))
    x = x[rng.choice(len(x), n, replace=False)] if len(x) > n else x
    y = y[rng.choice(len(y), n, replace=False)] if len(y) > n else y
    X = np.vstack([x, y])  # (2n, D)
    labels = np.r_[np.zeros(n), np.ones(n)]
    folds = StratifiedKFold(n_splits=min(n_splits, n), shuffle=True, random_state=seed)
    aucs = []
    for train, test in folds.split(X, labels):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(X[train], labels[train])
        aucs.append(roc_auc_score(labels[test], clf.predict_proba(X[test])[:, 1]))
    return float(np.mean(aucs))
