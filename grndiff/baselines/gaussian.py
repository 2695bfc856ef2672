"""Per-group Gaussian in PCA space: the simplest generator that matches first and second moments.

Fit a centred PCA (30 PCs) on training log expression; per group, the mean and covariance of the
cells' PC coordinates; sample from those Gaussians and decode with the PCA, clipping at 0 (log
expression is non-negative). A generative model that does not beat this has not learnt more than
a per-group covariance in 30 dimensions.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from grndiff.metrics.pca import fit_pca


class GaussianPCA:
    """Per-group multivariate normal in the space of the top PCs of the training data.

    Parameters
    ----------
    n_comps
        Number of PCs ``K`` (30, as in the evaluation protocol).
    seed
        Default seed of the PCA and of :meth:`sample`.
    clip
        Clip decoded values at 0 so samples are valid log expression. Clipping raises the
        means of sparse genes (a Gaussian puts about half of a near-zero gene's mass below 0),
        which costs some energy distance and classifier AUC (``benchmarks/_protocol_check.py``
        measures it); ``False`` gives the pure second-moment reference.

    Attributes
    ----------
    pca_
        :class:`grndiff.metrics.PCAProjection` fitted on all training cells.
    means_, covs_
        dict ``group → (K,)`` / ``(K, K)``.
    """

    def __init__(self, n_comps: int = 30, seed: int = 0, clip: bool = True):
        self.n_comps, self.seed, self.clip = n_comps, seed, clip

    def fit(self, X, groups=None) -> GaussianPCA:
        """Fit the PCA and one Gaussian per group.

        Parameters
        ----------
        X
            ``(B, G)`` training log expression (dense or sparse).
        groups
            ``(B,)`` group labels; None = one group ``"all"``. Every group needs ≥ 2 cells.
        """
        self.pca_ = fit_pca(X, n=self.n_comps, seed=self.seed)
        Z = self.pca_.transform(X)  # (B, K)
        labels = np.full(len(Z), "all", dtype=object) if groups is None else np.asarray(groups).astype(str)
        if len(labels) != len(Z):
            raise ValueError(f"groups has {len(labels)} labels for {len(Z)} cells")
        counts = pd.Series(labels).value_counts()
        small = counts[counts < 2]
        if len(small):
            raise ValueError(f"groups with fewer than 2 cells have no covariance: {dict(small)}")
        self.means_, self.covs_ = {}, {}
        for g in pd.unique(labels):
            Zg = Z[labels == g]
            self.means_[g] = Zg.mean(axis=0)
            self.covs_[g] = np.cov(Zg, rowvar=False).reshape(Z.shape[1], Z.shape[1])  # (K, K)
        return self

    def fit_anndata(self, adata, groupby: str | None = None, layer: str | None = None) -> GaussianPCA:
        """:meth:`fit` on ``adata.X`` (or ``layer``), groups from ``adata.obs[groupby]``."""
        if groupby is not None and groupby not in adata.obs:
            raise KeyError(f"adata.obs has no column {groupby!r}; available: {list(adata.obs.columns)}")
        X = adata.X if layer is None else adata.layers[layer]
        self.fit(X, None if groupby is None else adata.obs[groupby].to_numpy())
        self.genes_, self.groupby_ = list(adata.var_names), groupby
        return self

    def sample(self, n_per_group, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw cells from the fitted Gaussians.

        Parameters
        ----------
        n_per_group
            An int (that many cells for every group) or dict ``group → n``.
        seed
            Seed of the draw; default the constructor's ``seed``.

        Returns
        -------
        ``X`` ``(B, G)`` log expression (non-negative when ``clip``) and ``labels`` ``(B,)``,
        groups in the order of ``n_per_group``.
        """
        if not hasattr(self, "pca_"):
            raise RuntimeError("GaussianPCA is not fitted; call fit() first")
        if not isinstance(n_per_group, Mapping):
            n_per_group = {g: int(n_per_group) for g in self.means_}
        unknown = [g for g in n_per_group if str(g) not in self.means_]
        if unknown:
            raise KeyError(f"no fitted group {unknown}; fitted groups: {list(self.means_)[:20]}")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        Z, labels = [], []
        for g, n in n_per_group.items():
            g = str(g)
            # eigh handles the singular covariances of groups with fewer cells than PCs
            Z.append(rng.multivariate_normal(self.means_[g], self.covs_[g], size=int(n), method="eigh"))
            labels += [g] * int(n)
        X = self.pca_.inverse_transform(np.vstack(Z))  # (B, G)
        if self.clip:
            X = np.clip(X, 0.0, None)  # log expression ≥ 0
        return X, np.asarray(labels, dtype=object)

    def sample_anndata(self, n_per_group, seed: int | None = None):
        """:meth:`sample` as an AnnData with ``var_names`` of the fit and ``obs[groupby]``
        (needs :meth:`fit_anndata`)."""
        import anndata as ad

        if not hasattr(self, "genes_"):
            raise RuntimeError("sample_anndata needs a model fitted with fit_anndata()")
        X, labels = self.sample(n_per_group, seed)
        obs = pd.DataFrame({self.groupby_ or "group": pd.Categorical(labels)},
                           index=[f"gaussian_pca_{i}" for i in range(len(labels))])
        out = ad.AnnData(X.astype(np.float32), obs=obs, var=pd.DataFrame(index=self.genes_))
        out.uns["grndiff_baseline"] = {"method": "GaussianPCA", "n_comps": int(self.pca_.n_comps), "clip": self.clip,
                                       "seed": int(self.seed if seed is None else seed)}
        return out
