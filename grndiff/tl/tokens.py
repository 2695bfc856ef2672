"""Pathway-token activities and embeddings of cells, written into ``obsm``/``uns`` like scanpy."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def pathway_tokens(model, adata, *, t: float = 1.0, use_conditions: bool = True, batch_size: int = 512,
                   key_added: str = "grndiff_tokens", copy: bool = False):
    """Module-token activities of every cell.

    Parameters
    ----------
    model
        A trained :class:`~grndiff.GRNDiff` with module tokens.
    adata
        Cells with the model's genes (counts or log layer as registered).
    t
        Flow time at which cells enter the network (1 = observed expression).
    key_added
        The full key, as in :func:`embed` and scanpy: writes ``adata.obsm[key_added]`` (cells × P,
        a DataFrame with module names as columns) and ``adata.uns[key_added]["params"]``.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``.
    """
    acts = model.get_token_activities(adata, t=t, use_conditions=use_conditions, batch_size=batch_size)
    adata = adata.copy() if copy else adata
    acts.index = adata.obs_names
    adata.obsm[key_added] = acts
    adata.uns[key_added] = {"params": {"t": float(t), "use_conditions": bool(use_conditions),
                                       "token_names": list(acts.columns), "obsm_key": key_added}}
    return adata if copy else None


def embed(model, adata, *, t: float = 1.0, key_added: str = "X_grndiff", copy: bool = False):
    """Pathway-level embedding (mean token state, cells × D) → ``adata.obsm[key_added]``; use it
    with ``sc.pp.neighbors(adata, use_rep=key_added)``. Returns ``None`` or the copy."""
    lat = model.get_latent_representation(adata, t=t)
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = lat
    return adata if copy else None


def tokens_key(adata, key: str) -> str:
    """The ``obsm`` key of token activities: ``key`` itself (the ``key_added`` of
    :func:`pathway_tokens`), or ``f"{key}_tokens"`` as earlier versions wrote it."""
    if key in adata.obsm:
        return key
    if f"{key}_tokens" in adata.obsm:
        return f"{key}_tokens"
    raise KeyError(f"adata.obsm[{key!r}] not found; run grndiff.tl.pathway_tokens(model, adata, key_added={key!r}) "
                   f"first (obsm holds {list(adata.obsm.keys())})")


def rank_tokens(adata, groupby: str, *, reference: str = "rest", groups=None, key: str = "grndiff_tokens",
                key_added: str = "rank_tokens", copy: bool = False) -> pd.DataFrame:
    """Rank tokens by their difference between groups (like ``sc.tl.rank_genes_groups``).

    Uses ``adata.obsm[key]`` from :func:`pathway_tokens`. For each group (vs ``reference``, a
    group label or ``"rest"``): Welch t statistic, mean difference and Cohen's d. The table is
    also stored, like scanpy's, in ``adata.uns[key_added]`` (``{"params": ..., "table": DataFrame}``;
    on a copy with ``copy=True``, then returned as ``(table, copy)``).

    Returns
    -------
    DataFrame with columns ``group, token, score, mean_diff, effect_size, pval, rank`` (rank 1 =
    largest ``|effect_size|`` within the group).
    """
    obsm_key = tokens_key(adata, key)
    if groupby not in adata.obs:
        raise KeyError(f"adata.obs has no column {groupby!r}; available: {list(adata.obs.columns)}")
    A = adata.obsm[obsm_key]
    names = list(A.columns) if isinstance(A, pd.DataFrame) else [f"token_{i}" for i in range(A.shape[1])]
    A = np.asarray(A, dtype=float)
    labels = adata.obs[groupby].astype(str).to_numpy()
    cats = [g for g in pd.unique(labels) if g != reference] if groups is None else list(groups)
    if reference != "rest" and reference not in set(labels):
        raise ValueError(f"reference {reference!r} is not a value of adata.obs[{groupby!r}]: {sorted(set(labels))}")
    rows = []
    for g in cats:
        a = A[labels == g]
        b = A[labels != g] if reference == "rest" else A[labels == reference]
        if len(a) < 2 or len(b) < 2:
            continue
        tstat, p = stats.ttest_ind(a, b, equal_var=False)
        diff = a.mean(0) - b.mean(0)
        pooled = np.sqrt(0.5 * (a.var(0, ddof=1) + b.var(0, ddof=1))) + 1e-12
        d = diff / pooled
        order = np.argsort(-np.abs(d))
        rank = np.empty_like(order)
        rank[order] = np.arange(1, len(order) + 1)
        for j, name in enumerate(names):
            rows.append({"group": g, "token": name, "score": float(tstat[j]), "mean_diff": float(diff[j]),
                         "effect_size": float(d[j]), "pval": float(p[j]), "rank": int(rank[j])})
    cols = ["group", "token", "score", "mean_diff", "effect_size", "pval", "rank"]
    table = pd.DataFrame(rows, columns=cols).sort_values(["group", "rank"]).reset_index(drop=True)
    target = adata.copy() if copy else adata
    target.uns[key_added] = {"params": {"groupby": groupby, "reference": reference, "key": obsm_key},
                             "table": table.copy()}
    return (table, target) if copy else table
