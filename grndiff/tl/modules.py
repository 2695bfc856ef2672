"""What the model's modules contain: top genes per module and their gene-set enrichment.

Learned modules are a soft gene → module assignment ``S`` (G, P) (a softmax over modules per gene,
see :class:`~grndiff.nn.ModulePooling`). A module is read as the genes with the largest
assignment weight in its column; those gene lists are tested for over-representation of known
gene sets (Hallmark by default) with a one-sided hypergeometric test.

Why not ``decoupler.mt.ora``: decoupler 2.2's ORA takes a matrix of observations × features and
selects each row's top features itself, which fits a module × gene weight matrix, but on a
planted test (50 of 50 selected genes inside a 55-gene set, background 1,267 genes; Fisher's exact
p = 2e-84) it returned p ≈ 0.88, so the test here is written with :mod:`scipy.stats` directly.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def _assignment(model) -> tuple[np.ndarray, list[str], int]:
    """Assignment ``S`` (G, P), token names and the number of prior columns."""
    pooling = getattr(model.module.net, "pooling", None)
    if pooling is None:
        raise ValueError("this model has no module tokens: build it with modules=... or n_learned_modules > 0")
    import torch

    with torch.no_grad():
        S = pooling.assignment().detach().cpu().numpy()  # (G, P)
    return S, list(model.token_names), int(pooling.n_prior)


def _select(names: list[str], n_prior: int, modules) -> list[int]:
    if modules is None:
        modules = "learned" if len(names) > n_prior else "all"
    if isinstance(modules, str) and modules in ("learned", "prior", "all"):
        idx = {"learned": range(n_prior, len(names)), "prior": range(n_prior), "all": range(len(names))}[modules]
        idx = list(idx)
        if not idx:
            raise ValueError(f"the model has no {modules} modules (prior: {n_prior}, learned: "
                             f"{len(names) - n_prior}); pass modules='all' or build it with n_learned_modules > 0")
        return idx
    wanted = [modules] if isinstance(modules, str) else list(modules)
    missing = [m for m in wanted if m not in names]
    if missing:
        more = "..." if len(names) > 10 else ""
        raise KeyError(f"unknown module(s) {missing}; the model's tokens are {names[:10]}{more}")
    return [names.index(m) for m in wanted]


def module_genes(model, n_top: int = 20, *, modules=None) -> pd.DataFrame:
    """Top genes of each module by assignment weight.

    Parameters
    ----------
    model
        A :class:`~grndiff.GRNDiff` with module tokens.
    n_top
        Genes listed per module.
    modules
        ``"learned"`` (default when the model has learned modules), ``"prior"``, ``"all"``, or
        module name(s).

    Returns
    -------
    Long DataFrame with columns ``module, rank, gene, weight`` (rank 1 = largest weight; ``weight``
    is the gene's assignment to the module, in [0, 1]); ``n_top`` rows per module, fewer for prior
    modules with fewer member genes.
    """
    if n_top < 1:
        raise ValueError(f"n_top must be ≥ 1, got {n_top}")
    S, names, n_prior = _assignment(model)
    genes = np.asarray(model.var_names)
    rows = []
    for p in _select(names, n_prior, modules):
        col = S[:, p]  # (G,)
        order = np.argsort(-col, kind="stable")[:n_top]
        if p < n_prior:  # prior modules are 0/1: list members only
            order = order[col[order] > 0]
        for r, g in enumerate(order, start=1):
            rows.append({"module": names[p], "rank": r, "gene": str(genes[g]), "weight": float(col[g])})
    return pd.DataFrame(rows, columns=["module", "rank", "gene", "weight"])


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values."""
    p = np.asarray(p, dtype=float)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty(n)
    out[order] = adj
    return out


def module_enrichment(model, gene_sets="hallmark", n_top: int = 50, fdr: float = 0.05, *, modules=None,
                      min_size: int = 5, organism: str = "human") -> pd.DataFrame:
    """Over-representation of gene sets among each module's top genes.

    For module ``p`` the ``n_top`` genes with the largest assignment weight form the query; each
    gene set (restricted to the model's genes, the background) is tested with a one-sided
    hypergeometric test ``P(X ≥ overlap)``; p-values are Benjamini–Hochberg adjusted over all
    module × set tests.

    Parameters
    ----------
    model
        A :class:`~grndiff.GRNDiff` with module tokens.
    gene_sets
        A shipped name (``"hallmark"``, ``"reactome"``, ``"go_bp"``), a GMT/CSV path, or a long
        ``source, target`` DataFrame (see :func:`grndiff.priors.load`). Gene names must match
        ``model.var_names``.
    n_top
        Genes per module in the query.
    fdr
        Threshold for the ``significant`` column.
    modules
        ``"learned"`` (default when the model has learned modules), ``"prior"``, ``"all"``, or names.
    min_size
        Gene sets with fewer genes in the background are skipped.
    organism
        For shipped gene sets.

    Returns
    -------
    pandas.DataFrame
        Columns ``module, gene_set, overlap, set_size, n_top, odds_ratio, pval, fdr, significant,
        genes`` (overlapping genes, comma-separated), sorted by module then p-value.
    """
    from .. import priors

    if not 0 < fdr <= 1:
        raise ValueError(f"fdr must be in (0, 1], got {fdr}")
    net = priors.load(gene_sets, organism=organism) if not isinstance(gene_sets, pd.DataFrame) else gene_sets
    if not {"source", "target"} <= set(net.columns):
        raise ValueError(f"gene_sets needs columns 'source' and 'target', got {list(net.columns)}")
    S, names, n_prior = _assignment(model)
    genes = np.asarray(model.var_names, dtype=object)
    G = len(genes)
    universe = set(genes.tolist())
    sets = {s: set(t) & universe for s, t in net.groupby("source", sort=True)["target"]}
    sets = {s: g for s, g in sets.items() if len(g) >= min_size}
    if not sets:
        raise ValueError(f"no gene set keeps ≥ {min_size} of the model's {G} genes; check that gene names "
                         f"match model.var_names (e.g. {list(genes[:3])}) and the organism")
    k = min(n_top, G)
    rows = []
    for p in _select(names, n_prior, modules):
        top = set(genes[np.argsort(-S[:, p], kind="stable")[:k]].tolist())
        for s, members in sets.items():
            hits = top & members
            a, K = len(hits), len(members)
            b, c = k - a, K - a
            d = G - a - b - c
            rows.append({"module": names[p], "gene_set": s, "overlap": a, "set_size": K, "n_top": k,
                         "odds_ratio": float((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5))),
                         "pval": float(stats.hypergeom.sf(a - 1, G, K, k)),
                         "genes": ",".join(sorted(hits))})
    out = pd.DataFrame(rows)
    out["fdr"] = _bh(out["pval"].to_numpy())
    out["significant"] = out["fdr"] < fdr
    cols = ["module", "gene_set", "overlap", "set_size", "n_top", "odds_ratio", "pval", "fdr", "significant", "genes"]
    order = {m: i for i, m in enumerate(names)}
    out = out.assign(_o=out["module"].map(order)).sort_values(["_o", "pval"], kind="stable")
    return out[cols].reset_index(drop=True)
