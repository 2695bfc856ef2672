"""``GRNDataModule`` (Lightning) and the seeded, stratified, hold-out-aware ``split_indices``."""
from __future__ import annotations

import logging
import warnings

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from .dataset import CellBatchSampler, CellDataset, ControlPairing, match_groups
from .normalize import GeneScaler
from .processor import CellData

log = logging.getLogger("grndiff")

def holdout_mask(obs: pd.DataFrame, holdout: dict | None) -> np.ndarray:
    """(N,) bool: cells in the held-out groups.

    ``holdout = {obs key: [values]}``; a cell is held out when, for EVERY key, its value is one of
    the listed ones — ``{"cell_type": ["B cells"], "condition": ["stim"]}`` holds out stimulated
    B cells only.
    """
    mask = np.zeros(len(obs), dtype=bool)
    if not holdout:
        return mask
    mask[:] = True
    for key, values in holdout.items():
        if key not in obs.columns:
            raise KeyError(f"holdout: {key!r} is not a column of adata.obs (columns: {list(obs.columns)})")
        values = [str(v) for v in ([values] if isinstance(values, str) or np.ndim(values) == 0 else values)]
        col = obs[key].astype(str)
        absent = [v for v in values if not (col == v).any()]
        if absent:
            raise ValueError(f"holdout: adata.obs[{key!r}] has no cells labelled {absent}; its values are "
                             f"{sorted(col.unique())[:20]}")
        mask &= col.isin(values).to_numpy()
    return mask


