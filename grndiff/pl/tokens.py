"""Token activities per group: heatmap or dot plot of ``adata.obsm[key]`` (default ``"grndiff_tokens"``)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._figure import finish, new_axes


def _token_table(adata, key: str) -> pd.DataFrame:
    from ..tl.tokens import tokens_key
    A = adata.obsm[tokens_key(adata, key)]
    if not isinstance(A, pd.DataFrame):
        A = pd.DataFrame(np.asarray(A), columns=[f"token_{i}" for i in range(np.asarray(A).shape[1])])
    return pd.DataFrame(A.to_numpy(dtype=float), index=adata.obs_names, columns=[str(c) for c in A.columns])


def _short(name: str) -> str:
    return name.removeprefix("HALLMARK_").replace("_", " ").lower() if name.startswith("HALLMARK_") else name


def tokens(adata, groupby: str, *, key: str = "grndiff_tokens", kind: str = "heatmap", n_top: int | None = 20,
           tokens: list[str] | None = None, standard_scale: bool = True, ax=None, show: bool | None = None,
           save=None, figsize=None):
    """Mean token activity per group.

    Parameters
    ----------
    adata
        With ``adata.obsm[key]`` from :func:`grndiff.tl.pathway_tokens`.
    groupby
        Column of ``adata.obs`` (rows of the plot).
    key
        The ``key_added`` used by :func:`~grndiff.tl.pathway_tokens`.
    kind
        ``"heatmap"`` (colour = group mean) or ``"dotplot"`` (colour = group mean, size = fraction
        of the group's cells above the token's overall median).
    n_top
        Show the ``n_top`` tokens whose group means vary most (``None``: all).
    tokens
        Explicit token names (overrides ``n_top``).
    standard_scale
        Scale each token's group means to [0, 1] (like scanpy's ``standard_scale="var"``).
    ax, show, save, figsize
        scanpy-style figure options.

    Returns
    -------
    The Axes when ``show=False`` (or when drawing into a given ``ax``), else ``None``.
    """
    if kind not in ("heatmap", "dotplot"):
        raise ValueError(f"kind must be 'heatmap' or 'dotplot', got {kind!r}")
    if groupby not in adata.obs:
        raise KeyError(f"adata.obs has no column {groupby!r}; available: {list(adata.obs.columns)}")
    A = _token_table(adata, key)
    labels = adata.obs[groupby].astype(str).to_numpy()
    if tokens is not None:
        missing = [t for t in tokens if t not in A.columns]
        if missing:
            raise KeyError(f"unknown tokens {missing}; available: {list(A.columns)[:10]}...")
        A = A[list(tokens)]
    means = A.groupby(labels, sort=False).mean()  # (groups, P)
    if tokens is None and n_top is not None and n_top < means.shape[1]:
        spread = (means.max() - means.min()) / (A.std() + 1e-12)
        means = means[spread.sort_values(ascending=False).index[:n_top]]
    cols = list(means.columns)
    vals = means.to_numpy()
    if standard_scale:
        lo, hi = vals.min(0, keepdims=True), vals.max(0, keepdims=True)
        vals = (vals - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    n_g, n_p = vals.shape
    ax, own = new_axes(ax, figsize or (0.35 * n_p + 2.5, 0.4 * n_g + 2.5))
    label = "scaled mean activity" if standard_scale else "mean activity"
    if kind == "heatmap":
        im = ax.imshow(vals, aspect="auto", cmap="viridis")
    else:
        med = A[cols].median()
        frac = (A[cols] > med).groupby(labels, sort=False).mean().loc[means.index].to_numpy()  # (groups, P)
        yy, xx = np.mgrid[0:n_g, 0:n_p]
        im = ax.scatter(xx.ravel(), yy.ravel(), c=vals.ravel(), s=20 + 220 * frac.ravel(), cmap="viridis",
                        edgecolors="0.3", linewidths=0.3)
        ax.set_xlim(-0.5, n_p - 0.5)
        ax.set_ylim(n_g - 0.5, -0.5)
        label += " (size: fraction > median)"
    ax.set_xticks(range(n_p), [_short(c) for c in cols], rotation=90, fontsize=8)
    ax.set_yticks(range(n_g), list(means.index))
    ax.set_ylabel(groupby)
    ax.figure.colorbar(im, ax=ax, label=label, shrink=0.8)
    return finish(ax, own=own, show=show, save=save)
