"""``GeneGraph``: a prior network aligned to an AnnData's genes — the model's tokenizer.

One graph, shared by every cell: ``edge_index (2, E)`` (row 0 source/regulator ``j``, row 1
target ``i``; messages flow ``j → i``), per-edge sign, weight and type, and an optional module
membership ``(G, P)``. Genes the prior does not cover stay in the model (self-loop only, or kNN
co-expression in-edges), so the graph never silently drops measured genes.

Nodes are the ``G`` measured genes, then ``L`` *latent* genes (``L = 0`` unless perturbed genes
are unmeasured): prior genes that are perturbed but not measured, and the unmeasured prior genes on
paths of at most ``latent_hops`` edges from such a gene to a measured gene. A latent node has no
expression, no loss and no output; it carries the perturbation flag and passes messages
(``N = G + L`` nodes; ``edge_index`` indexes ``[0, N)``).

Edge types: 0 regulation prior (TF → target), 1 its added reverse, 2 self-loop, 3 kNN fallback,
4 signalling prior (e.g. ``omnipath_signaling``), 5 its added reverse. Several priors combine
into one graph (``prior=["collectri", "omnipath_signaling"]``); ``edge_prior`` says which prior
each edge came from.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import priors as _priors
from .edge_types import (  # noqa: F401  (re-exported: grndiff.graph.EDGE_* is where users look)
    EDGE_KNN,
    EDGE_PRIOR,
    EDGE_REVERSE,
    EDGE_SELF,
    EDGE_SIGNAL,
    EDGE_SIGNAL_REVERSE,
    EDGE_TYPE_NAMES,
    FROM_PRIOR_EDGE_TYPES,
    PRIOR_EDGE_TYPES,
)
from .priors.coexpression import knn_edges

log = logging.getLogger("grndiff")



class GeneGraph:
    """Gene graph aligned to ``genes`` (the AnnData's ``var_names`` order).

    Parameters
    ----------
    genes
        Measured gene names (G), in model order.
    edge_index
        LongTensor (2, E) into the N = G + L nodes (measured genes, then ``latent_genes``): row 0
        source/regulator ``j``, row 1 target ``i``; messages flow ``j → i``.
    edge_sign
        FloatTensor (E,) in {-1, 0, +1} (activation, unknown/none, repression); default 0.
    edge_weight
        FloatTensor (E,), magnitude ≥ 0; default 1.
    edge_type
        LongTensor (E,): 0 (regulation) prior, 1 its added reverse, 2 self-loop, 3 kNN fallback,
        4 signalling prior, 5 its added reverse; default 0.
    membership
        FloatTensor (G, P) of 0/1 module (gene-set) membership, or None (measured genes only).
    module_names
        P names, one per ``membership`` column.
    coverage
        How much of the prior and of the genes the graph covers (see :meth:`from_prior`).
    latent_genes
        L names of the latent nodes (unmeasured prior genes), nodes ``G .. G+L-1``; default none.
    edge_prior
        LongTensor (E,): index into ``prior_names`` of the prior each edge (or, for a reverse
        edge, its forward edge) came from, -1 for self-loops and kNN edges; default: 0 for types
        0, 1, 4, 5.
    prior_names
        The priors the edges came from (one name each); default ``["prior"]``.
    """

    def __init__(self, genes: Sequence[str], edge_index, edge_sign=None, edge_weight=None, edge_type=None,
                 membership=None, module_names: Sequence[str] | None = None, coverage: dict | None = None, *,
                 latent_genes: Sequence[str] | None = None, edge_prior=None, prior_names: Sequence[str] | None = None):
        self.genes = [str(g) for g in genes]
        self.latent_genes = [str(g) for g in (latent_genes or [])]
        G, N = len(self.genes), len(self.genes) + len(self.latent_genes)
        names = pd.Index(self.genes + self.latent_genes)
        if names.has_duplicates:
            dup = names[names.duplicated()].unique()[:5].tolist()
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
        if E and (int(self.edge_index.min()) < 0 or int(self.edge_index.max()) >= N):
            raise ValueError(f"edge_index refers to nodes outside [0, {N}); it must index into genes "
                             "(then latent_genes)")
        if not torch.isin(self.edge_sign, torch.tensor([-1.0, 0.0, 1.0])).all():
            raise ValueError("edge_sign must contain only -1, 0 or +1 (use edge_weight for magnitudes)")
        if not (torch.isfinite(self.edge_weight).all() and (self.edge_weight >= 0).all()):
            raise ValueError("edge_weight must be finite and ≥ 0 (the sign lives in edge_sign)")
        if E and (int(self.edge_type.min()) < 0 or int(self.edge_type.max()) > EDGE_SIGNAL_REVERSE):
            raise ValueError("edge_type must be 0 (prior), 1 (reverse), 2 (self-loop), 3 (kNN), 4 (signalling) or "
                             "5 (signalling reverse)")
        from_prior = torch.isin(self.edge_type, torch.tensor(FROM_PRIOR_EDGE_TYPES))
        self.edge_prior = (torch.where(from_prior, 0, -1) if edge_prior is None
                           else torch.as_tensor(edge_prior, dtype=torch.long).reshape(-1))  # (E,)
        self.prior_names = [str(p) for p in (prior_names or ["prior"])]
        if self.edge_prior.shape[0] != E:
            raise ValueError(f"edge_prior has {self.edge_prior.shape[0]} entries, expected E={E}")
        if E and int(self.edge_prior.max()) >= len(self.prior_names):
            raise ValueError(f"edge_prior refers to prior {int(self.edge_prior.max())}, but prior_names has "
                             f"{len(self.prior_names)} names")
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
        """G, the number of measured genes (the model's input and output columns)."""
        return len(self.genes)

    @property
    def n_latent(self) -> int:
        """L, the number of latent nodes (unmeasured prior genes)."""
        return len(self.latent_genes)

    @property
    def n_nodes(self) -> int:
        """N = G + L, the number of nodes (measured genes, then latent genes)."""
        return len(self.genes) + len(self.latent_genes)

    @property
    def node_names(self) -> list[str]:
        """The N node names: ``genes`` then ``latent_genes``."""
        return self.genes + self.latent_genes

    @property
    def n_edges(self) -> int:
        """E, the number of edges of every type."""
        return int(self.edge_index.shape[1])

    @property
    def n_modules(self) -> int:
        """P, the number of modules (0 without ``membership``)."""
        return 0 if self.membership is None else int(self.membership.shape[1])

    def in_degree(self, edge_types: Sequence[int] | None = None) -> torch.Tensor:
        """Number of in-edges (messages received) per node.

        Parameters
        ----------
        edge_types
            Count only these edge types (e.g. ``[0]`` for prior edges); default all.

        Returns
        -------
        torch.LongTensor
            (N,): the G measured genes, then the L latent nodes.
        """
        target = self.edge_index[1]
        if edge_types is not None:
            target = target[torch.isin(self.edge_type, torch.as_tensor(list(edge_types)))]
        return torch.bincount(target, minlength=self.n_nodes)

    def __repr__(self) -> str:
        latent = f", latent={self.n_latent}" if self.n_latent else ""
        return f"GeneGraph(genes={self.n_genes}{latent}, edges={self.n_edges}, modules={self.n_modules})"

    def summary(self) -> str:
        """A human-readable account of the graph and of how well the prior covers the genes."""
        c = self.coverage
        counts = torch.bincount(self.edge_type, minlength=len(EDGE_TYPE_NAMES)).tolist()
        by_type = ", ".join(f"{n:,} {t}" for n, t in zip(counts, EDGE_TYPE_NAMES) if n)
        latent = f" + {self.n_latent:,} latent" if self.n_latent else ""
        lines = [f"GeneGraph: {self.n_genes:,} genes{latent}, {self.n_edges:,} edges ({by_type or 'none'}), "
                 f"{self.n_modules:,} modules"]
        if len(self.prior_names) > 1:
            per = torch.bincount(self.edge_prior[self.edge_prior >= 0], minlength=len(self.prior_names)).tolist()
            lines.append("  priors: " + "; ".join(f"{p} {n:,} edges" for p, n in zip(self.prior_names, per)))
        if "n_edges_prior_total" in c:
            lines.append(f"  prior: {c['n_edges_kept']:,} edges kept among the genes out of "
                         f"{c['n_edges_prior_total']:,} ({c['n_edges_dropped']:,} dropped: an end not among the "
                         f"genes); {c['n_tfs']:,} regulators with ≥1 kept edge")
            lines.append(f"  genes: {c['n_genes_in_prior']:,} named in the prior; {c['n_isolated']:,} without any "
                         "kept prior edge (they keep a self-loop" + (", plus kNN in-edges)" if counts[3] else ")"))
            if self.n_latent or c.get("n_perturbed_unmeasured"):
                lines.append(f"  latent: {self.n_latent:,} unmeasured prior genes are nodes without expression "
                             f"({c.get('n_latent_perturbed', 0):,} perturbed, "
                             f"{c.get('n_latent_path', 0):,} on paths of "
                             f"≤ {c.get('latent_hops', '?')} edges from them to measured genes; "
                             f"{c.get('n_edges_latent', 0):,} edges touch them)")
                if c.get("n_latent_path_dropped"):
                    lines.append(f"  latent: {c['n_latent_path_dropped']:,} more path genes left out (max_latent=)")
                if c.get("n_perturbed_unreachable"):
                    lines.append(f"  latent: {c['n_perturbed_unreachable']:,} perturbed genes reach no measured gene "
                                 f"within {c.get('latent_hops')} prior edges (their flag acts only through the "
                                 "global perturbation summary); raise latent_hops= or add a prior")
                if c.get("n_perturbed_not_in_prior"):
                    lines.append(f"  latent: {c['n_perturbed_not_in_prior']:,} perturbed genes are neither "
                                 "measured nor in the prior and were dropped (allow_missing_genes=True)")
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
                   perturbed: Sequence[str] | None = None, latent_hops: int = 2, max_latent: int | None = None,
                   allow_missing_perturbed: bool = False, verbose: bool = False) -> GeneGraph:
        """Align a prior network (and optional gene sets) to the genes of an AnnData.

        Parameters
        ----------
        prior
            Shipped name (``"collectri"``, ``"omnipath_signaling"``), path, long DataFrame
            ``source, target, weight`` (an optional ``edge_kind`` column, ``"regulation"`` or
            ``"signalling"``, sets each edge's type), or a list of these: their union
            (:func:`grndiff.priors.combine`), signalling edges typed apart from regulation.
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
        perturbed
            Genes that are (or will be) perturbed, e.g. the knock-outs of the data. Those that are
            not among the genes become latent nodes (``latent_genes``), with the unmeasured prior
            genes on paths of at most ``latent_hops`` prior edges from them to a measured gene
            (intermediate genes unmeasured). A perturbed gene neither measured nor named by the
            prior is an error naming it (or dropped, with ``allow_missing_perturbed``).
        latent_hops
            Longest path (in prior edges) along which unmeasured genes become latent nodes; 0 keeps
            only the perturbed genes themselves. Their number grows quickly with it on a dense
            prior (Papalexi 2021, 299 genes, CollecTRI ∪ OmniPath: 15 latent nodes at 1 hop, 258
            at 2, 1,040 at 3), and each latent node costs as much as a measured gene per step: the
            default 2 keeps a step ~2× (not ~6×) the measured-only cost there.
        max_latent
            Keep at most this many path genes (the perturbed genes themselves are always kept):
            those on the shortest paths first (``d_from + d_to``, then ``d_from``, then name);
            ``None`` keeps all. The number left out is ``coverage["n_latent_path_dropped"]``.
        allow_missing_perturbed
            Leave out, instead of raising, perturbed genes that are in neither the genes nor the prior.
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
            ``modules_dropped``; with signalling edges ``n_edges_signalling``; with ``perturbed``
            ``n_perturbed_unmeasured``, ``n_latent``, ``n_latent_perturbed``, ``n_latent_path``,
            ``n_perturbed_unreachable`` (perturbed latent genes with no path of ≤ ``latent_hops``
            edges to a measured gene), ``n_perturbed_not_in_prior``, ``n_edges_latent`` (kept
            prior edges with a latent end), ``latent_hops``.
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
        label = _prior_label(prior)
        df = _load_prior(prior, organism)
        latent, lat_cov = [], {}
        if perturbed is not None:
            latent, lat_cov = _latent_nodes(df, lookup, perturbed, int(latent_hops), label, allow_missing_perturbed,
                                            max_latent)
            for k, name in enumerate(latent):
                lookup.add(name, G + k)
        N = G + len(latent)  # nodes: the measured genes, then the latent ones
        src = np.array([lookup.get(s) for s in df["source"]], dtype=np.int64)  # (n_rows,), -1 = absent
        tgt = np.array([lookup.get(t) for t in df["target"]], dtype=np.int64)
        keep = (src >= 0) & (tgt >= 0)
        if not keep.any() and not allow_empty:
            raise ValueError(_no_overlap_message(df, keys, symbols is not None, organism))
        e = pd.DataFrame({"j": src[keep], "i": tgt[keep], "w": df["weight"].to_numpy(float)[keep]})
        typed = "edge_kind" in df.columns or "prior" in df.columns
        if typed:  # a signalling or combined prior: each edge keeps its kind and origin (first row wins)
            kinds = df["edge_kind"] if "edge_kind" in df.columns else pd.Series("regulation", index=df.index)
            origin = df["prior"].astype(str) if "prior" in df.columns else pd.Series(label, index=df.index)
            origins = list(dict.fromkeys(origin.tolist())) or [label]
            e["s"] = (kinds.astype(str) == "signalling").to_numpy()[keep]
            e["p"] = origin.map({n: k for k, n in enumerate(origins)}).to_numpy(np.int64)[keep]
            e = e.groupby(["j", "i"], sort=True, as_index=False).agg(w=("w", "mean"), s=("s", "first"),
                                                                     p=("p", "first"))
        else:
            origins = [label]
            e = e.groupby(["j", "i"], sort=True, as_index=False)["w"].mean()  # same rule as from_decoupler
        j, i, w = e["j"].to_numpy(np.int64), e["i"].to_numpy(np.int64), e["w"].to_numpy(float)
        sig = e["s"].to_numpy(bool) if typed else np.zeros(len(j), dtype=bool)  # (E0,) signalling edges
        origin = e["p"].to_numpy(np.int64) if typed else np.zeros(len(j), dtype=np.int64)
        touched = np.zeros(N, dtype=bool)
        touched[j], touched[i] = True, True
        parts = [(j, i, np.sign(w), np.abs(w), np.where(sig, EDGE_SIGNAL, EDGE_PRIOR), origin)]
        if add_reverse:
            have = set((j * N + i).tolist())
            r = np.array([(b * N + a) not in have for a, b in zip(j.tolist(), i.tolist())], dtype=bool) & (j != i)
            parts.append((i[r], j[r], np.sign(w[r]), np.abs(w[r]), np.where(sig[r], EDGE_SIGNAL_REVERSE, EDGE_REVERSE),
                          origin[r]))
        if isolated == "knn":
            if expression is None:
                raise ValueError("isolated='knn' needs expression=... (cells × genes, e.g. adata.X) to find "
                                 "co-expressed genes; or use isolated='self_loop'.")
            kj, ki, ks, kw = knn_edges(expression, np.flatnonzero(~touched[:G]), knn_k, G)
            parts.append((kj, ki, ks, kw, np.full(len(kj), EDGE_KNN), np.full(len(kj), -1)))
        elif isolated != "self_loop":
            raise ValueError(f"isolated must be 'self_loop' or 'knn', got {isolated!r}")
        if self_loops:
            loops = np.setdiff1d(np.arange(N), j[j == i])  # nodes with prior autoregulation keep theirs
            parts.append((loops, loops, np.zeros(len(loops)), np.ones(len(loops)), np.full(len(loops), EDGE_SELF),
                          np.full(len(loops), -1)))
        edge_j, edge_i, S, W = (np.concatenate([p[k] for p in parts]) for k in range(4))
        T = np.concatenate([np.asarray(p[4], dtype=np.int64) for p in parts])
        P = np.concatenate([np.asarray(p[5], dtype=np.int64) for p in parts])
        membership, names, dropped = None, [], 0
        if modules is not None:
            membership, names, dropped = _membership(modules, lookup, G, organism, min_module_size, max_module_size)
        prior_names = set(df["source"]) | set(df["target"])
        if case_insensitive:
            prior_names |= {n.upper() for n in prior_names}
        in_prior = sum(1 for k in keys if k and (k in prior_names or (case_insensitive and k.upper() in prior_names)))
        coverage = {
            "n_genes": G, "n_genes_in_prior": int(in_prior), "n_tfs": int(len(np.unique(j))),
            "n_isolated": int((~touched[:G]).sum()), "n_edges_prior_total": int(len(df)),
            "n_edges_kept": int(len(j)), "n_edges_dropped": int((~keep).sum()),
            "n_duplicates_merged": int(keep.sum() - len(j)), "n_self_edges_kept": int((j == i).sum()),
            "n_case_only_matches": lookup.n_case_only, "n_modules": 0 if membership is None else len(names),
            "modules_dropped": int(dropped), "min_module_size": int(min_module_size),
            "max_module_size": int(max_module_size),
        }
        if sig.any():
            coverage["n_edges_signalling"] = int(sig.sum())
        if lat_cov:
            coverage.update(lat_cov, n_edges_latent=int(((j >= G) | (i >= G)).sum()))
        graph = cls(genes, np.stack([edge_j, edge_i]), S, W, T, membership, names, coverage, latent_genes=latent,
                    edge_prior=P, prior_names=origins)
        graph.case_only_examples = sorted(lookup.case_only)[:5]  # for the warning of GRNDiff(...)
        (log.info if verbose else log.debug)("%s", graph.summary())
        if verbose:
            print(graph.summary())
        return graph

    # ------------------------------------------------------- serialisation
    @classmethod
    def for_anndata(cls, adata, prior="collectri", modules=None, *, symbol_key: str | None = None,
                    organism: str = "human", **kw) -> GeneGraph:
        """The graph of a registered AnnData, as the Python API and the CLI build it.

        ``prior`` may also be a ``GeneGraph`` (checked against ``adata.var_names``) or ``None``
        (self-loops and modules only); ``symbol_key`` names the ``var`` column matched instead of
        ``var_names``; ``kw`` go to :meth:`from_prior` (``perturbed=`` makes unmeasured perturbed
        genes latent nodes).
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
                "module_names": list(self.module_names), "coverage": coverage,
                "latent_genes": list(self.latent_genes), "edge_prior": self.edge_prior.clone(),
                "prior_names": list(self.prior_names)}

    @classmethod
    def from_state(cls, state: dict) -> GeneGraph:
        """Inverse of :meth:`to_state` (a state saved before latent nodes and edge origins loads with none)."""
        missing = [k for k in ("genes", "edge_index") if k not in state]
        if missing:
            raise ValueError(f"not a GeneGraph state: missing {missing} (keys: {sorted(state)})")
        return cls(state["genes"], state["edge_index"], state.get("edge_sign"), state.get("edge_weight"),
                   state.get("edge_type"), state.get("membership"), state.get("module_names"), state.get("coverage"),
                   latent_genes=state.get("latent_genes"), edge_prior=state.get("edge_prior"),
                   prior_names=state.get("prior_names"))

    def permute(self, perm) -> GeneGraph:
        """The same graph with genes reordered: new gene ``k`` is old gene ``perm[k]``.

        Edges keep their order and attributes; ``membership`` rows follow their genes; latent nodes
        stay after the genes, in their order. Permuting the input genes of a model together with
        its graph permutes its output the same way.
        """
        perm = torch.as_tensor(perm, dtype=torch.long).reshape(-1)
        if perm.numel() != self.n_genes or not torch.equal(torch.sort(perm).values, torch.arange(self.n_genes)):
            raise ValueError(f"perm must be a permutation of 0..{self.n_genes - 1}")
        full = torch.cat([perm, torch.arange(self.n_genes, self.n_nodes)])  # latent nodes keep their place
        inv = torch.argsort(full)  # old index → new index
        return GeneGraph([self.genes[p] for p in perm.tolist()], inv[self.edge_index], self.edge_sign.clone(),
                         self.edge_weight.clone(), self.edge_type.clone(),
                         None if self.membership is None else self.membership[perm], self.module_names, self.coverage,
                         latent_genes=self.latent_genes, edge_prior=self.edge_prior.clone(),
                         prior_names=self.prior_names)

    def to_dataframe(self) -> pd.DataFrame:
        """Edges as a long table ``source, target, weight`` (signed) and ``type`` (latent nodes by
        name too); with several priors also ``prior``, the prior each edge came from."""
        j, i = self.edge_index.tolist()
        names = self.node_names
        out = pd.DataFrame({"source": [names[k] for k in j], "target": [names[k] for k in i],
                            "weight": (self.edge_sign * self.edge_weight).numpy(), "type": self.edge_type.numpy()})
        if len(self.prior_names) > 1:
            lookup = np.array(self.prior_names + [None], dtype=object)
            out["prior"] = lookup[self.edge_prior.numpy()]  # -1 → None
        return out


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

    def add(self, name: str, k: int) -> None:
        """Name a node ``k`` (a latent gene): matched exactly."""
        self.exact[name] = k

    def peek(self, name: str) -> int:
        """:meth:`get` without counting case-only matches."""
        k = self.exact.get(name)
        if k is None and self.upper:
            k = self.upper.get(name.upper())
        return -1 if k is None else k

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