def split_indices(obs: pd.DataFrame, *, val_fraction: float = 0.1, seed: int = 0, stratify_key: str | None = None,
                  holdout: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / validation split of the cells of ``obs``.

    Parameters
    ----------
    obs
        ``adata.obs`` (N rows).
    val_fraction
        Fraction of cells (of each group, when stratified) put in validation, in [0, 1).
    seed
        Same seed, same split.
    stratify_key
        ``obs`` column whose groups keep their proportions in both parts (each group contributes
        ``round(val_fraction · n_group)`` cells).
    holdout
        Groups removed from both parts (:func:`holdout_mask`).

    Returns
    -------
    train, val
        Sorted int64 row indices; a benchmark's 80/20 split is ``val_fraction=0.2``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keep = np.flatnonzero(~holdout_mask(obs, holdout))
    rng = np.random.default_rng(seed)
    if stratify_key is None:
        groups = [keep]
    else:
        if stratify_key not in obs.columns:
            raise KeyError(f"stratify_key={stratify_key!r} is not a column of adata.obs (columns: {list(obs.columns)})")
        labels = obs[stratify_key].astype(str).to_numpy()[keep]
        codes, _ = pd.factorize(labels, sort=True)
        groups = [keep[codes == c] for c in range(codes.max() + 1)] if keep.size else []
    val = []
    for members in groups:
        n_val = int(np.floor(val_fraction * members.size + 0.5))
        val.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(keep, val)
    return train.astype(np.int64), val.astype(np.int64)


class GRNDataModule(L.LightningDataModule):
    """Train / validation loaders over prepared cells.

    Parameters
    ----------
    cell_data
        From :meth:`ExpressionProcessor.prepare` (N cells).
    scaler
        The processor's fitted :class:`~grndiff.data.GeneScaler`.
    obs
        ``adata.obs`` of the same N cells (splits, matching, control selection).
    batch_size, val_fraction, split_seed, stratify_key, holdout
        See :func:`split_indices`; ``split_seed`` also seeds the per-epoch shuffling and pairing.
        Held-out cells are in :attr:`holdout_indices`, in neither loader.
    with_controls
        ``False``: batches carry no ``x0``; ``True``: each cell gets ``x0``, a random control cell of
        the same ``match_keys`` group, drawn afresh every epoch from the training split's control
        cells, also for validation batches (what a source with ``needs_control`` trains on).
        ``source="control"`` / ``"noise"`` / ``"gaussian"`` (the old spelling) still works, with a
        ``FutureWarning``.
    match_keys
        ``obs`` columns a control must share with its target, e.g. ``["cell_type"]``.
    control_mask, control_obs
        (N,) bool control cells, or ``{obs key: value(s)}`` selecting them; by default, cells
        without a perturbed gene (``cell_data.pert``).
    num_workers, drop_last
        ``DataLoader`` options; the last short training batch is dropped unless the training
        split is smaller than one batch.
    """

    def __init__(self, cell_data: CellData, scaler: GeneScaler, obs: pd.DataFrame, *, batch_size: int = 128,
                 val_fraction: float = 0.1, split_seed: int = 0, stratify_key: str | None = None,
                 holdout: dict[str, list] | None = None, with_controls: bool = False,
                 match_keys: list[str] | None = None, control_mask=None, control_obs: dict | None = None,
                 num_workers: int = 0, drop_last: bool = True, source: str | None = None):
        super().__init__()
        if len(obs) != cell_data.n_obs:
            raise ValueError(f"obs has {len(obs)} rows but cell_data has {cell_data.n_obs} cells; pass the obs of "
                             "the same AnnData that was prepared")
        if source is not None:  # the old spelling: the data layer does not know the flow's source names
            if source not in ("noise", "control", "gaussian"):
                raise ValueError(f"source must be 'noise', 'control' or 'gaussian', got {source!r}; pass "
                                 "with_controls=True/False instead")
            warnings.warn("GRNDataModule(source=...) is deprecated: pass with_controls=True (paired control "
                          "cells) or False", FutureWarning, stacklevel=2)
            with_controls = source == "control"
        self.cell_data, self.scaler, self.obs = cell_data, scaler, obs
        self.batch_size, self.split_seed = int(batch_size), int(split_seed)
        self.with_controls = bool(with_controls)
        self.num_workers, self.drop_last = int(num_workers), bool(drop_last)
        self.match_keys = [match_keys] if isinstance(match_keys, str) else list(match_keys or [])
        self.train_indices, self.val_indices = split_indices(obs, val_fraction=val_fraction, seed=split_seed,
                                                             stratify_key=stratify_key, holdout=holdout)
        self.holdout_indices = np.flatnonzero(holdout_mask(obs, holdout)).astype(np.int64)
        if self.train_indices.size == 0:
            raise ValueError("no training cells left after the validation split and holdout")
        self.pairing = None
        if self.with_controls:
            self.pairing = self._pairing(control_mask, control_obs)
        self.dataset = CellDataset(cell_data, scaler)
        log.info("grndiff: %d training, %d validation, %d held-out cells", self.train_indices.size,
                 self.val_indices.size, self.holdout_indices.size)

    def _pairing(self, control_mask, control_obs) -> ControlPairing:
        if control_mask is None and control_obs:
            control_mask = np.ones(len(self.obs), dtype=bool)
            for k, v in control_obs.items():
                if k not in self.obs.columns:
                    raise KeyError(f"control_obs: {k!r} is not a column of adata.obs")
                vals = [str(x) for x in ([v] if isinstance(v, str) or np.ndim(v) == 0 else v)]
                control_mask &= self.obs[k].astype(str).isin(vals).to_numpy()
        if control_mask is None and self.cell_data.pert is not None:
            control_mask = (self.cell_data.pert < 0).all(axis=1)  # no perturbed gene
        if control_mask is None:
            raise ValueError("with_controls=True needs to know the control cells: register a perturbation_key, or "
                             "pass control_obs={'condition': 'ctrl'} (setup_anndata or the data module)")
        groups, names = match_groups(self.obs, self.match_keys)
        pairing = ControlPairing(groups, control_mask, pool=self.train_indices, group_names=names,
                                 match_keys=self.match_keys)
        pairing.check(self.train_indices)
        pairing.check(self.val_indices)
        return pairing

    def setup(self, stage: str | None = None) -> None:  # everything is built in __init__
        pass

    def _loader(self, indices: np.ndarray, train: bool) -> DataLoader:
        drop = train and self.drop_last and indices.size >= self.batch_size
        sampler = CellBatchSampler(indices, self.batch_size, shuffle=train, drop_last=drop, seed=self.split_seed,
                                   pairing=self.pairing)
        # batch_size=None: each sampler item is a whole BatchIndex, built by one CSR slice
        # own generator: creating an iterator draws a worker base seed, which would otherwise consume
        # the global RNG between steps (a resumed run would then draw other noise than the original)
        gen = torch.Generator().manual_seed(self.split_seed)
        return DataLoader(self.dataset, sampler=sampler, batch_size=None, collate_fn=_as_is,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0, generator=gen)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_indices, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_indices.size == 0:
            return []  # Lightning skips validation
        return self._loader(self.val_indices, train=False)


def _as_is(batch):  # module-level: picklable for worker processes
    return batch
