"""Co-expression in-edges: the fallback for genes no prior regulates (``GeneGraph.from_prior(isolated="knn")``)."""
from __future__ import annotations

import numpy as np


def knn_edges(expression, targets: np.ndarray, k: int, G: int, chunk: int = 512):
    """In-edges ``j → i`` for each gene ``i`` in ``targets`` from its ``k`` most |Pearson|-correlated genes.

    Works on sparse counts without densifying: cov(X_j, X_i) = E[X_j X_i] − E[X_j] E[X_i].
    """
    from scipy import sparse

    X = sparse.csc_matrix(expression, dtype=np.float64) if sparse.issparse(expression) \
        else np.asarray(expression, dtype=np.float64)  # (B, G)
    if X.ndim != 2 or X.shape[1] != G:
        raise ValueError(f"expression must be cells × genes with {G} gene columns (same order as var_names), "
                         f"got shape {X.shape}")
    B = X.shape[0]
    mean = np.asarray(X.mean(axis=0)).ravel()  # (G,)
    sq = X.multiply(X) if sparse.issparse(X) else X * X
    sd = np.sqrt(np.maximum(np.asarray(sq.mean(axis=0)).ravel() - mean**2, 0.0))  # (G,)
    edge_j, edge_i, S, W = [], [], [], []
    for start in range(0, len(targets), chunk):
        t = targets[start:start + chunk]
        cross = X.T @ X[:, t]  # (G, T)
        cross = cross.toarray() if sparse.issparse(cross) else np.asarray(cross)
        cov = cross / B - np.outer(mean, mean[t])
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = cov / np.outer(sd, sd[t])
        corr[~np.isfinite(corr)] = 0.0
        corr[t, np.arange(len(t))] = 0.0  # no self-neighbour
        kk = min(k, G - 1)
        if kk <= 0:
            break
        top = np.argpartition(-np.abs(corr), kk - 1, axis=0)[:kk]  # (k, T)
        for col, i in enumerate(t):
            for jj in top[:, col]:
                c = corr[jj, col]
                if c != 0.0:
                    edge_j.append(jj)
                    edge_i.append(i)
                    S.append(np.sign(c))
                    W.append(abs(c))
    return (np.asarray(edge_j, dtype=np.int64), np.asarray(edge_i, dtype=np.int64), np.asarray(S, dtype=float),
            np.asarray(W, dtype=float))
