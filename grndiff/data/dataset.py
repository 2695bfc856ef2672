"""Batches for the flow: ``CellDataset`` (sparse rows, densified and scaled per batch),
``CellBatchSampler`` (seeded shuffling, whole batches of indices) and ``ControlPairing``
(a random control cell of the same group as each target, for ``source="control"``).

A batch is the dict of ``docs/architecture.md``::

    {"x":    (B, G) float32   scaled expression of the target cells (the flow's x₁),
     "cond": {name: (B,) int64 | (B,) float32 | (B, S) int64 | (B, L) int64},
     "pert": (B, S) int64     perturbed-gene indices, -1 padded          (only with a perturbation key),
     "x0":   (B, G) float32   scaled expression of paired control cells  (only for source="control")}

The fast path slices the CSR matrix once with all ``B`` row indices and densifies that block
(``dataset[BatchIndex(...)]``, used by :class:`~grndiff.data.GRNDataModule`); the per-cell path
(``dataset[i]`` + :meth:`CellDataset.collate`) exists for generic ``DataLoader`` use.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from .normalize import GeneScaler
from .processor import CellData


class BatchIndex(NamedTuple):
    """Row indices of one batch: targets (B,) and their paired sources (B,) or ``None``."""

    target: np.ndarray
    source: np.ndarray | None = None


class CellDataset(Dataset):
    """Cells of a :class:`~grndiff.data.CellData`, scaled by a fitted :class:`~grndiff.data.GeneScaler`.

    Parameters
    ----------
    cell_data
        Log1p expression (N, G) CSR, condition codes and perturbations.
    scaler
        Per-gene scaling applied to each densified batch.
    source_indices
        Optional (N,) fixed pairing: cell ``i`` gets ``x0`` = scaled row ``source_indices[i]``.
    """

    def __init__(self, cell_data: CellData, scaler: GeneScaler, source_indices=None):
        if scaler.n_genes != cell_data.n_vars:
            raise ValueError(f"the scaler was fitted on {scaler.n_genes} genes but the cells have {cell_data.n_vars}")
        self.data, self.scaler = cell_data, scaler
        self.source_indices = None if source_indices is None else np.asarray(source_indices, dtype=np.int64)
        if self.source_indices is not None and self.source_indices.shape != (cell_data.n_obs,):
            raise ValueError(f"source_indices must have one entry per cell ({cell_data.n_obs},), "
                             f"got {self.source_indices.shape}")

    def __len__(self) -> int:
        return self.data.n_obs

    def _rows(self, idx: np.ndarray) -> torch.Tensor:
        block = self.data.X[idx].toarray()  # one CSR slice for the whole batch → (B, G)
        return torch.from_numpy(np.ascontiguousarray(self.scaler.transform(block), dtype=np.float32))

    def batch(self, target, source=None) -> dict:
        """The batch dict (module docstring) for row indices ``target`` (B,), paired with ``source``
        (B,) (or the fixed ``source_indices``) when given."""
        idx = np.asarray(target, dtype=np.int64)
        out = {"x": self._rows(idx),
               "cond": {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in self.data.cond.items()}}
        if self.data.pert is not None:
            out["pert"] = torch.from_numpy(np.ascontiguousarray(self.data.pert[idx]))
        if source is None and self.source_indices is not None:
            source = self.source_indices[idx]
        if source is not None:
            out["x0"] = self._rows(np.asarray(source, dtype=np.int64))
        return out

    def __getitem__(self, key):
        if isinstance(key, BatchIndex):
            return self.batch(key.target, key.source)
        b = self.batch(np.array([int(key)]))  # one cell: the batch of size 1, squeezed
        return {k: ({n: t[0] for n, t in v.items()} if k == "cond" else v[0]) for k, v in b.items()}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        """Stack per-cell dicts (``dataset[i]``) into the batch dict."""
        out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "cond"}
        out["cond"] = {n: torch.stack([it["cond"][n] for it in items]) for n in items[0]["cond"]}
        return out


def match_groups(obs: pd.DataFrame, match_keys: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """(N,) int group code of each cell over ``match_keys`` (all 0 when none) and the group labels."""
    if not match_keys:
        return np.zeros(len(obs), dtype=np.int64), ["all cells"]
    missing = [k for k in match_keys if k not in obs.columns]
    if missing:
        raise KeyError(f"match_keys {missing} are not columns of adata.obs (columns: {list(obs.columns)})")
    label = obs[match_keys[0]].astype(str).to_numpy(dtype=object)
    for k in match_keys[1:]:
        label = label + " | " + obs[k].astype(str).to_numpy(dtype=object)
    codes, uniques = pd.factorize(label, sort=True)
    return codes.astype(np.int64), [str(u) for u in uniques]


class ControlPairing:
    """Draws, for each target cell, a uniformly random control cell from the same match group.

    Parameters
    ----------
    groups
        (N,) int group code per cell (:func:`match_groups`).
    control_mask
        (N,) bool, True for control cells.
    pool
        Row indices allowed as sources (e.g. the training split); default all cells.
    group_names, match_keys
        For error messages.
    """

    def __init__(self, groups: np.ndarray, control_mask: np.ndarray, pool=None, group_names=None, match_keys=None):
        self.groups = np.asarray(groups, dtype=np.int64)
        mask = np.asarray(control_mask, dtype=bool)
        if mask.shape != self.groups.shape:
            raise ValueError(f"control mask has shape {mask.shape}, expected one value per cell {self.groups.shape}")
        allowed = np.zeros_like(mask)
        allowed[np.arange(mask.size) if pool is None else np.asarray(pool, dtype=np.int64)] = True
        ctrl = np.flatnonzero(mask & allowed)
        if ctrl.size == 0:
            raise ValueError("source='control' needs control cells, but none are available (in the training split). "
                             "Check setup_anndata(control=...) / control_obs={'condition': 'ctrl'}.")
        order = np.argsort(self.groups[ctrl], kind="stable")
        self.controls = ctrl[order]  # control rows sorted by group
        n_groups = int(self.groups.max()) + 1
        self.count = np.bincount(self.groups[self.controls], minlength=n_groups)  # controls per group
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.group_names, self.match_keys = group_names, match_keys

    def check(self, targets) -> None:
        """Raise when some target's group has no control cell."""
        g = self.groups[np.asarray(targets, dtype=np.int64)]
        empty = np.unique(g[self.count[g] == 0])
        if empty.size:
            names = [self.group_names[i] if self.group_names else str(i) for i in empty[:5]]
            n = int(np.isin(g, empty).sum())
            raise ValueError(f"source='control' pairs each cell with a control cell of the same {self.match_keys}, but "
                             f"groups {names} ({n} cells) have no control cells. Drop those keys from match_keys, or "
                             "remove those cells.")

    def draw(self, targets, rng: np.random.Generator) -> np.ndarray:
        """(B,) target rows → (B,) control rows of the same groups."""
        g = self.groups[np.asarray(targets, dtype=np.int64)]
        offset = (rng.random(g.size) * self.count[g]).astype(np.int64)
        return self.controls[self.start[g] + np.minimum(offset, self.count[g] - 1)]


class CellBatchSampler(Sampler):
    """Yields :class:`BatchIndex` batches of ``indices``: seeded, reshuffled every epoch.

    The permutation and the control pairing of epoch ``e`` come from
    ``numpy.random.default_rng([seed, e])``; the epoch advances after each pass or is set by
    Lightning through :meth:`set_epoch`. Without shuffling the order and pairing are fixed.
    """

    def __init__(self, indices, batch_size: int, *, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 pairing: ControlPairing | None = None):
        self.indices = np.asarray(indices, dtype=np.int64)
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.batch_size, self.shuffle, self.drop_last, self.seed = int(batch_size), shuffle, drop_last, int(seed)
        self.pairing, self.epoch = pairing, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, b = self.indices.size, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0])
        if self.shuffle:
            self.epoch += 1
        idx = rng.permutation(self.indices) if self.shuffle else self.indices
        for s in range(0, len(self) * self.batch_size, self.batch_size):
            t = idx[s:s + self.batch_size]
            yield BatchIndex(t, None if self.pairing is None else self.pairing.draw(t, rng))
