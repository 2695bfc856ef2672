"""``ConditionSet``: every condition registered by ``setup_anndata``, encoded together.

Training cells are encoded from ``obs`` (:meth:`ConditionSet.encode`); cells to generate are
encoded from a ``{key: value}`` dict (:meth:`ConditionSet.encode_dict`), where a key left out
means "unconditional on that key" (its null token).
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .conditions import (
    ENCODERS,
    CategoricalEncoder,
    ContinuousEncoder,
    HierarchicalEncoder,
    SetEncoder,
    UnknownConditionError,
    warn,
)
from .perturbation import PerturbationEncoder, with_kind

if TYPE_CHECKING:  # torch is imported where it is used (request); annotations are strings here
    import torch


class ConditionSet:
    """The condition encoders of one model (and the gene-perturbation encoder, if any).

    Parameters
    ----------
    encoders
        Categorical, continuous, set and hierarchical encoders → ``cond`` entries.
    perturbation
        Gene perturbations → ``pert`` (kept apart from ``cond``: they act on graph nodes).
    """

    def __init__(self, encoders: Sequence = (), perturbation: PerturbationEncoder | None = None):
        self.encoders = list(encoders)
        self.perturbation = perturbation
        names = [e.name for e in self.encoders]
        if len(set(names)) != len(names):
            raise ValueError(f"condition names must be unique, got {names}")

    @classmethod
    def from_setup(cls, setup: dict, genes: Sequence[str] | None = None) -> ConditionSet:
        """Unfitted encoders for the fields of a :func:`~grndiff.data.get_setup` record.

        ``genes`` (G,) are the names perturbations are matched against (required with a
        ``perturbation_key``).
        """
        ctrl, sep = setup.get("control", "control"), setup.get("combo_sep", "+")
        encs: list = [CategoricalEncoder(k) for k in setup.get("condition_keys", [])]
        encs += [ContinuousEncoder(k) for k in setup.get("continuous_keys", [])]
        encs += [SetEncoder(k, ctrl, sep) for k in setup.get("set_keys", [])]
        if setup.get("hierarchy"):
            encs.append(HierarchicalEncoder(setup["hierarchy"]))
        encs += [ENCODERS[kind](k) for k, kind in (setup.get("condition_kinds") or {}).items()]
        pert = None
        if setup.get("perturbation_key"):
            if genes is None:
                raise ValueError("a perturbation_key needs the gene names to match perturbations against")
            pert = PerturbationEncoder(genes, ctrl, sep, bool(setup.get("allow_missing_genes", False)),
                                       name=setup["perturbation_key"],
                                       default_kind=setup.get("perturbation_type", "ko"))
        return cls(encs, pert)

    # ---------------------------------------------------------------- names
    @property
    def keys(self) -> list[str]:
        """Every ``obs`` column read (hierarchy levels one by one, the perturbation key last)."""
        out = []
        for e in self.encoders:
            out += e.levels if isinstance(e, HierarchicalEncoder) else [e.name]
        return out + ([self.perturbation.name] if self.perturbation is not None else [])

    @property
    def names(self) -> list[str]:
        """The ``cond`` dict keys (a hierarchy is one entry named ``"coarse>fine"``)."""
        return [e.name for e in self.encoders]

    def specs(self) -> list[dict]:
        """Plain dicts ``{"name", "kind", "n_categories"}`` (+ levels for hierarchies) for :mod:`grndiff.nn`."""
        return [e.spec() for e in self.encoders]

    # -------------------------------------------------------------- fit/encode
    def _column(self, obs: pd.DataFrame, key: str):
        if key not in obs.columns:
            raise KeyError(f"adata.obs has no column {key!r}, which the model was trained with; add it (every "
                           f"registered key: {self.keys})")
        return obs[key]

    def _values(self, enc, obs: pd.DataFrame):
        if isinstance(enc, HierarchicalEncoder):
            return pd.DataFrame({k: self._column(obs, k) for k in enc.levels})
        return self._column(obs, enc.name)

    def fit(self, obs: pd.DataFrame) -> ConditionSet:
        """Fit every encoder on the training cells' ``obs`` (N rows)."""
        for e in self.encoders:
            e.fit(self._values(e, obs))
        if self.perturbation is not None:
            self.perturbation.fit(self._column(obs, self.perturbation.name))
        return self

    def encode(self, obs: pd.DataFrame) -> dict[str, np.ndarray]:
        """``obs`` (N rows) → ``{name: codes}``: (N,) int64 / float32, or (N, S) / (N, L) int64."""
        return {e.name: e.encode(self._values(e, obs)) for e in self.encoders}

    def encode_perturbation(self, obs: pd.DataFrame) -> np.ndarray | None:
        """``obs`` (N rows) → (N, S) int64 gene indices (-1 padded), or ``None`` without perturbations."""
        if self.perturbation is None:
            return None
        return self.perturbation.encode(self._column(obs, self.perturbation.name))

    def request(self, conditions, n: int) -> tuple[dict, torch.Tensor | None, pd.DataFrame]:
        """:meth:`encode_dict` for a generation request, as tensors, with the obs to report.

        ``conditions`` is a ``{key: value}`` dict (scalars broadcast to ``n``) or a DataFrame of
        ``n`` rows. Returns ``cond`` ``{name: (n,...) tensor}``, ``pert`` (n, S) or ``None``, ``obs``.
        """
        import torch

        conditions = {} if conditions is None else conditions
        if isinstance(conditions, pd.DataFrame):
            if len(conditions) != n:
                raise ValueError(f"conditions has {len(conditions)} rows but n_cells={n}")
            conditions = {k: conditions[k].to_numpy() for k in conditions.columns}
        cond, pert = self.encode_dict(conditions, n)
        # a key set to None is unconditional (null token): a missing value in obs, never the string 'None'
        obs = pd.DataFrame({k: (np.repeat(v, n) if np.ndim(v) == 0 else np.asarray(v)) if v is not None else
                            pd.Series([np.nan] * n, dtype=object) for k, v in conditions.items()})
        return ({k: torch.as_tensor(v) for k, v in cond.items()}, None if pert is None else torch.as_tensor(pert), obs)

    def warn_unseen(self, obs: pd.DataFrame, unseen) -> None:
        """Warn (once per combination) when cells were requested for a combination of categorical
        conditions that no training cell had: ``unseen`` (n,) bool, from the source."""
        unseen = np.asarray(unseen, dtype=bool)
        if not unseen.any():
            return
        keys = [k for k in self.keys if k in obs.columns and isinstance(self._encoder(k), CategoricalEncoder)]
        combos = sorted({", ".join(f"{k}='{obs[k].iloc[i]}'" for k in keys) for i in np.flatnonzero(unseen)})
        warn(f"{int(unseen.sum())} cells requested for condition combinations never seen in training "
             f"({'; '.join(combos[:5])}{' …' if len(combos) > 5 else ''}): their x₀ is drawn from the source "
             "pooled over all training cells, so they drift toward the average cell (e.g. unstimulated). Train with "
             "cells of these combinations, or predict them from control cells with model.predict(ctrl, "
             "conditions) and source='shifted_control'.")

    def _encoder(self, key: str):
        return next((e for e in self.encoders if e.name == key), None)

    def encode_dict(self, conditions: dict | None, n: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Conditions for ``n`` cells to generate.

        Parameters
        ----------
        conditions
            ``{obs key: value}`` — one value for all cells or a sequence of ``n`` values, e.g.
            ``{"cell_type": "B cells", "condition": "stim"}``. Hierarchy levels are given by their
            own keys. A key left out (or set to ``None``) is unconditional: null token 0
            (categorical, set, each hierarchy level), NaN (continuous); a left-out perturbation
            key means control.
        n
            Number of cells.

        Returns
        -------
        cond, pert
            ``{name: (n,) or (n, S) array}`` and the (n, S) int64 gene indices (``None`` when the
            model has no perturbation key).
        """
        conditions = dict(conditions or {})
        kind = conditions.pop("kind", None) if self.perturbation is not None and "kind" not in self.keys else None
        unknown = [k for k in conditions if k not in self.keys]
        if unknown:
            close = [m for k in unknown for m in difflib.get_close_matches(k, self.keys, n=1)]
            hint = f" Did you mean {close}?" if close else ""
            raise UnknownConditionError(f"unknown condition key(s) {unknown}.{hint} This model was trained with "
                                        f"{self.keys or 'no conditions'}.")
        given = {k: _broadcast(k, v, n) for k, v in conditions.items() if v is not None}
        cond = {}
        for e in self.encoders:
            if isinstance(e, HierarchicalEncoder):
                cond[e.name] = np.stack([lvl.encode(given[k]) if k in given else np.zeros(n, np.int64)
                                         for k, lvl in zip(e.levels, e.encoders)], axis=1)  # (n, L)
            elif e.name not in given:
                cond[e.name] = _null(e, n)
            else:
                cond[e.name] = e.encode(given[e.name])
        pert = None
        if self.perturbation is not None:
            p = self.perturbation.name
            if kind is not None and p not in given:
                raise UnknownConditionError(f"'kind' says how the genes of {p!r} are perturbed, but {p!r} is not "
                                            f"given; e.g. {{{p!r}: 'KLF1', 'kind': 'activation'}}")
            if p in given and kind is not None:  # {"perturbation": "KLF1", "kind": "activation"}
                given[p] = with_kind(given[p], _broadcast("kind", kind, n), self.perturbation.combo_sep,
                                     self.perturbation.control)
            pert = self.perturbation.encode(given[p]) if p in given else np.full((n, 1), -1, dtype=np.int64)
        return cond, pert

    # ----------------------------------------------------------------- state
    def to_state(self) -> dict:
        return {"encoders": [e.to_state() for e in self.encoders],
                "perturbation": None if self.perturbation is None else self.perturbation.to_state()}

    @classmethod
    def from_state(cls, state: dict) -> ConditionSet:
        encs = [ENCODERS[s["kind"]].from_state(s) for s in state.get("encoders", [])]
        p = state.get("perturbation")
        return cls(encs, None if p is None else PerturbationEncoder.from_state(p))

    def __repr__(self) -> str:
        parts = [f"{e.name}:{e.kind}" for e in self.encoders]
        if self.perturbation is not None:
            parts.append(f"{self.perturbation.name}:perturbation")
        return f"ConditionSet({', '.join(parts)})"


def _broadcast(key: str, value, n: int) -> np.ndarray:
    if isinstance(value, str) or np.ndim(value) == 0:
        return np.array([value] * n, dtype=object)
    arr = np.asarray(value.to_numpy() if isinstance(value, (pd.Series, pd.Index)) else list(value), dtype=object)
    if arr.shape[0] != n:
        raise ValueError(f"condition {key!r} has {arr.shape[0]} values for {n} cells; give one value or {n}")
    return arr


def _null(enc, n: int) -> np.ndarray:
    if hasattr(enc, "null"):  # a registered kind says what "unconditional" is
        return enc.null(n)
    if isinstance(enc, ContinuousEncoder):
        return np.full(n, np.nan, dtype=np.float32)  # grndiff.nn reads NaN as the continuous null
    if isinstance(enc, SetEncoder):
        return np.zeros((n, 1), dtype=np.int64)  # the empty set
    return np.zeros(n, dtype=np.int64)
