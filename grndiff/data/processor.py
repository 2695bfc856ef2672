"""``ExpressionProcessor``: fitted once on the training AnnData, it turns any AnnData with the same
genes into :class:`CellData` (log1p CSR + condition codes) and holds the per-gene scaler.

The processor, not the AnnData, remembers the layer, its value kind (counts or log) and the genes: a model applied to
new cells (``model.predict(ctrl)``) needs no ``setup_anndata`` on them, only the same layer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .backed import fit_scaler, streams
from .condition_set import ConditionSet
from .normalize import (
    LOG_MAX,
    MIN_STD,
    GeneScaler,
    check_values,
    counts_from_log1p,
    detect_kind,
    estimate_library_sizes,
    log1p_cp10k,
)
from .setup import get_setup, upgrade_setup

log = logging.getLogger("grndiff")


@dataclass
class CellData:
    """What the data loaders need, aligned to the processor's genes.

    Attributes
    ----------
    X
        (N, G) float32 CSR, log1p-normalised (unscaled; the scaler is applied per batch).
    cond
        ``{name: codes}``: (N,) int64 / float32, or (N, S) / (N, L) int64.
    pert
        (N, S) int64 perturbed-gene indices, -1 padded; ``None`` without a perturbation key.
    obs_names
        (N,) cell names.
    """

    X: sp.csr_matrix
    cond: dict
    pert: np.ndarray | None
    obs_names: np.ndarray

    @property
    def n_obs(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_vars(self) -> int:
        return int(self.X.shape[1])


class ExpressionProcessor:
    """Layer choice, CP10k + log1p, per-gene scaling and condition encoders.

    Parameters
    ----------
    min_std
        Floor of the per-gene std, in log1p units (see :class:`~grndiff.data.GeneScaler`).
    target_sum
        Library size after normalisation of raw counts (1e4 = CP10k).
    """

    def __init__(self, min_std: float = MIN_STD, target_sum: float = 1e4):
        self.min_std, self.target_sum = float(min_std), float(target_sum)
        self.genes: list[str] | None = None
        self.layer: str | None = None
        self.value_kind: str | None = None
        self.scaler: GeneScaler | None = None
        self.conditions: ConditionSet | None = None
        self.setup: dict | None = None

    # ------------------------------------------------------------------ fit
    def fit(self, adata, latent_genes=()) -> ExpressionProcessor:
        """Fit on a registered AnnData (:func:`~grndiff.data.setup_anndata`). Returns ``self``.

        ``latent_genes`` (L names): the gene graph's latent nodes (``GeneGraph.latent_genes``),
        appended to the genes perturbations are matched against (codes ``G .. G+L-1``); they have
        no expression column.
        """
        setup = get_setup(adata)
        self.setup, self.layer, self.value_kind = setup, setup["layer"], setup["value_kind"]
        self.genes = [str(g) for g in adata.var_names]
        field = self._field()
        if self.value_kind is None:  # a record without the detected kind: detect it now
            X = adata.X if self.layer is None else adata.layers[self.layer]
            self.value_kind = detect_kind(X, field=field)
        log.info("grndiff: expression from %s: %s", field,
                 "raw counts → CP10k + log1p" if self.value_kind == "counts"
                 else "already log1p-normalised, used as is")
        if streams(adata, self.layer):  # a backed AnnData: X stays on disk, the statistics are streamed
            self.scaler = fit_scaler(self, adata)
        else:
            self.scaler = GeneScaler(min_std=self.min_std).fit(self.log_expression(adata))  # (N, G) CSR
        sym = setup.get("symbol_key")
        pert_genes = adata.var[sym].astype(str).tolist() if sym else self.genes
        pert_genes = list(pert_genes) + [str(g) for g in latent_genes]
        self.conditions = ConditionSet.from_setup(setup, pert_genes).fit(adata.obs)
        return self

    def _field(self) -> str:
        return "adata.X" if self.layer is None else f"adata.layers[{self.layer!r}]"

    def _check_fitted(self):
        if self.genes is None:
            raise RuntimeError("ExpressionProcessor is not fitted; call .fit(adata) first")

    @property
    def has_gene_perturbations(self) -> bool:
        self._check_fitted()
        return self.conditions.perturbation is not None

    # ------------------------------------------------------------ transform
    def check_genes(self, adata) -> np.ndarray | None:
        """Compare ``adata.var_names`` with the fitted genes.

        Returns
        -------
        ``None`` when identical, else the (G,) column order that puts ``adata``'s genes in the
        processor's order (same set, other order).

        Raises
        ------
        ValueError
            Genes missing from, or extra in, ``adata``.
        """
        self._check_fitted()
        names = [str(g) for g in adata.var_names]
        if names == self.genes:
            return None
        have, want = set(names), set(self.genes)
        missing = [g for g in self.genes if g not in have]
        extra = [g for g in names if g not in want]
        if missing or extra:
            msg = [f"adata.var_names differ from the {len(self.genes)} genes the model was fitted on:"]
            if missing:
                msg.append(f"{len(missing)} missing (e.g. {missing[:5]})")
            if extra:
                msg.append(f"{len(extra)} extra (e.g. {extra[:5]})")
            fix = ("Subset to the model's genes: adata = adata[:, model.var_names].copy()" if not missing else
                   "The model needs every gene it was trained on; use an AnnData with those genes, or retrain")
            raise ValueError(" ".join(msg) + f". {fix}.")
        if len(names) != len(self.genes):
            raise ValueError("adata.var_names has duplicated genes; run adata.var_names_make_unique()")
        pos = {g: i for i, g in enumerate(names)}
        log.info("grndiff: adata's genes are in a different order; reordering to the model's order")
        return np.array([pos[g] for g in self.genes], dtype=np.int64)

    def log_expression(self, adata) -> sp.csr_matrix:
        """(N, G) float32 CSR log1p values of the fitted layer, in the fitted gene order."""
        self._check_fitted()
        order = self.check_genes(adata)
        if self.layer is not None and self.layer not in adata.layers:
            raise KeyError(f"the model reads {self._field()}, but this AnnData has no layer {self.layer!r} "
                           f"(layers: {list(adata.layers.keys())}); add it")
        if getattr(adata, "isbacked", False) and self.layer is None:
            raise ValueError("these cells are a backed AnnData (X on disk), and this step needs them in memory; "
                             "load the ones you need: adata[idx].to_memory()")
        X = adata.X if self.layer is None else adata.layers[self.layer]
        if X is None:
            raise ValueError("adata.X is empty (None); the model reads adata.X")
        vmax, n_frac = check_values(X, field=self._field())
        if self.value_kind == "log" and vmax > LOG_MAX:
            raise ValueError(f"the model was fitted on log1p values in {self._field()}, but this AnnData's "
                             f"{self._field()} reaches {vmax:g} (> {LOG_MAX:g}): raw counts? Log-normalise them "
                             "the same way (sc.pp.normalize_total(target_sum=1e4); sc.pp.log1p)")
        if self.value_kind == "counts":
            if n_frac:
                raise ValueError(f"the model was fitted on raw counts in {self._field()}, but this AnnData's "
                                 f"{self._field()} has {n_frac:,} non-integer values; pass raw counts")
            total = np.asarray(X.sum(axis=1)).ravel()  # (N,)
            empty = np.flatnonzero(total <= 0)
            if empty.size:  # CP10k divides by the library size: undefined for a cell without counts
                names = [str(adata.obs_names[i]) for i in empty[:5]]
                raise ValueError(f"{self._field()} has {empty.size:,} cells with no counts at all (e.g. {names}); "
                                 "library-size normalisation is undefined for them. Remove them first: "
                                 "sc.pp.filter_cells(adata, min_counts=1), or "
                                 f"adata = adata[np.asarray({self._field()}.sum(1)).ravel() > 0].copy()")
            X = log1p_cp10k(X, self.target_sum)
        X = sp.csr_matrix(X, dtype=np.float32)
        if order is not None:
            X = X[:, order].tocsr()
        return X

    def prepare(self, adata) -> CellData:
        """Log1p expression, condition codes and perturbations of ``adata`` → :class:`CellData`."""
        X = self.log_expression(adata)
        cond = self.conditions.encode(adata.obs)
        pert = self.conditions.encode_perturbation(adata.obs)
        return CellData(X=X, cond=cond, pert=pert, obs_names=np.asarray(adata.obs_names, dtype=object))

    def scaled_dense(self, adata) -> np.ndarray:
        """(N, G) float32: the cells in the flow's scaled space (dense; for prediction batches)."""
        return np.asarray(self.scaler.transform(self.log_expression(adata)), dtype=np.float32)

    def control_mask(self, adata) -> np.ndarray | None:
        """(N,) bool: control cells, from ``control_obs`` or the perturbation key's control label;
        ``None`` when setup named neither."""
        self._check_fitted()
        s = self.setup
        if s.get("control_obs"):
            mask = np.ones(adata.n_obs, dtype=bool)
            for k, vals in s["control_obs"].items():
                if k not in adata.obs.columns:
                    raise KeyError(f"control_obs: adata.obs has no column {k!r}")
                mask &= adata.obs[k].astype(str).isin(vals).to_numpy()
            return mask
        if s.get("perturbation_key"):
            return self.conditions.encode_perturbation(adata.obs).max(axis=1) < 0  # no perturbed gene
        return None

    # ----------------------------------------------------------------- state
    def to_anndata(self, x_scaled: np.ndarray, obs, uns: dict, *, clip: bool = True, library_size=None,
                   seed: int = 0, count_model: str = "nearest", library_quantiles=None):
        """Cells in the scaled space (B, G) → an AnnData of log1p-normalised values (clipped at 0
        when ``clip``), ``obs`` categoricals, ``uns["grndiff"] = uns``, and, with ``library_size``
        (a number or (B,) one per cell) or ``library_quantiles`` (the training depths: each cell's
        own is estimated, :func:`~grndiff.data.normalize.estimate_library_sizes`),
        ``layers["counts"]`` at that depth (:func:`~grndiff.data.normalize.counts_from_log1p`
        with ``count_model``)."""
        import anndata as ad
        import pandas as pd

        X = self.scaler.inverse(np.asarray(x_scaled)).astype(np.float32)
        if clip:
            X = np.clip(X, 0.0, None)  # log1p-normalised values are ≥ 0
        obs = obs.copy()
        if obs.index.dtype != object or not len(obs.index) or obs.index[0] == 0:
            obs.index = [f"gen-{i}" for i in range(X.shape[0])]
        for k in obs.columns:
            if obs[k].dtype == object:  # missing (an unconditional key) stays missing, not the string 'None'
                obs[k] = pd.Categorical(obs[k].astype(str).where(obs[k].notna()))
        out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(list(self.genes), dtype=str)))
        out.uns["grndiff"] = uns
        if library_size is None and library_quantiles is not None:
            library_size = estimate_library_sizes(X, library_quantiles, target_sum=self.target_sum,
                                                  rng=np.random.default_rng([seed, 1]))
        if library_size is not None:
            out.layers["counts"] = counts_from_log1p(X, library_size, model=count_model, target_sum=self.target_sum,
                                                     rng=np.random.default_rng(seed))
        return out

    def to_state(self) -> dict:
        """Plain types and tensors only: loadable with ``torch.load(weights_only=True)``."""
        self._check_fitted()
        return {"min_std": self.min_std, "target_sum": self.target_sum, "genes": list(self.genes),
                "layer": self.layer, "value_kind": self.value_kind, "setup": dict(self.setup),
                "scaler": self.scaler.to_state(), "conditions": self.conditions.to_state()}

    @classmethod
    def from_state(cls, state: dict) -> ExpressionProcessor:
        self = cls(state.get("min_std", MIN_STD), state.get("target_sum", 1e4))
        self.genes, self.layer = list(state["genes"]), state["layer"]
        self.value_kind = state.get("value_kind", state.get("kind"))  # "kind": saved before the rename
        self.setup = upgrade_setup(state.get("setup") or {})  # a model saved before the renames too
        self.scaler = GeneScaler.from_state(state["scaler"])
        self.conditions = ConditionSet.from_state(state["conditions"])
        return self

    def __repr__(self) -> str:
        if self.genes is None:
            return "ExpressionProcessor(unfitted)"
        return (f"ExpressionProcessor(genes={len(self.genes)}, {self._field()}: {self.value_kind}, "
                f"conditions={self.conditions!r})")
