"""Shift baselines for perturbation prediction: no change, mean shift, additive combinations.

Everything is in log1p-normalised expression. A "shift" is a difference of mean profiles,
``Δ = mean(perturbed) − mean(control)`` ``(G,)``; predictions add it to control cells
``(B, G)`` or to a control mean ``(G,)``. Deep perturbation models often fail to beat these
(Ahlmann-Eltze, Huber & Anders 2025, Nat Methods), so every benchmark table carries them.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import sparse


def _array(X, name: str) -> np.ndarray:
    X = X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
    if X.ndim not in (1, 2):
        raise ValueError(f"{name} must be a profile (G,) or cells (B, G), got shape {X.shape}")
    return X.astype(np.float64, copy=False)


def no_change(ctrl):
    """Predict that the perturbation does nothing: the control cells, unchanged (a copy).

    Parameters
    ----------
    ctrl
        Control cells ``(B, G)`` / profile ``(G,)`` as an array, or an AnnData.

    Returns
    -------
    A copy of ``ctrl`` (same type and shape).
    """
    return ctrl.copy() if hasattr(ctrl, "obs") else _array(ctrl, "ctrl").copy()


class MeanShift:
    """Control plus the mean shift observed on *other* groups or perturbations.

    ``fit`` records one shift per (condition, group) pair present in the training data, e.g.
    for Kang with ``condition = group_id`` and ``groups = cluster_id`` the stim − ctrl shift of
    every training cell type; the held-out cell type then gets the average shift of the
    others. For knock-out screens (``groups=None``, ``condition`` = perturbation), the
    prediction for an unseen perturbation is the average shift over all training perturbations.

    Attributes
    ----------
    shifts_
        dict ``(condition, group) → Δ (G,)`` after ``fit`` (``group`` is None without groups).
    """

    def __init__(self):
        self.shifts_: dict = {}

    def fit(self, X, condition, control, groups=None) -> MeanShift:
        """Learn the shifts from training cells.

        Parameters
        ----------
        X
            ``(B, G)`` log expression of the training cells.
        condition
            ``(B,)`` condition / perturbation label of each cell.
        control
            The control label within ``condition`` (e.g. ``"ctrl"``).
        groups
            ``(B,)`` optional group label (cell type); shifts are computed within each group
            that has both control and perturbed cells.
        """
        X = _array(X, "X")
        condition = np.asarray(condition).astype(str)
        groups = np.full(len(X), None, dtype=object) if groups is None else np.asarray(groups).astype(str)
        if not len(condition) == len(groups) == len(X):
            raise ValueError(f"X has {len(X)} cells but condition has {len(condition)} and groups {len(groups)}")
        if str(control) not in set(condition):
            raise ValueError(f"control {control!r} is not among the condition labels {sorted(set(condition))[:10]}")
        self.shifts_ = {}
        for g in pd.unique(groups):
            in_g = groups == g
            is_ctrl = in_g & (condition == str(control))
            if not is_ctrl.any():
                continue
            ctrl_mean = X[is_ctrl].mean(axis=0)
            for c in pd.unique(condition[in_g & ~is_ctrl]):
                self.shifts_[(c, g)] = X[in_g & (condition == c)].mean(axis=0) - ctrl_mean  # (G,)
        if not self.shifts_:
            raise ValueError("no group has both control and perturbed cells: nothing to learn a shift from")
        return self

    def fit_anndata(self, adata, condition_key: str, control, groupby: str | None = None,
                    layer: str | None = None) -> MeanShift:
        """:meth:`fit` on an AnnData: ``obs[condition_key]``, optional ``obs[groupby]``, ``.X`` or ``layer``."""
        for key in [condition_key] + ([groupby] if groupby else []):
            if key not in adata.obs:
                raise KeyError(f"adata.obs has no column {key!r}; available: {list(adata.obs.columns)}")
        X = adata.X if layer is None else adata.layers[layer]
        groups = None if groupby is None else adata.obs[groupby].to_numpy()
        return self.fit(X, adata.obs[condition_key].to_numpy(), control, groups)

    def shift(self, condition=None, exclude_group=None) -> np.ndarray:
        """The mean learnt shift ``(G,)``.

        Parameters
        ----------
        condition
            Average the shifts of this condition only; None = all training conditions (the
            prediction for an unseen perturbation).
        exclude_group
            Leave this group's shifts out (leave-one-group-out when it was in training).
        """
        if not self.shifts_:
            raise RuntimeError("MeanShift is not fitted; call fit() first")
        keys = [k for k in self.shifts_ if (condition is None or k[0] == str(condition))
                and (exclude_group is None or k[1] != str(exclude_group))]
        if not keys:
            seen = sorted({k[0] for k in self.shifts_})
            raise KeyError(f"no training shift for condition={condition!r} outside group {exclude_group!r}; "
                           f"conditions seen in training: {seen[:20]}")
        return np.mean([self.shifts_[k] for k in keys], axis=0)

    def predict(self, ctrl, condition=None, exclude_group=None) -> np.ndarray:
        """``ctrl + shift(condition, exclude_group)``; ``ctrl`` is ``(B, G)`` or ``(G,)``, same shape out."""
        ctrl = _array(ctrl, "ctrl")
        delta = self.shift(condition, exclude_group)
        if ctrl.shape[-1] != delta.shape[0]:
            raise ValueError(f"ctrl has {ctrl.shape[-1]} genes, the shifts {delta.shape[0]}")
        return ctrl + delta


def additive(ctrl_mean, single_shifts: Mapping[str, np.ndarray], combo: str, sep: str = "+") -> np.ndarray:
    """Predict a combination as the sum of its single shifts: ``ctrl + Δ_A + Δ_B`` for ``"A+B"``.

    Parameters
    ----------
    ctrl_mean
        Control mean ``(G,)`` or control cells ``(B, G)``.
    single_shifts
        dict ``perturbation → Δ (G,)`` of single perturbations vs control.
    combo
        Combination name, parts joined by ``sep`` (``"KLF1+CEBPA"``); ``"ctrl"`` parts are ignored.
    sep
        Separator of the parts.

    Returns
    -------
    Same shape as ``ctrl_mean``.
    """
    ctrl = _array(ctrl_mean, "ctrl_mean")
    parts = [p for p in str(combo).split(sep) if p and p != "ctrl"]
    missing = [p for p in parts if p not in single_shifts]
    if missing:
        raise KeyError(f"no single-perturbation shift for {missing} (needed by {combo!r}); "
                       f"known: {sorted(single_shifts)[:20]}")
    delta = np.zeros(ctrl.shape[-1])
    for p in parts:
        d = np.asarray(single_shifts[p], dtype=np.float64)
        if d.shape != delta.shape:
            raise ValueError(f"shift of {p!r} has shape {d.shape}, expected ({ctrl.shape[-1]},)")
        delta += d
    return ctrl + delta
