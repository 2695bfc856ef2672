"""Linear PCA-ridge perturbation model (Ahlmann-Eltze, Huber & Anders 2025).

Ahlmann-Eltze C, Huber W, Anders S. "Deep-learning-based gene perturbation effect prediction
does not yet outperform simple linear baselines." Nature Methods (2025). Their model writes the
pseudobulk changes ``Y`` (G genes × m perturbations) as

    Y ≈ G W Pᵀ + b

with ``G`` ``(G, K)`` a gene embedding from PCA, ``P`` ``(m, K)`` the rows of that embedding
belonging to the perturbed genes, ``W`` ``(K, K)`` fitted by ridge regression and ``b`` the
per-gene mean change. Because ``P`` is looked up in the gene embedding, any gene of the data set
can be predicted, including genes never perturbed in training. The paper uses K = 10, λ = 0.1.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from grndiff.metrics.pca import fit_pca


class LinearPCARidge:
    """``Δ(pert) = G W (p − p̄) + b``: ridge regression between gene and perturbation embeddings.

    Parameters
    ----------
    n_comps
        ``K``, the embedding dimension (paper: 10).
    ridge
        ``λ`` of both ridge solves (paper: 0.1).
    sep
        Separator of combined perturbations: ``"A+B"`` is embedded as ``g_A + g_B`` (an
        extension; the paper treats single genes).
    seed
        Seed of the PCA (randomized SVD on large data).

    Attributes
    ----------
    gene_embedding_
        ``(G, K)``; ``W_`` ``(K, K)``; ``b_`` ``(G,)``; ``p_mean_`` ``(K,)``; ``genes_`` list of G names.

    Notes
    -----
    With ``expression`` given, the gene embedding is the loadings of a centred PCA of the
    training cells, ``components.T · sqrt(explained_variance)`` (so a gene's row scales with how
    much it varies); without it, as in the paper, genes are the observations of a PCA of the
    training change matrix ``Y``. The perturbation embeddings are centred on their training mean
    ``p̄``: then ``b`` (the mean training change) is exactly the least-squares intercept, where
    the paper's uncentred ``P`` leaves a small bias when ``p̄ ≠ 0``.
    """

    def __init__(self, n_comps: int = 10, ridge: float = 0.1, sep: str = "+", seed: int = 0):
        if n_comps < 1 or ridge < 0:
            raise ValueError(f"need n_comps ≥ 1 and ridge ≥ 0, got {n_comps}, {ridge}")
        self.n_comps, self.ridge, self.sep, self.seed = n_comps, ridge, sep, seed

    def fit(self, train_deltas: Mapping[str, np.ndarray], expression=None, genes: Sequence[str] | None = None,
            pert_embedding: pd.DataFrame | None = None) -> LinearPCARidge:
        """Fit ``W`` and ``b`` on training perturbations.

        Parameters
        ----------
        train_deltas
            dict ``perturbation → Δ (G,)``: pseudobulk log expression of the perturbed cells
            minus that of the control cells. Keys are perturbed gene names (or ``"A+B"``).
        expression
            ``(B, G)`` training log expression for the gene embedding; None = PCA of the
            ``Δ`` matrix itself (paper).
        genes
            The ``G`` gene names (column order of ``expression`` and of every ``Δ``).
        pert_embedding
            Optional (genes × K') embedding in which perturbed genes are looked up instead of the
            measured genes' PCA rows — e.g. :func:`graph_gene_embedding` of a prior graph, which
            also embeds genes that are not measured. ``W`` is then (K, K').
        """
        if genes is None:
            raise ValueError("LinearPCARidge.fit needs genes= (the G gene names, e.g. adata.var_names)")
        self.genes_ = list(map(str, genes))
        self._index = pd.Index(self.genes_)
        if not self._index.is_unique:
            raise ValueError("genes contains duplicated names; make var_names unique first")
        names = list(train_deltas)
        if len(names) < 2:
            raise ValueError(f"need at least 2 training perturbations, got {len(names)}")
        Y = np.stack([np.asarray(train_deltas[p], dtype=np.float64) for p in names], axis=1)  # (G, m)
        if Y.shape[0] != len(self.genes_):
            raise ValueError(f"deltas have {Y.shape[0]} genes but genes has {len(self.genes_)} names")

        if expression is not None:
            pca = fit_pca(expression, n=self.n_comps, seed=self.seed)
            if pca.components.shape[1] != len(self.genes_):
                raise ValueError(f"expression has {pca.components.shape[1]} genes, genes has {len(self.genes_)}")
            self.gene_embedding_ = pca.components.T * np.sqrt(pca.explained_variance)  # (G, K)
        else:
            pca = fit_pca(Y, n=self.n_comps, seed=self.seed)  # genes are the observations
            self.gene_embedding_ = pca.transform(Y)  # (G, K) gene scores
        Gm = self.gene_embedding_
        K = Gm.shape[1]
        self.pert_embedding_ = None
        if pert_embedding is not None:
            pe = pd.DataFrame(pert_embedding)
            self.pert_embedding_ = (pe.to_numpy(dtype=np.float64), pd.Index(pe.index.astype(str)))
        P = self.embed(names, centred=False)  # (m, K')
        self.p_mean_ = P.mean(axis=0)
        P = P - self.p_mean_
        self.b_ = Y.mean(axis=1)  # (G,)
        lam_g, lam_p = self.ridge * np.eye(K), self.ridge * np.eye(P.shape[1])
        # W = (GᵀG + λI)⁻¹ Gᵀ (Y − b) P (PᵀP + λI)⁻¹  (both ridge solves of the paper)
        left = np.linalg.solve(Gm.T @ Gm + lam_g, Gm.T @ (Y - self.b_[:, None]) @ P)  # (K, K')
        self.W_ = np.linalg.solve((P.T @ P + lam_p).T, left.T).T  # right-multiply by (PᵀP + λI)⁻¹
        self.train_perturbations_ = names
        return self

    def embed(self, perts: Sequence[str], centred: bool = True) -> np.ndarray:
        """Perturbation embeddings ``(m, K)``: sums of the gene-embedding rows of the perturbed genes."""
        if not hasattr(self, "gene_embedding_"):
            raise RuntimeError("LinearPCARidge is not fitted; call fit() first")
        table, index = ((self.gene_embedding_, self._index) if getattr(self, "pert_embedding_", None) is None
                        else self.pert_embedding_)
        out = np.zeros((len(perts), table.shape[1]))
        for i, p in enumerate(perts):
            parts = [q for q in str(p).split(self.sep) if q and q != "ctrl"]
            idx = index.get_indexer(parts)
            if (idx < 0).any():
                missing = [q for q, j in zip(parts, idx) if j < 0]
                raise KeyError(f"perturbed gene(s) {missing} of {p!r} are not among the {len(index)} "
                               "genes of the perturbation embedding, so they have no embedding")
            out[i] = table[idx].sum(axis=0)
        return out - self.p_mean_ if centred else out

    def predict(self, perts):
        """Predicted changes from control.

        Parameters
        ----------
        perts
            One perturbation name or a sequence of ``m`` names (seen or unseen genes).

        Returns
        -------
        ``(G,)`` for one name, ``(m, G)`` for a sequence; add to the control mean for profiles.
        """
        single = isinstance(perts, str)
        P = self.embed([perts] if single else list(perts))  # (m, K)
        D = P @ self.W_.T @ self.gene_embedding_.T + self.b_  # (m, G)
        return D[0] if single else D


def graph_gene_embedding(prior: pd.DataFrame, dim: int = 10) -> pd.DataFrame:
    """Spectral embedding (genes × ``dim``) of a prior network, for every gene it names.

    The leading non-trivial eigenvectors of the symmetric normalised adjacency
    ``D^{-1/2} |A| D^{-1/2}`` of the undirected graph (edges of ``source → target``, unweighted),
    each standardised over the genes.
    It embeds genes that are not measured as well, so a linear model can look up their
    perturbations (the information a graph model gets from the same prior).

    Parameters
    ----------
    prior
        Long table with ``source`` and ``target`` columns.
    dim
        Embedding width.
    """
    from scipy import sparse
    from scipy.sparse.linalg import eigsh

    genes = pd.Index(sorted(set(prior["source"].astype(str)) | set(prior["target"].astype(str))))
    i, j = genes.get_indexer(prior["source"].astype(str)), genes.get_indexer(prior["target"].astype(str))
    keep = i != j
    n = len(genes)
    A = sparse.coo_matrix((np.ones(int(keep.sum())), (i[keep], j[keep])), shape=(n, n)).tocsr()
    A = ((A + A.T) > 0).astype(np.float64)
    d = np.asarray(A.sum(1)).ravel()
    inv = sparse.diags(1.0 / np.sqrt(np.maximum(d, 1.0)))
    M = inv @ A @ inv
    k = min(dim + 1, n - 2)
    vals, vecs = eigsh(M, k=k, which="LA", v0=np.ones(n) / np.sqrt(n))
    order = np.argsort(-vals)[1:dim + 1]  # drop the leading (degree) eigenvector
    emb = vecs[:, order]
    emb = emb / np.maximum(emb.std(axis=0), 1e-12)  # unit spread per column: the ridge penalty sees every axis alike
    return pd.DataFrame(emb, index=genes, columns=[f"spectral_{c}" for c in range(emb.shape[1])])
