"""Real and generated cells in one embedding (PCA of the real cells, then UMAP)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._figure import finish


def _log_expression(adata, layer: str | None) -> np.ndarray:
    """Dense log1p-CP10k expression (cells × G): raw counts are normalised, log values kept."""
    X = adata.layers[layer] if layer is not None else adata.X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    if X.size and X.min() >= 0 and X.max() > 30 and np.allclose(X, np.round(X)):  # counts
        lib = X.sum(1, keepdims=True)
        X = np.log1p(X / np.where(lib > 0, lib, 1.0) * 1e4)
    return X


def umap_real_vs_generated(real, generated, *, color: str | None = None, layer: str | None = None,
                           n_pcs: int = 30, basis: str = "umap", n_neighbors: int = 15, seed: int = 0,
                           point_size: float = 8.0, ax=None, show: bool | None = None, save=None, figsize=None):
    """Real and generated cells in one embedding.

    A PCA is fitted on the real cells only (generated cells are projected into it, as in the
    benchmarks), then UMAP runs on the joint PC scores. Raw counts are CP10k + log1p normalised;
    log-normalised values (e.g. :meth:`~grndiff.GRNDiff.sample` output) are used as they are.

    Parameters
    ----------
    real, generated
        AnnData with the same ``var_names`` (generated ones are aligned to ``real``).
    color
        An ``obs`` column present in both: adds a second panel coloured by it.
    layer
        Layer of ``real`` to use (default ``X``); ``generated`` always uses ``X``.
    n_pcs
        PCs of the real cells.
    basis
        ``"umap"`` or ``"pca"`` (first two PCs; no UMAP).
    ax
        One Axes (or two when ``color`` is given).
    show, save, figsize
        scanpy-style figure options.

    Returns
    -------
    With ``show=False``: the Axes (one panel) or the Figure (two panels); else ``None``.
    """
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    if basis not in ("umap", "pca"):
        raise ValueError(f"basis must be 'umap' or 'pca', got {basis!r}")
    missing = [g for g in real.var_names if g not in set(generated.var_names)]
    if missing:
        raise ValueError(f"{len(missing)} genes of `real` are missing from `generated` (e.g. {missing[:3]}); "
                         "generate with a model trained on the same genes")
    if color is not None:
        for name, a in (("real", real), ("generated", generated)):
            if color not in a.obs:
                raise KeyError(f"{name}.obs has no column {color!r}; available: {list(a.obs.columns)}")
    Xr = _log_expression(real, layer)  # (Br, G)
    Xg = _log_expression(generated[:, list(real.var_names)], None)  # (Bg, G)
    n_pcs = int(min(n_pcs, Xr.shape[0] - 1, Xr.shape[1]))
    pca = PCA(n_components=n_pcs, random_state=seed).fit(Xr)
    Z = np.vstack([pca.transform(Xr), pca.transform(Xg)])  # (Br + Bg, n_pcs)
    if basis == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():  # a fixed random_state makes UMAP single-threaded: intended
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            E = umap.UMAP(n_neighbors=n_neighbors, random_state=seed).fit_transform(Z)  # (B, 2)
        xlab = "UMAP"
    else:
        E, xlab = Z[:, :2], "PC"
    origin = np.array(["real"] * Xr.shape[0] + ["generated"] * Xg.shape[0])

    n_panels = 1 if color is None else 2
    if ax is None:
        fig, axes = plt.subplots(1, n_panels, figsize=figsize or (4.5 * n_panels, 4), squeeze=False)
        axes, own = list(axes[0]), True
    else:
        axes = list(np.atleast_1d(ax))
        own = False
        if len(axes) != n_panels:
            raise ValueError(f"pass {n_panels} Axes (one per panel) when color={color!r}, got {len(axes)}")
    panels = [("origin", origin)]
    if color is not None:
        panels.append((color, np.concatenate([real.obs[color].astype(str).to_numpy(),
                                              generated.obs[color].astype(str).to_numpy()])))
    cmap = plt.get_cmap("tab10")
    for a, (title, lab) in zip(axes, panels):
        for i, c in enumerate(dict.fromkeys(lab)):
            m = lab == c
            kw = {"marker": "o"} if title != "origin" or c == "real" else {"marker": "x"}
            a.scatter(E[m, 0], E[m, 1], s=point_size, color=cmap(i % 10), label=c, alpha=0.7, linewidths=0.6, **kw)
        a.set_title(title)
        a.set_xlabel(f"{xlab}1")
        a.set_ylabel(f"{xlab}2")
        a.set_xticks([])
        a.set_yticks([])
        a.legend(fontsize=7, markerscale=1.5, frameon=False, loc="best")
    out = axes[0] if n_panels == 1 else axes[0].figure
    return finish(out, own=own, show=show, save=save)
