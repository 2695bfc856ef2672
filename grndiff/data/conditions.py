"""Condition encoders: ``obs`` labels → integer / float codes for :mod:`grndiff.nn`.

=============== =============================== ====================================================
encoder         codes                           null / empty
=============== =============================== ====================================================
categorical     (N,) int64, categories 1..K     0 = null token (classifier-free guidance, "any")
continuous      (N,) float32, standardised      NaN = null (only through ``ConditionSet.encode_dict``)
set             (N, S) int64, components 1..K   0 = padding; the control label = the empty set
hierarchical    (N, L) int64, one per level     0 per level
perturbation    (N, S) int64 gene indices       -1 = padding; control = no perturbed gene
=============== =============================== ====================================================

Every encoder has ``fit(values)``, ``encode(values)``, ``decode(codes)``, ``spec()`` (a plain dict
for :mod:`grndiff.nn`) and ``to_state()`` / ``from_state(state)`` (plain types). Sets are
order-invariant: components are sorted by code, so ``"A+B"`` and ``"B+A"`` give the same row.
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger("grndiff")


class UnknownConditionError(ValueError):
    """A label (or condition name) that the fitted encoders have never seen."""


def _labels(values) -> np.ndarray:
    """Values → 1-D object array of str; NaN/None become None (so they can be reported)."""
    if isinstance(values, (pd.Series, pd.Index)):
        arr = values.to_numpy(dtype=object)
    else:
        arr = np.asarray(values, dtype=object)
    s = pd.Series(arr.reshape(-1))
    out = s.astype(str).to_numpy(dtype=object)
    out[s.isna().to_numpy()] = None
    return out


def _per_unique(labels: np.ndarray, fn) -> tuple[list, np.ndarray]:
    """Apply ``fn`` once per distinct label: (results per distinct label, (N,) index into them)."""
    codes, uniques = pd.factorize(pd.Series(labels, dtype=object), use_na_sentinel=False)
    return [fn(None if u is None or (isinstance(u, float) and np.isnan(u)) else u) for u in uniques], codes


def _refuse_missing(name: str, labels: np.ndarray, control: str) -> np.ndarray:
    """Labels unchanged, or a clear error when some are NaN/None (they would silently mean "control")."""
    n_nan = sum(v is None for v in labels)
    if n_nan:
        raise ValueError(f"obs[{name!r}]: {n_nan} of {len(labels)} cells have no value (NaN/None). Label them "
                         f"({control!r} means none) or remove them: adata = adata[adata.obs[{name!r}].notna()].copy()")
    return labels


def _listing(values: Sequence, n: int = 20) -> str:
    values = list(values)
    more = f" … and {len(values) - n} more" if len(values) > n else ""
    return ", ".join(repr(v) for v in values[:n]) + more


def _unknown(name: str, bad: Sequence, known: Sequence) -> UnknownConditionError:
    close = [m for b in bad[:3] for m in difflib.get_close_matches(str(b), [str(k) for k in known], n=1)]
    hint = f" Did you mean {_listing(close)}?" if close else ""
    return UnknownConditionError(
        f"condition {name!r}: unknown value(s) {_listing(bad, 5)}.{hint} Known values: {_listing(known)}. The model "
        f"knows only values seen in training; leave {name!r} out to sample without it (null token).")


class CategoricalEncoder:
    """One label per cell → (N,) int64; 0 is the null token, categories are 1..K.

    Categories keep a pandas ``Categorical``'s order (observed ones only), else are sorted.
    """

    kind = "categorical"

    def __init__(self, name: str, categories: Sequence[str] | None = None):
        self.name = name
        self.categories = None if categories is None else [str(c) for c in categories]

    def fit(self, values) -> "CategoricalEncoder":
        labels = _labels(values)
        if any(v is None for v in labels):
            raise ValueError(f"obs[{self.name!r}]: {sum(v is None for v in labels)} cells have no value (NaN)")
        if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
            seen = set(labels.tolist())
            self.categories = [str(c) for c in values.cat.categories if str(c) in seen]
        else:
            self.categories = sorted(set(labels.tolist()))
        return self

    @property
    def n_categories(self) -> int:
        return len(self.categories)

    def encode(self, values) -> np.ndarray:
        """Labels (N,) → codes (N,) int64 in 1..K; unknown label → :class:`UnknownConditionError`."""
        labels = _labels(values)
        codes = pd.Categorical(labels, categories=self.categories).codes.astype(np.int64) + 1  # unknown/NaN → 0
        codes[codes == 0] = -1
        if (codes < 0).any():
            bad = list(dict.fromkeys(labels[codes < 0]))
            raise _unknown(self.name, ["NaN" if b is None else b for b in bad], self.categories)
        return codes

    def decode(self, codes) -> np.ndarray:
        """Codes (N,) → labels (N,) object; 0 → None."""
        lookup = np.array([None] + list(self.categories), dtype=object)
        return lookup[np.asarray(codes, dtype=np.int64)]

    def spec(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_categories": self.n_categories}

    def to_state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "categories": list(self.categories)}

    @classmethod
    def from_state(cls, state: dict) -> "CategoricalEncoder":
        return cls(state["name"], state["categories"])


class ContinuousEncoder:
    """A number per cell → (N,) float32 ``(v - mean) / std``; NaN is refused."""

    kind = "continuous"

    def __init__(self, name: str, mean: float = 0.0, std: float = 1.0):
        self.name, self.mean, self.std = name, float(mean), float(std)

    def _numbers(self, values) -> np.ndarray:
        try:
            v = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise TypeError(f"condition {self.name!r} is continuous: expected numbers, got {values!r}") from e
        bad = ~np.isfinite(v)
        if bad.any():
            raise ValueError(f"condition {self.name!r}: {int(bad.sum())} of {v.size} values are NaN or infinite; "
                             "remove those cells or fill the value (e.g. dose 0 for untreated cells)")
        return v

    def fit(self, values) -> "ContinuousEncoder":
        v = self._numbers(values)
        self.mean = float(v.mean())
        sd = float(v.std())
        self.std = sd if sd > 1e-8 else 1.0  # a constant column encodes as 0, never inf
        return self

    def encode(self, values) -> np.ndarray:
        return ((self._numbers(values) - self.mean) / self.std).astype(np.float32)

    def decode(self, codes) -> np.ndarray:
        return np.asarray(codes, dtype=np.float64) * self.std + self.mean

    def spec(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_categories": 0}

    def to_state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, state: dict) -> "ContinuousEncoder":
        return cls(state["name"], state["mean"], state["std"])


def split_combo(label: str | None, control: str, combo_sep: str) -> list[str]:
    """``"B+A"`` → ``["A", "B"]`` (sorted, unique); the control label (alone or as a component,
    as in ``"KLF1+ctrl"``) contributes nothing; ``None`` → ``[]``."""
    if label is None or label == control:
        return []
    parts = {p.strip() for p in str(label).split(combo_sep)}
    return sorted(p for p in parts if p and p != control)


def _pad(rows: list[list[int]], fill: int) -> np.ndarray:
    width = max([1] + [len(r) for r in rows])
    out = np.full((len(rows), width), fill, dtype=np.int64)  # (N, S)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


class SetEncoder:
    """Sets of components joined by ``combo_sep`` → (N, S) int64, components 1..K, 0-padded."""

    kind = "set"

    def __init__(self, name: str, control: str = "control", combo_sep: str = "+",
                 categories: Sequence[str] | None = None):
        self.name, self.control, self.combo_sep = name, str(control), combo_sep
        self.categories = None if categories is None else [str(c) for c in categories]

    def fit(self, values) -> "SetEncoder":
        labels = _refuse_missing(self.name, _labels(values), self.control)
        parts, _ = _per_unique(labels, lambda v: split_combo(v, self.control, self.combo_sep))
        self.categories = sorted({c for ps in parts for c in ps})
        return self

    @property
    def n_categories(self) -> int:
        return len(self.categories)

    def encode(self, values) -> np.ndarray:
        """Labels (N,) → (N, S) int64, each row sorted ascending then 0-padded (S ≥ 1)."""
        index = {c: i + 1 for i, c in enumerate(self.categories)}
        labels = _refuse_missing(self.name, _labels(values), self.control)
        parts, codes = _per_unique(labels, lambda v: split_combo(v, self.control, self.combo_sep))
        bad = [p for ps in parts for p in ps if p not in index]
        if bad:
            raise _unknown(self.name, list(dict.fromkeys(bad)), self.categories)
        return _pad([sorted(index[p] for p in ps) for ps in parts], 0)[codes]  # (N, S)

    def decode(self, codes) -> np.ndarray:
        """(N, S) codes → labels joined by ``combo_sep`` (empty set → the control label)."""
        codes = np.atleast_2d(np.asarray(codes, dtype=np.int64))
        return np.array([self.combo_sep.join(self.categories[c - 1] for c in row if c > 0) or self.control
                         for row in codes], dtype=object)

    def spec(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_categories": self.n_categories}

    def to_state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "control": self.control, "combo_sep": self.combo_sep,
                "categories": list(self.categories)}

    @classmethod
    def from_state(cls, state: dict) -> "SetEncoder":
        return cls(state["name"], state["control"], state["combo_sep"], state["categories"])


class HierarchicalEncoder:
    """Ordered levels (coarse → fine), one :class:`CategoricalEncoder` each → (N, L) int64.

    ``values`` is a DataFrame with the level columns or an (N, L) array of labels. The encoder's
    name is the level keys joined by ``>`` (``"tissue>cell_type"``).
    """

    kind = "hierarchical"

    def __init__(self, levels: Sequence[str], encoders: Sequence[CategoricalEncoder] | None = None):
        self.levels = [str(k) for k in levels]
        if not self.levels:
            raise ValueError("a hierarchy needs at least one obs key, e.g. ['tissue', 'cell_type']")
        self.name = ">".join(self.levels)
        self.encoders = list(encoders) if encoders is not None else [CategoricalEncoder(k) for k in self.levels]

    def _columns(self, values) -> list:
        if isinstance(values, pd.DataFrame):
            missing = [k for k in self.levels if k not in values.columns]
            if missing:
                raise KeyError(f"hierarchy {self.name!r}: obs columns {missing} are missing")
            return [values[k] for k in self.levels]
        arr = np.asarray(values, dtype=object)
        arr = arr.reshape(1, -1) if arr.ndim == 1 else arr
        if arr.shape[1] != len(self.levels):
            raise ValueError(f"hierarchy {self.name!r} has {len(self.levels)} levels, got values of shape {arr.shape}")
        return [arr[:, i] for i in range(arr.shape[1])]

    def fit(self, values) -> "HierarchicalEncoder":
        for enc, col in zip(self.encoders, self._columns(values)):
            enc.fit(col)
        return self

    def encode(self, values) -> np.ndarray:
        """(N, L) int64; column ``l`` holds level ``l``'s code (1..K_l)."""
        return np.stack([enc.encode(col) for enc, col in zip(self.encoders, self._columns(values))], axis=1)

    def decode(self, codes) -> np.ndarray:
        codes = np.atleast_2d(np.asarray(codes, dtype=np.int64))
        return np.stack([enc.decode(codes[:, i]) for i, enc in enumerate(self.encoders)], axis=1)  # (N, L)

    def spec(self) -> dict:
        per_level = [e.n_categories for e in self.encoders]
        return {"name": self.name, "kind": self.kind, "n_categories": int(sum(per_level)),
                "n_levels": len(self.levels), "levels_n_categories": per_level}

    def to_state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "levels": list(self.levels),
                "encoders": [e.to_state() for e in self.encoders]}

    @classmethod
    def from_state(cls, state: dict) -> "HierarchicalEncoder":
        return cls(state["levels"], [CategoricalEncoder.from_state(s) for s in state["encoders"]])


