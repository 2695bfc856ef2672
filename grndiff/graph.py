"""``GeneGraph``: a prior network aligned to an AnnData's genes — the model's tokenizer.

One graph, shared by every cell: ``edge_index (2, E)`` (row 0 source/regulator ``j``, row 1
target ``i``; messages flow ``j → i``), per-edge sign, weight and type, and an optional module
membership ``(G, P)``. Genes the prior does not cover stay in the model (self-loop only, or kNN
co-expression in-edges), so the graph never silently drops measured genes.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from . import priors as _priors
from .priors.coexpression import knn_edges

log = logging.getLogger("grndiff")

EDGE_PRIOR, EDGE_REVERSE, EDGE_SELF, EDGE_KNN = 0, 1, 2, 3
EDGE_TYPE_NAMES = ("prior", "reverse", "self-loop", "kNN")


class GeneGraph:
    """Gene graph aligned to ``genes`` (the AnnData's ``var_names`` order).

    Parameters
    ----------
    genes
        Gene names (G), in model order.
    edge_index
        LongTensor (2, E): row 0 source/regulator ``j``, row 1 target ``i``; messages flow ``j → i``.
    edge_sign
        FloatTensor (E,) in {-1, 0, +1} (activation, unknown/none, repression); default 0.
    edge_weight
        FloatTensor (E,), magnitude ≥ 0; default 1.
    edge_type
        LongTensor (E,): 0 prior, 1 added reverse, 2 self-loop, 3 kNN fallback; default 0.
    membership
        FloatTensor (G, P) of 0/1 module (gene-set) membership, or None.
    module_names
        P names, one per ``membership`` column.
    coverage
        How much of the prior and of the genes the graph covers (see :meth:`from_prior`).
    """

    def __init__(self, genes: Sequence[str], edge_index, edge_sign=None, edge_weight=None, edge_type=None,
                 membership=None, module_names: Sequence[str] | None = None, coverage: dict | None = None):
        self.genes = [str(g) for g in genes]
        G = len(self.genes)
        if len(set(self.genes)) != G:
            dup = pd.Index(self.genes)[pd.Index(self.genes).duplicated()].unique()[:5].tolist()
            raise ValueError(f"gene names must be unique, found duplicates such as {dup}; "
                             "call adata.var_names_make_unique() first.")
        self.edge_index = torch.as_tensor(edge_index, dtype=torch.long).reshape(2, -1)  # (2, E)
        E = self.edge_index.shape[1]
        self.edge_sign = (torch.zeros(E) if edge_sign is None
                          else torch.as_tensor(edge_sign, dtype=torch.float32).reshape(-1))  # (E,)
        self.edge_weight = (torch.ones(E) if edge_weight is None
                            else torch.as_tensor(edge_weight, dtype=torch.float32).reshape(-1))  # (E,)
        self.edge_type = (torch.zeros(E, dtype=torch.long) if edge_type is None
                          else torch.as_tensor(edge_type, dtype=torch.long).reshape(-1))  # (E,)
        for name in ("edge_sign", "edge_weight", "edge_type"):
            if getattr(self, name).shape[0] != E:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} entries, "
                                 f"expected E={E} (edge_index columns)")
        if E and (int(self.edge_index.min()) < 0 or int(self.edge_index.max()) >= G):
            raise ValueError(f"edge_index refers to genes outside [0, {G}); it must index into genes")
        if not torch.isin(self.edge_sign, torch.tensor([-1.0, 0.0, 1.0])).all():
            raise ValueError("edge_sign must contain only -1, 0 or +1 (use edge_weight for magnitudes)")
        if not (torch.isfinite(self.edge_weight).all() and (self.edge_weight >= 0).all()):
            raise ValueError("edge_weight must be finite and ≥ 0 (the sign lives in edge_sign)")
        if E and (int(self.edge_type.min()) < 0 or int(self.edge_type.max()) > EDGE_KNN):
            raise ValueError("edge_type must be 0 (prior), 1 (reverse), 2 (self-loop) or 3 (kNN)")
        self.membership = None if membership is None else torch.as_tensor(membership, dtype=torch.float32)  # (G, P)
        if self.membership is not None and (self.membership.dim() != 2 or self.membership.shape[0] != G):
            raise ValueError(f"membership must be (G, P) with G={G} rows, got {tuple(self.membership.shape)}")
        P = 0 if self.membership is None else self.membership.shape[1]
        self.module_names = [str(m) for m in (module_names or [])] or [f"module_{p}" for p in range(P)]
        if len(self.module_names) != P:
            raise ValueError(f"module_names has {len(self.module_names)} names for P={P} membership columns")
        self.coverage = dict(coverage or {})

    # ---------------------------------------------------------------- sizes
    @property
    def n_genes(self) -> int:
        """G, the number of genes (nodes)."""
        return len(self.genes)

    @property
    def n_edges(self) -> int:
        """E, the number of edges of every type."""
        return int(self.edge_index.shape[1])

    @property
    def n_modules(self) -> int:
        """P, the number of modules (0 without ``membership``)."""
        return 0 if self.membership is None else int(self.membership.shape[1])

    def in_degree(self, edge_types: Sequence[int] | None = None) -> torch.Tensor:
        """Number of in-edges (messages received) per gene.

        Parameters
        ----------
        edge_types
            Count only these edge types (e.g. ``[0]`` for prior edges); default all.

        Returns
        -------
        torch.LongTensor
            (G,)
        """
        target = self.edge_index[1]
        if edge_types is not None:
            target = target[torch.isin(self.edge_type, torch.as_tensor(list(edge_types)))]
        return torch.bincount(target, minlength=self.n_genes)

    def __repr__(self) -> str:
        return f"GeneGraph(genes={self.n_genes}, edges={self.n_edges}, modules={self.n_modules})"

    def summary(self) -> str:
        """A human-readable account of the graph and of how well the prior covers the genes."""
        c = self.coverage
        counts = torch.bincount(self.edge_type, minlength=4).tolist()
        by_type = ", ".join(f"{n:,} {t}" for n, t in zip(counts, EDGE_TYPE_NAMES) if n)
        lines = [f"GeneGraph: {self.n_genes:,} genes, {self.n_edges:,} edges ({by_type or 'none'}), "
                 f"{self.n_modules:,} modules"]
        if "n_edges_prior_total" in c:
            lines.append(f"  prior: {c['n_edges_kept']:,} edges kept among the genes out of "
                         f"{c['n_edges_prior_total']:,} ({c['n_edges_dropped']:,} dropped: an end not among the "
                         f"genes); {c['n_tfs']:,} regulators with ≥1 kept edge")
            lines.append(f"  genes: {c['n_genes_in_prior']:,} named in the prior; {c['n_isolated']:,} without any "
                         "kept prior edge (they keep a self-loop" + (", plus kNN in-edges)" if counts[3] else ")"))
            if c.get("n_case_only_matches"):
                lines.append(f"  matching: {c['n_case_only_matches']:,} prior names matched a gene only up to case "
                             "(check organism= if this is most of them)")
        if c.get("n_modules") or c.get("modules_dropped"):
            lines.append(f"  modules: {c['n_modules']:,} kept, {c['modules_dropped']:,} dropped (size outside "
                         f"[{c.get('min_module_size')}, {c.get('max_module_size')}] genes present)")
        return "\n".join(lines)

    # ------------------------------------------------------------ building
    @classmethod
    def from_prior(cls, prior, var_names: Sequence[str], *, symbols: Sequence[str] | None = None,
                   organism: str = "human", add_reverse: bool = False, self_loops: bool = True, modules=None,
                   min_module_size: int = 5, max_module_size: int = 500, isolated: str = "self_loop",
                   expression=None, knn_k: int = 5, case_insensitive: bool = True, allow_empty: bool = False,
                   verbose: bool = False) -> "GeneGraph":
        """Align a prior network (and optional gene sets) to the genes of an AnnData.

        Parameters
        ----------
        prior
            Shipped name (``"collectri"``), path, or long DataFrame ``source, target, weight``.
        var_names
            The genes, in model order (G), e.g. ``adata.var_names``.
        symbols
            Per-gene names used for matching instead of ``var_names`` (G), e.g.
            ``adata.var["feature"]`` when ``var_names`` are Ensembl ids. The graph keeps
            ``var_names`` as ``genes``; a symbol shared by several genes maps to the first.
        organism
            Organism of shipped priors/modules (``"human"``, ``"mouse"``).
        add_reverse
            Add ``i → j`` (type 1, same sign and weight) for every prior edge ``j → i`` that has
            no reverse prior edge, so targets can inform their regulators.
        self_loops
            Give every gene a self-loop (type 2, sign 0, weight 1) so it keeps its own state in
            attention; a gene with a prior autoregulation edge keeps that one instead.
        modules
            Gene sets (shipped name such as ``"hallmark"``, path, or DataFrame) → ``membership``
            (G, P); a set is kept when ``min_module_size ≤ |set ∩ genes| ≤ max_module_size``.
        min_module_size, max_module_size
            Size window for modules, counted in genes present.
        isolated
            Genes without any prior edge: ``"self_loop"`` (only their self-loop) or ``"knn"``
            (also in-edges, type 3, from their ``knn_k`` most |Pearson|-correlated genes in
            ``expression``; sign = sign of the correlation, weight = |correlation|).
        expression
            Cells × genes (B, G) array, dense or scipy-sparse; needed for ``isolated="knn"``.
        knn_k
            Neighbours per isolated gene.
        case_insensitive
            When an exact name match fails, match up to case (``Gata1`` ↔ ``GATA1``); such
            matches are counted in ``coverage["n_case_only_matches"]``.
        allow_empty
            Accept a prior with no edge among the genes (a graph of self-loops/modules only).
        verbose
            Print :meth:`summary`.

        Returns
        -------
        GeneGraph
            With ``coverage``: ``n_genes``, ``n_genes_in_prior`` (genes named anywhere in the
            prior), ``n_tfs`` (sources with ≥1 kept edge), ``n_isolated`` (genes with no kept prior
            edge), ``n_edges_prior_total`` (prior rows after merging duplicates),
            ``n_edges_kept`` (type-0 edges), ``n_edges_dropped`` (rows with an end not among the
            genes), ``n_duplicates_merged`` (rows that became the same gene pair after matching),
            ``n_self_edges_kept`` (autoregulation), ``n_case_only_matches``, ``n_modules``,
            ``modules_dropped``.
        """
        genes = [str(g) for g in var_names]
        G = len(genes)
        if G == 0:
            raise ValueError("var_names is empty: the AnnData has no genes")
        keys = genes if symbols is None else ["" if pd.isna(s) else str(s) for s in symbols]
        if len(keys) != G:
            raise ValueError(f"symbols has {len(keys)} entries but there are {G} genes; pass one symbol per "
                             "gene, e.g. symbols=adata.var['feature'].")
        lookup = _Lookup(keys, case_insensitive)
        df = _priors.load(prior, organism)
        src = np.array([lookup.get(s) for s in df["source"]], dtype=np.int64)  # (n_rows,), -1 = absent
        tgt = np.array([lookup.get(t) for t in df["target"]], dtype=np.int64)
        keep = (src >= 0) & (tgt >= 0)
        if not keep.any() and not allow_empty:
            raise ValueError(_no_overlap_message(df, keys, symbols is not None, organism))
        e = pd.DataFrame({"j": src[keep], "i": tgt[keep], "w": df["weight"].to_numpy(float)[keep]})
        e = e.groupby(["j", "i"], sort=True, as_index=False)["w"].mean()  # same rule as from_decoupler
        j, i, w = e["j"].to_numpy(np.int64), e["i"].to_numpy(np.int64), e["w"].to_numpy(float)
        touched = np.zeros(G, dtype=bool)
        touched[j], touched[i] = True, True
        parts = [(j, i, np.sign(w), np.abs(w), EDGE_PRIOR)]
        if add_reverse:
            have = set((j * G + i).tolist())
            r = np.array([(b * G + a) not in have for a, b in zip(j.tolist(), i.tolist())], dtype=bool) & (j != i)
            parts.append((i[r], j[r], np.sign(w[r]), np.abs(w[r]), EDGE_REVERSE))
        if isolated == "knn":
            if expression is None:
                raise ValueError("isolated='knn' needs expression=... (cells × genes, e.g. adata.X) to find "
                                 "co-expressed genes; or use isolated='self_loop'.")
            parts.append((*knn_edges(expression, np.flatnonzero(~touched), knn_k, G), EDGE_KNN))
        elif isolated != "self_loop":
            raise ValueError(f"isolated must be 'self_loop' or 'knn', got {isolated!r}")
        if self_loops:
            loops = np.setdiff1d(np.arange(G), j[j == i])  # genes with prior autoregulation keep theirs
            parts.append((loops, loops, np.zeros(len(loops)), np.ones(len(loops)), EDGE_SELF))
        J, I, S, W = (np.concatenate([p[k] for p in parts]) for k in range(4))
        T = np.concatenate([np.full(len(p[0]), p[4]) for p in parts])
        membership, names, dropped = None, [], 0
        if modules is not None:
            membership, names, dropped = _membership(modules, lookup, G, organism, min_module_size, max_module_size)
        prior_names = set(df["source"]) | set(df["target"])
        if case_insensitive:
            prior_names |= {n.upper() for n in prior_names}
        in_prior = sum(1 for k in keys if k and (k in prior_names or (case_insensitive and k.upper() in prior_names)))
        coverage = {
            "n_genes": G, "n_genes_in_prior": int(in_prior), "n_tfs": int(len(np.unique(j))),
            "n_isolated": int((~touched).sum()), "n_edges_prior_total": int(len(df)),
            "n_edges_kept": int(len(j)), "n_edges_dropped": int((~keep).sum()),
            "n_duplicates_merged": int(keep.sum() - len(j)), "n_self_edges_kept": int((j == i).sum()),
            "n_case_only_matches": lookup.n_case_only, "n_modules": 0 if membership is None else len(names),
            "modules_dropped": int(dropped), "min_module_size": int(min_module_size),
            "max_module_size": int(max_module_size),
        }
        graph = cls(genes, np.stack([J, I]), S, W, T, membership, names, coverage)
        graph.case_only_examples = sorted(lookup.case_only)[:5]  # for the warning of GRNDiff(...)
        (log.info if verbose else log.debug)("%s", graph.summary())
        if verbose:
            print(graph.summary())
        return graph

    # ------------------------------------------------------- serialisation
    @classmethod
    def for_anndata(cls, adata, prior="collectri", modules=None, *, symbol_key: str | None = None,
                    organism: str = "human", **kw) -> "GeneGraph":
        """The graph of a registered AnnData, as the Python API and the CLI build it.

        ``prior`` may also be a ``GeneGraph`` (checked against ``adata.var_names``) or ``None``
        (self-loops and modules only); ``symbol_key`` names the ``var`` column matched instead of
        ``var_names``; ``kw`` go to :meth:`from_prior`.
        """
        if isinstance(prior, GeneGraph):
            if list(prior.genes) != list(map(str, adata.var_names)):
                raise ValueError("the GeneGraph's genes differ from adata.var_names; build it with "
                                 "GeneGraph.from_prior(prior, adata.var_names)")
            return prior
        symbols = adata.var[symbol_key].astype(str).tolist() if symbol_key else None
        if prior is None:
            prior, kw = pd.DataFrame({"source": [], "target": [], "weight": []}), {"allow_empty": True, **kw}
        return cls.from_prior(prior, list(adata.var_names), symbols=symbols, organism=organism, modules=modules, **kw)

    def to_state(self) -> dict:
        """Plain tensors, lists and numbers: safe for ``torch.load(..., weights_only=True)``."""
        coverage = {k: v for k, v in self.coverage.items() if isinstance(v, (bool, int, float, str))}
        return {"genes": list(self.genes), "edge_index": self.edge_index.clone(), "edge_sign": self.edge_sign.clone(),
                "edge_weight": self.edge_weight.clone(), "edge_type": self.edge_type.clone(),
                "membership": None if self.membership is None else self.membership.clone(),
                "module_names": list(self.module_names), "coverage": coverage}

    @classmethod
    def from_state(cls, state: dict) -> "GeneGraph":
        """Inverse of :meth:`to_state`."""
        missing = [k for k in ("genes", "edge_index") if k not in state]
        if missing:
            raise ValueError(f"not a GeneGraph state: missing {missing} (keys: {sorted(state)})")
        return cls(state["genes"], state["edge_index"], state.get("edge_sign"), state.get("edge_weight"),
                   state.get("edge_type"), state.get("membership"), state.get("module_names"), state.get("coverage"))

    def permute(self, perm) -> "GeneGraph":
        """The same graph with genes reordered: new gene ``k`` is old gene ``perm[k]``.

        Edges keep their order and attributes; ``membership`` rows follow their genes. Permuting
        the input genes of a model together with its graph permutes its output the same way.
        """
        perm = torch.as_tensor(perm, dtype=torch.long).reshape(-1)
        if perm.numel() != self.n_genes or not torch.equal(torch.sort(perm).values, torch.arange(self.n_genes)):
            raise ValueError(f"perm must be a permutation of 0..{self.n_genes - 1}")
        inv = torch.argsort(perm)  # old index → new index
        return GeneGraph([self.genes[p] for p in perm.tolist()], inv[self.edge_index], self.edge_sign.clone(),
                         self.edge_weight.clone(), self.edge_type.clone(),
                         None if self.membership is None else self.membership[perm], self.module_names, self.coverage)

    def to_dataframe(self) -> pd.DataFrame:
        """Edges as a long table ``source, target, weight`` (signed) and ``type``."""
        j, i = self.edge_index.tolist()
        return pd.DataFrame({"source": [self.genes[k] for k in j], "target": [self.genes[k] for k in i],
                             "weight": (self.edge_sign * self.edge_weight).numpy(), "type": self.edge_type.numpy()})


class _Lookup:
    """Prior name → gene index: exact match first, then up to case (counted), else -1."""

    def __init__(self, keys: list[str], case_insensitive: bool):
        self.exact: dict[str, int] = {}
        self.upper: dict[str, int] = {}
        for k, name in enumerate(keys):
            if name:
                self.exact.setdefault(name, k)  # duplicated symbols: the first gene wins
                if case_insensitive:
                    self.upper.setdefault(name.upper(), k)
        self.case_only: set[str] = set()

    @property
    def n_case_only(self) -> int:
        return len(self.case_only)

    def get(self, name: str) -> int:
        k = self.exact.get(name)
        if k is None and self.upper:
            k = self.upper.get(name.upper())
            if k is not None:
                self.case_only.add(name)
        return -1 if k is None else k


def _no_overlap_message(df: pd.DataFrame, keys: list[str], have_symbols: bool, organism: str) -> str:
    ex_prior = pd.unique(pd.concat([df["source"], df["target"]]))[:5].tolist()
    ex_genes = [k for k in keys if k][:5]
    msg = (f"the prior and the genes do not overlap: none of its {len(df):,} edges joins two of your "
           f"{len(keys):,} genes. Prior names look like {ex_prior}; your genes look like {ex_genes}.")
    if any(k.upper().startswith("ENS") for k in ex_genes) and not have_symbols:
        msg += " Your var_names look like Ensembl ids: pass symbols=adata.var['<symbol column>']."
    else:
        msg += " If var_names are not gene symbols, pass symbols=adata.var['<symbol column>']."
    return msg + f" Also check organism= (now {organism!r}) and that the prior is for this species."


def _membership(modules, lookup: _Lookup, G: int, organism: str, lo: int, hi: int):
    """Gene sets → (G, P) 0/1 membership of the sets whose size among the genes is in [lo, hi]."""
    sets = _priors.load(modules, organism)
    idx = np.array([lookup.get(g) for g in sets["target"]], dtype=np.int64)
    n_sets = sets["source"].nunique()
    present = sets.assign(g=idx)[idx >= 0]
    cols, names = [], []
    for name, g in present.groupby("source", sort=False)["g"]:
        members = np.unique(g.to_numpy())
        if lo <= len(members) <= hi:
            col = np.zeros(G, dtype=np.float32)
            col[members] = 1.0
            cols.append(col)
            names.append(str(name))
    if not cols:
        best = int(present.groupby("source")["g"].nunique().max()) if len(present) else 0
        raise ValueError(f"no gene set has between {lo} and {hi} of your genes (the largest "
                         f"overlap is {best}); lower min_module_size=, or check that the gene sets use the same "
                         "gene names (symbols=) and organism= as your data.")
    return np.stack(cols, axis=1), names, int(n_sets - len(names))  # (G, P)
