"""A fitted PCA as plain arrays: the shared coordinate system of every distance metric.

The evaluation protocol (``docs/evaluation.md``) measures distances in the 30-PC space of *all real
cells*; generated cells are projected with that same fit. This module holds that fit as a small
dataclass (``mean``, ``components``) so that benchmarks can fit it once and pass it around.

Like scanpy's ``sc.pp.pca``: genes are centred, not scaled; the SVD is exact (LAPACK) up to
2·10⁷ matrix entries and a seeded randomized SVD (7 power iterations) beyond; signs are fixed so
that the largest loading of every component is positive (deterministic output). Sparse input is
densified for centring, so memory is ``8·B·G`` bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

_EXACT_SVD_MAX_ENTRIES = 20_000_000  # exact SVD up to e.g. 10k cells × 2k genes; seeded randomized beyond


@dataclass
class PCAProjection:
    """A fitted, centred (unscaled) PCA.

    Attributes
    ----------
    mean
        ``(G,)`` per-gene mean of the fitting data.
    components
        ``(K, G)`` orthonormal principal axes, rows sorted by explained variance.
    explained_variance
        ``(K,)`` variance of the fitting data along each axis (``ddof=1``).
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    @property
    def n_comps(self) -> int:
        """``K``, the number of components."""
        return self.components.shape[0]

    def transform(self, X) -> np.ndarray:
        """Project cells into PC space.

        Parameters
        ----------
        X
            ``(B, G)`` dense or scipy-sparse expression, genes in the order of the fit.

        Returns
        -------
        ``(B, K)`` float64 PC coordinates.
        """
        X = _check_genes(X, self.mean.shape[0])
        Z = X @ self.components.T  # (B, K); sparse @ dense stays cheap
        return np.asarray(Z, dtype=np.float64) - self.mean @ self.components.T

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Decode PC coordinates ``(B, K)`` back to gene space ``(B, G)``."""
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim != 2 or Z.shape[1] != self.n_comps:
            raise ValueError(f"expected PC coordinates of shape (B, {self.n_comps}), got {Z.shape}")
        return Z @ self.components + self.mean  # (B, G)


def fit_pca(X, n: int = 30, seed: int = 0) -> PCAProjection:
    """Fit a centred PCA with ``n`` components on the rows of ``X``.

    Parameters
    ----------
    X
        ``(B, G)`` dense or scipy-sparse expression (log1p-normalised for the metrics).
    n
        Number of components ``K``; reduced to ``min(B - 1, G)`` when the data are smaller.
    seed
        Seed of the randomized SVD used for large matrices (the exact path ignores it).

    Returns
    -------
    :class:`PCAProjection` with ``components`` ``(K, G)``.
    """
    if sparse.issparse(X):
        X = X.toarray()  # centring densifies anyway; metric inputs are moderate in size
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"fit_pca needs a (B, G) matrix with at least 2 cells, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("fit_pca: the expression matrix contains NaN or inf values")
    k = min(int(n), X.shape[0] - 1, X.shape[1])  # centring removes one dimension of the cells
    if k < 1:
        raise ValueError(f"fit_pca: cannot fit {n} components on data of shape {X.shape}")
    mean = X.mean(axis=0)
    Xc = X - mean
    if Xc.size <= _EXACT_SVD_MAX_ENTRIES:
        _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
        s, Vt = s[:k], Vt[:k]
    else:
        from sklearn.utils.extmath import randomized_svd

        _, s, Vt = randomized_svd(Xc, k, n_iter=7, random_state=seed)
    # sign convention: largest |loading| positive, so refits give identical axes
    flip = np.sign(Vt[np.arange(k), np.abs(Vt).argmax(axis=1)])
    Vt = Vt * flip[:, None]
    return PCAProjection(mean=mean, components=Vt, explained_variance=s**2 / (X.shape[0] - 1))


def _check_genes(X, n_genes: int):
    if not sparse.issparse(X):
        X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_genes:
        raise ValueError(f"expected a (B, G={n_genes}) matrix in the genes of the PCA fit, got {X.shape}")
    return X