class PerturbationEncoder:
    """Gene perturbations → (N, S) int64 indices into ``genes``, -1 padded, sorted per row.

    Parameters
    ----------
    genes
        Gene names in model order (``var_names``, or symbols from ``var[symbol_key]``).
    control, combo_sep
        The "no perturbation" label and the separator of combinations (``"KLF1+CEBPA"``).
    allow_missing
        Drop perturbed genes absent from ``genes`` with a warning instead of raising.
    """

    kind = "perturbation"

    def __init__(self, genes: Sequence[str], control: str = "control", combo_sep: str = "+",
                 allow_missing: bool = False, name: str = "perturbation", seen: Sequence[str] | None = None):
        self.genes = [str(g) for g in genes]
        self.control, self.combo_sep, self.allow_missing, self.name = str(control), combo_sep, allow_missing, name
        self.seen = [] if seen is None else [str(s) for s in seen]  # perturbed genes present in training
        self._index: dict[str, int] = {}
        for i, g in enumerate(self.genes):  # duplicated symbols: the first gene wins
            self._index.setdefault(g, i)

    def _rows(self, values) -> tuple[np.ndarray, list[str]]:
        """(N, S) gene indices (-1 padded) and the perturbed genes not in ``genes``."""
        labels = _refuse_missing(self.name, _labels(values), self.control)
        parts, codes = _per_unique(labels, lambda v: split_combo(v, self.control, self.combo_sep))
        missing = [p for ps in parts for p in ps if p not in self._index]
        rows = [sorted(self._index[p] for p in ps if p in self._index) for ps in parts]
        return _pad(rows, -1)[codes], list(dict.fromkeys(missing))

    def _missing(self, missing: list[str]) -> None:
        if not missing:
            return
        lower = {g.lower(): g for g in self.genes}
        case = [f"{m}→{lower[m.lower()]}" for m in missing if m.lower() in lower]
        hint = f" Case differs for {_listing(case, 5)}." if case else ""
        if not self.allow_missing:
            raise ValueError(
                f"obs[{self.name!r}]: {len(missing)} perturbed genes are not among the model's genes: "
                f"{_listing(missing)}.{hint} A node intervention needs the gene in the graph. Keep those genes in "
                "the AnnData (do not filter them out), pass symbol_key= if var_names are Ensembl ids, or pass "
                "allow_missing_genes=True to setup_anndata to drop them (those cells then look unperturbed).")
        log.warning("grndiff: dropping %d perturbed genes absent from the model's genes: %s", len(missing),
                    _listing(missing))

    def fit(self, values) -> "PerturbationEncoder":
        rows, missing = self._rows(values)
        self._missing(missing)
        self.seen = [self.genes[i] for i in np.unique(rows[rows >= 0])]
        return self

    def encode(self, values) -> np.ndarray:
        """Labels (N,) → (N, S) int64 gene indices, -1 padded (S ≥ 1; control rows are all -1)."""
        rows, missing = self._rows(values)
        self._missing(missing)
        return rows

    def decode(self, codes) -> np.ndarray:
        codes = np.atleast_2d(np.asarray(codes, dtype=np.int64))
        return np.array([self.combo_sep.join(self.genes[c] for c in row if c >= 0) or self.control for row in codes],
                        dtype=object)

    def spec(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_categories": len(self.genes)}

    def to_state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "genes": list(self.genes), "control": self.control,
                "combo_sep": self.combo_sep, "allow_missing": bool(self.allow_missing), "seen": list(self.seen)}

    @classmethod
    def from_state(cls, state: dict) -> "PerturbationEncoder":
        return cls(state["genes"], state["control"], state["combo_sep"], state["allow_missing"], state["name"],
                   state.get("seen"))


ENCODERS = {c.kind: c for c in (CategoricalEncoder, ContinuousEncoder, SetEncoder, HierarchicalEncoder,
                                PerturbationEncoder)}
