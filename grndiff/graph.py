"""``GeneGraph``: a prior network aligned to an AnnData's genes — the model's tokenizer.

One graph, shared by every cell: ``edge_index (2, E)`` (row 0 source/regulator ``j``, row 1
target ``i``; messages flow ``j → i``), per-edge sign, weight and type, and an optional module
membership ``(G, P)``. Genes the prior does not cover stay in the model (self-loop only, or kNN
co-expression edges).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from . import priors as _priors

log = logging.getLogger("grndiff")

EDGE_PRIOR, EDGE_REVERSE, EDGE_SELF, EDGE_KNN = 0, 1, 2, 3


class GeneGraph:
    """Gene graph aligned to ``genes`` (the AnnData's ``var_names`` order).

    Attributes
    ----------
    genes : list[str] (G)
    edge_index : LongTensor (2, E)
    edge_sign : FloatTensor (E,) in {-1, 0, +1}
    edge_weight : FloatTensor (E,) ≥ 0
    edge_type : LongTensor (E,) — 0 prior, 1 added reverse, 2 self-loop, 3 kNN fallback
    membership : FloatTensor (G, P) or None; ``module_names`` (P)
    coverage : dict — how much of the prior and of the genes the graph covers
    """

    def __init__(self, genes: Sequence[str], edge_index, edge_sign=None, edge_weight=None, edge_type=None,
                 membership=None, module_names: Sequence[str] | None = None, coverage: dict | None = None):
        self.genes = [str(g) for g in genes]
        self.edge_index = torch.as_tensor(edge_index, dtype=torch.long).reshape(2, -1)
        E = self.edge_index.shape[1]
        self.edge_sign = torch.zeros(E) if edge_sign is None else torch.as_tensor(edge_sign, dtype=torch.float32)
        self.edge_weight = torch.ones(E) if edge_weight is None else torch.as_tensor(edge_weight, dtype=torch.float32)
        self.edge_type = (torch.zeros(E, dtype=torch.long) if edge_type is None
                          else torch.as_tensor(edge_type, dtype=torch.long))
        self.membership = None if membership is None else torch.as_tensor(membership, dtype=torch.float32)
        self.module_names = list(module_names or [])
        self.coverage = dict(coverage or {})
        if E and (int(self.edge_index.min()) < 0 or int(self.edge_index.max()) >= len(self.genes)):
            raise ValueError("edge_index refers to genes outside [0, G)")
        if self.membership is not None and self.membership.shape[0] != len(self.genes):
            raise ValueError(f"membership has {self.membership.shape[0]} rows, expected G={len(self.genes)}")

    # ---------------------------------------------------------------- sizes
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def n_modules(self) -> int:
        return 0 if self.membership is None else int(self.membership.shape[1])

    def in_degree(self) -> torch.Tensor:
        """Number of in-edges per gene (G,)."""
        return torch.bincount(self.edge_index[1], minlength=self.n_genes)

    def __repr__(self) -> str:
        return f"GeneGraph(genes={self.n_genes}, edges={self.n_edges}, modules={self.n_modules})"

    def summary(self) -> str:
        c = self.coverage
        lines = [f"GeneGraph: {self.n_genes} genes, {self.n_edges} edges, {self.n_modules} modules"]
        for k, v in c.items():
            if not isinstance(v, (list, dict)):
                lines.append(f"  {k}: {v}")
        return "\n".join(lines)

    # ------------------------------------------------------------ building
    @classmethod
    def from_prior(cls, prior, var_names: Sequence[str], *, symbols: Sequence[str] | None = None,
                   organism: str = "human", add_reverse: bool = False, self_loops: bool = True, modules=None,
                   min_module_size: int = 5, max_module_size: int = 500, isolated: str = "self_loop",
                   expression=None, knn_k: int = 5, case_insensitive: bool = True, allow_empty: bool = False,
                   verbose: bool = False) -> "GeneGraph":
        """Align a prior to the genes.

        Parameters
        ----------
        prior
            Shipped name, path, or long DataFrame ``source, target, weight``.
        var_names
            The genes, in model order (G).
        symbols
            Per-gene symbols used for matching when ``var_names`` are e.g. Ensembl ids.
        add_reverse
            Also add ``i → j`` for every prior edge ``j → i`` lacking one (type 1).
        self_loops
            Add ``i → i`` (type 2) for every gene, so each gene keeps its own state in attention.
        modules
            Gene sets (shipped name, path, DataFrame) → ``membership`` (G, P), keeping sets with
            ``min_module_size ≤ |set ∩ genes| ≤ max_module_size``.
        isolated
            ``"self_loop"``: genes with no prior edge keep only their self-loop; ``"knn"``: they
            also get in-edges from their ``knn_k`` most correlated genes in ``expression``
            (cells × G), type 3.
        case_insensitive
            Match names up to case when an exact match fails (reported in ``coverage``).
        allow_empty
            Allow a prior with no edge among the genes (a graph of self-loops only).
        """
        genes = [str(g) for g in var_names]
        G = len(genes)
        if G == 0:
            raise ValueError("var_names is empty: the AnnData has no genes")
        if len(set(genes)) != G:
            dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique()[:5].tolist()
            raise ValueError(f"var_names has duplicates (e.g. {dup}); call adata.var_names_make_unique()")
        keys = genes if symbols is None else [str(s) for s in symbols]
        if len(keys) != G:
            raise ValueError(f"symbols has {len(keys)} entries, expected one per gene ({G})")
        lookup = _Lookup(keys, case_insensitive)
        df = _priors.load(prior, organism)
        n_total = len(df)
        src = df["source"].map(lookup.get)
        tgt = df["target"].map(lookup.get)
        keep = src.notna() & tgt.notna()
        if not keep.any() and not allow_empty:
            ex_prior = pd.unique(pd.concat([df["source"], df["target"]]))[:5].tolist()
            raise ValueError(
                f"the prior and the genes do not overlap: 0 of {n_total} edges connect two of the {G} genes. "
                f"Prior genes look like {ex_prior}; your genes look like {keys[:5]}. If var_names are Ensembl "
                "ids, pass symbols=adata.var['<symbol column>'] (setup_anndata(symbol_key=...)); check the "
                "organism (human symbols are upper-case, mouse capitalised).")
        e = pd.DataFrame({"j": src[keep].astype(int).to_numpy(), "i": tgt[keep].astype(int).to_numpy(),
                          "w": df.loc[keep, "weight"].to_numpy(dtype=float)})
        e = e.groupby(["j", "i"], sort=True, as_index=False)["w"].sum()  # merge duplicates after matching
        j, i, w = e["j"].to_numpy(), e["i"].to_numpy(), e["w"].to_numpy()
        types = np.full(len(j), EDGE_PRIOR)
        touched = np.zeros(G, dtype=bool)
        touched[j], touched[i] = True, True
        parts = [(j, i, np.sign(w), np.abs(w), types)]
        if add_reverse:
            have = set(zip(j.tolist(), i.tolist()))
            rev = [(b, a, s, m) for a, b, s, m in zip(j, i, np.sign(w), np.abs(w)) if a != b and (b, a) not in have]
            if rev:
                rj, ri, rs, rw = map(np.asarray, zip(*rev))
                parts.append((rj, ri, rs, rw, np.full(len(rj), EDGE_REVERSE)))
        if isolated == "knn":
            if expression is None:
                raise ValueError("isolated='knn' needs expression (cells × genes) to find co-expressed genes")
            parts.append(_knn_edges(expression, np.flatnonzero(~touched), knn_k))
        elif isolated != "self_loop":
            raise ValueError(f"isolated must be 'self_loop' or 'knn', got {isolated!r}")
        if self_loops:
            has_self = set(j[j == i].tolist())
            loops = np.array([g for g in range(G) if g not in has_self], dtype=int)
            parts.append((loops, loops, np.zeros(len(loops)), np.ones(len(loops)), np.full(len(loops), EDGE_SELF)))
        J, I, S, W, T = (np.concatenate([p[k] for p in parts]) for k in range(5))
        membership, names, dropped = None, [], 0
        if modules is not None:
            membership, names, dropped = _membership(modules, lookup, G, organism, min_module_size, max_module_size)
        n_kept = int(len(j))
        coverage = {
            "n_genes": G, "n_genes_in_prior": int(touched.sum()),
            "n_tfs": int(len(np.unique(j))) if len(j) else 0,
            "n_isolated": int((~touched).sum()), "n_edges_prior_total": int(n_total),
            "n_edges_kept": n_kept, "n_edges_dropped": int(n_total - keep.sum()),
            "n_duplicate_edges_merged": int(keep.sum() - n_kept), "n_case_only_matches": lookup.n_case_only,
            "n_self_edges_in_prior": int((j == i).sum()), "n_edges_total": int(len(J)),
            "n_modules": 0 if membership is None else int(membership.shape[1]), "modules_dropped": int(dropped),
        }
        graph = cls(genes, np.stack([J, I]), S, W, T, membership, names, coverage)
        (log.info if verbose else log.debug)(graph.summary())
        if verbose:
            print(graph.summary())
        return graph

    # ------------------------------------------------------- serialisation
    def to_state(self) -> dict:
        """Plain tensors and lists (loadable with ``torch.load(weights_only=True)``)."""
        return {"genes": list(self.genes), "edge_index": self.edge_index.clone(), "edge_sign": self.edge_sign.clone(),
                "edge_weight": self.edge_weight.clone(), "edge_type": self.edge_type.clone(),
                "membership": None if self.membership is None else self.membership.clone(),
                "module_names": list(self.module_names),
                "coverage": {k: v for k, v in self.coverage.items() if isinstance(v, (int, float, str))}}

    @classmethod
    def from_state(cls, d: dict) -> "GeneGraph":
        return cls(d["genes"], d["edge_index"], d["edge_sign"], d["edge_weight"], d["edge_type"],
                   d.get("membership"), d.get("module_names"), d.get("coverage"))

    def permute(self, perm) -> "GeneGraph":
        """The same graph with genes reordered: new gene ``k`` is old gene ``perm[k]``."""
        perm = torch.as_tensor(perm, dtype=torch.long)
        inv = torch.argsort(perm)  # old index → new index
        return GeneGraph([self.genes[p] for p in perm.tolist()], inv[self.edge_index], self.edge_sign,
                         self.edge_weight, self.edge_type, None if self.membership is None else self.membership[perm],
                         self.module_names, self.coverage)

    def to_dataframe(self) -> pd.DataFrame:
        """Edges as a long table ``source, target, weight, type``."""
        j, i = self.edge_index
        return pd.DataFrame({"source": [self.genes[k] for k in j.tolist()], "target": [self.genes[k] for k in i.tolist()],
                             "weight": (self.edge_sign * self.edge_weight).numpy(), "type": self.edge_type.numpy()})


class _Lookup:
    """Name → gene index, exact first, then case-insensitive (counted)."""

    def __init__(self, keys: list[str], case_insensitive: bool):
        self.exact: dict[str, int] = {}
        for k, name in enumerate(keys):
            self.exact.setdefault(name, k)
        self.upper: dict[str, int] = {}
        if case_insensitive:
            for k, name in enumerate(keys):
                self.upper.setdefault(name.upper(), k)
        self.case_only: set[str] = set()

    @property
    def n_case_only(self) -> int:
        return len(self.case_only)

    def get(self, name: str):
        k = self.exact.get(name)
        if k is None and self.upper:
            k = self.upper.get(str(name).upper())
            if k is not None:
                self.case_only.add(name)
        return k


def _membership(modules, lookup: _Lookup, G: int, organism: str, lo: int, hi: int):
    sets = _priors.load(modules, organism)
    idx = sets["target"].map(lookup.get)
    sets = sets.assign(g=idx).dropna(subset=["g"])
    cols, names = [], []
    n_all = _priors.load(modules, organism)["source"].nunique() if not isinstance(modules, pd.DataFrame) else modules["source"].nunique()
    for name, g in sets.groupby("source", sort=False)["g"]:
        members = np.unique(g.astype(int).to_numpy())
        if lo <= len(members) <= hi:
            col = np.zeros(G, dtype=np.float32)
            col[members] = 1.0
            cols.append(col)
            names.append(str(name))
    if not cols:
        raise ValueError(f"no gene set has between {lo} and {hi} of your genes; lower min_module_size or check "
                         "that the gene sets match your gene naming (symbols, organism)")
    return np.stack(cols, axis=1), names, int(n_all - len(names))


def _knn_edges(expression, targets: np.ndarray, k: int):
    """In-edges j → i for each gene i in ``targets`` from its k most |correlated| genes."""
    from scipy import sparse
    X = expression.toarray() if sparse.issparse(expression) else np.asarray(expression, dtype=float)
    Xc = X - X.mean(0)
    sd = np.sqrt((Xc**2).sum(0))
    sd[sd == 0] = np.inf
    J, I, S, W = [], [], [], []
    for i in targets:
        c = (Xc.T @ Xc[:, i]) / (sd * sd[i])
        c[i] = 0.0
        top = np.argsort(-np.abs(c))[:k]
        for jj in top:
            if np.isfinite(c[jj]) and c[jj] != 0:
                J.append(jj); I.append(i); S.append(np.sign(c[jj])); W.append(abs(c[jj]))
    n = len(J)
    return (np.asarray(J, dtype=int), np.asarray(I, dtype=int), np.asarray(S, dtype=float),
            np.asarray(W, dtype=float), np.full(n, EDGE_KNN))