def _prior_label(prior) -> str:
    """A short name of a prior argument for messages and ``prior_names``."""
    if isinstance(prior, str):
        return prior.strip().lower() if not Path(prior).suffix else Path(prior).name
    if isinstance(prior, pd.DataFrame):
        return f"DataFrame({len(prior)} rows)"
    if isinstance(prior, (list, tuple)):
        return "[" + ", ".join(_prior_label(p) for p in prior) + "]"
    if prior is None:
        return "None"
    if isinstance(prior, os.PathLike):
        return Path(prior).name
    return type(prior).__name__


def _load_prior(prior, organism: str) -> pd.DataFrame:
    """A prior argument → long table; a list → the union (:func:`grndiff.priors.combine`); a
    shipped signalling network keeps its ``edge_kind`` column."""
    if isinstance(prior, (list, tuple)):
        return _priors.combine(prior, organism=organism)
    return _priors.load(prior, organism)


def _bfs(starts: dict[str, int], adjacency: dict, limit: int) -> dict[str, int]:
    """Shortest distances from ``starts`` {name: start distance} along ``adjacency`` {name: [names]},
    up to ``limit``."""
    dist = dict(starts)
    frontier = [n for n, d in starts.items() if d < limit]
    while frontier:
        nxt = []
        for u in frontier:
            for v in adjacency.get(u, ()):
                if v not in dist:
                    dist[v] = dist[u] + 1
                    if dist[v] < limit:
                        nxt.append(v)
        frontier = nxt
    return dist


def _latent_nodes(df: pd.DataFrame, lookup: _Lookup, perturbed, hops: int, label: str,
                  allow_missing: bool, max_latent: int | None = None) -> tuple[list[str], dict]:
    """The latent nodes for ``perturbed`` genes: (names, coverage entries).

    Perturbed genes matched by no gene (exactly or, for the prior's own names, up to case) but named
    by the prior are latent, and so is every unmeasured prior gene ``v`` on a path perturbed gene →
    … → ``v`` → … → measured gene of at most ``hops`` edges whose inner genes are all unmeasured:
    ``d_from_perturbed(v) + d_to_measured(v) ≤ hops`` (two breadth-first searches over the
    unmeasured genes, O(prior edges)). Order: the perturbed genes as given, then the others sorted.
    """
    if hops < 0:
        raise ValueError(f"latent_hops must be ≥ 0, got {hops}")
    wanted = list(dict.fromkeys(str(g) for g in perturbed))
    unmeasured = [g for g in wanted if lookup.peek(g) < 0]
    cov = {"n_perturbed_unmeasured": len(unmeasured), "latent_hops": int(hops)}
    if not unmeasured:
        return [], cov
    in_prior = set(df["source"]) | set(df["target"])
    missing = [g for g in unmeasured if g not in in_prior]
    if missing and not allow_missing:
        more = f" … and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise ValueError(
            f"perturbed genes {', '.join(map(repr, missing[:20]))}{more} are neither measured (not among the "
            f"{len(lookup.exact):,} genes) nor in the prior {label} ({len(in_prior):,} genes), so they cannot be "
            "nodes of the graph. Check their spelling and organism=, use a prior that names them (e.g. "
            "prior=['collectri', 'omnipath_signaling'] for signalling genes), or pass allow_missing_genes=True to "
            "setup_anndata to drop them (those cells then look unperturbed).")
    seeds = [g for g in unmeasured if g in in_prior]
    measured_src = np.array([lookup.peek(n) >= 0 for n in df["source"]], dtype=bool)
    measured_tgt = np.array([lookup.peek(n) >= 0 for n in df["target"]], dtype=bool)
    both = df[~measured_src & ~measured_tgt]  # edges among unmeasured genes
    fwd = both.groupby("source", sort=False)["target"].agg(list).to_dict()
    bwd = both.groupby("target", sort=False)["source"].agg(list).to_dict()
    d_from = _bfs({g: 0 for g in seeds}, fwd, max(hops - 1, 0))  # an inner gene needs ≥ 1 more edge
    into_measured = df.loc[~measured_src & measured_tgt, "source"].unique()
    d_to = _bfs({g: 1 for g in into_measured}, bwd, hops) if hops > 0 else {}
    seed_set = set(seeds)
    path = sorted(v for v, d in d_from.items() if v not in seed_set and d + d_to.get(v, hops + 1) <= hops)
    n_dropped = 0
    if max_latent is not None and len(path) > int(max_latent):
        if int(max_latent) < 0:
            raise ValueError(f"max_latent must be ≥ 0 or None, got {max_latent}")
        ranked = sorted(path, key=lambda v: (d_from[v] + d_to[v], d_from[v], v))
        kept = set(ranked[:int(max_latent)])
        n_dropped = len(path) - len(kept)
        path = [v for v in path if v in kept]
    cov.update(n_latent=len(seeds) + len(path), n_latent_perturbed=len(seeds), n_latent_path=len(path),
               n_latent_path_dropped=n_dropped,
               n_perturbed_unreachable=sum(d_to.get(g, hops + 1) > hops for g in seeds),
               n_perturbed_not_in_prior=len(missing))
    return seeds + path, cov


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
    present = sets.assign(g=idx)[(idx >= 0) & (idx < G)]  # measured genes only: latent nodes are in no module
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
