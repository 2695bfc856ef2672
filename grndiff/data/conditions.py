"""Condition encoders: ``obs`` labels → integer / float codes for :mod:`grndiff.nn`.

=============== =============================== ====================================================
encoder         codes                           null / empty
=============== =============================== ====================================================
categorical     (N,) int64, categories 1..K     0 = null token (classifier-free guidance, "any")
continuous      (N,) float32, standardised      NaN = null (only through ``ConditionSet.encode_dict``)
set             (N, S) int64, components 1..K   0 = padding; the control label = the empty set
hierarchical    (N, L) int64, one per level     0 per level
perturbation    (N, S) int64 gene + G · kind    -1 = padding; control = no perturbed gene
=============== =============================== ====================================================

(:class:`~grndiff.data.perturbation.PerturbationEncoder` lives in its own module.)

Every encoder has ``fit(values)``, ``encode(values)``, ``decode(codes)``, ``spec()`` (a plain dict
for :mod:`grndiff.nn`) and ``to_state()`` / ``from_state(state)`` (plain types). Sets are
order-invariant: components are sorted by code, so ``"A+B"`` and ``"B+A"`` give the same row.
"""
from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger("grndiff")


class UnknownConditionError(ValueError):
    """A label (or condition name) that the fitted encoders have never seen."""


class GRNDiffWarning(UserWarning):
    """grndiff did something the user may not expect (a fallback, an extrapolation, a lossy input);
    the message names the fix. Each message is shown once per session."""


_WARNED: set[str] = set()  # messages already shown (Python's own registry is reset whenever any library
# touches the warning filters, so "once" would not hold across calls)


def warn(message: str) -> None:
    """Issue a :class:`GRNDiffWarning` once, pointing at the user's call, not at grndiff's internals."""
    import sys
    if message in _WARNED:
        return
    _WARNED.add(message)
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("grndiff."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, GRNDiffWarning, stacklevel=level)


def warn_case_only_matches(graph, organism: str | None = None) -> None:
    """Warn when prior names matched the genes only up to case (``GATA1`` ↔ ``Gata1``): right for
    symbols written differently, wrong when the prior is of another organism (human prior, mouse
    genes); :meth:`GeneGraph.summary` alone was too quiet for that."""
    c = getattr(graph, "coverage", None) or {}
    n = int(c.get("n_case_only_matches") or 0)
    if not n:
        return
    ex = list(getattr(graph, "case_only_examples", None) or [])
    warn(f"{n:,} prior gene names matched your genes only up to case (e.g. {ex}): the gene names are written "
         "differently from the prior's. If your data are from "
         "another organism (mouse symbols such as 'Gata1' against a human prior), pass organism='mouse' or a prior "
         "of that organism; to match names exactly, pass graph_kwargs={'case_insensitive': False}.")


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

    def fit(self, values) -> CategoricalEncoder:
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
    def from_state(cls, state: dict) -> CategoricalEncoder:
        return cls(state["name"], state["categories"])


class ContinuousEncoder:
    """A number per cell → (N,) float32 ``(v - mean) / std``; NaN is refused; a value far outside
    the training range [lo, hi] (beyond it by more than its width) is encoded with a warning."""

    kind = "continuous"

    def __init__(self, name: str, mean: float = 0.0, std: float = 1.0, lo: float | None = None,
                 hi: float | None = None):
        self.name, self.mean, self.std = name, float(mean), float(std)
        self.lo, self.hi = lo, hi  # the training range (None: a state saved before it was recorded)

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

    def fit(self, values) -> ContinuousEncoder:
        v = self._numbers(values)
        self.mean = float(v.mean())
        sd = float(v.std())
        self.std = sd if sd > 1e-8 else 1.0  # a constant column encodes as 0, never inf
        self.lo, self.hi = float(v.min()), float(v.max())
        return self

    def encode(self, values) -> np.ndarray:
        v = self._numbers(values)
        if self.lo is not None and v.size:
            width = max(self.hi - self.lo, abs(self.hi), 1e-8)
            far = (v < self.lo - width) | (v > self.hi + width)
            if far.any():
                warn(f"condition {self.name!r}: {_listing(np.unique(v[far]).tolist(), 5)} lie far outside the "
                     f"training range [{self.lo:g}, {self.hi:g}]; the model extrapolates and the result is not "
                     f"backed by data. Use values of {self.name!r} within (or near) the training range.")
        return ((v - self.mean) / self.std).astype(np.float32)

    def decode(self, codes) -> np.ndarray:
        return np.asarray(codes, dtype=np.float64) * self.std + self.mean

    def spec(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_categories": 0}

    def to_state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "mean": self.mean, "std": self.std, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_state(cls, state: dict) -> ContinuousEncoder:
        return cls(state["name"], state["mean"], state["std"], state.get("lo"), state.get("hi"))


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

    def fit(self, values) -> SetEncoder:
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
    def from_state(cls, state: dict) -> SetEncoder:
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

    def fit(self, values) -> HierarchicalEncoder:
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
    def from_state(cls, state: dict) -> HierarchicalEncoder:
        return cls(state["levels"], [CategoricalEncoder.from_state(s) for s in state["encoders"]])


ENCODERS = {c.kind: c for c in (CategoricalEncoder, ContinuousEncoder, SetEncoder, HierarchicalEncoder)}


def register_condition_kind(encoder_cls):
    """Register an encoder class for a new condition kind (its ``kind`` attribute names it); usable
    as a decorator. Register the model side with :func:`grndiff.nn.register_condition_embedder`.

    The encoder's contract (see :class:`CategoricalEncoder`): ``__init__(name)``, ``fit(values)``,
    ``encode(values) -> ndarray`` (N,) or (N, ...) codes, ``spec() -> {"name", "kind",
    "n_categories", ...}``, ``to_state()`` / ``from_state(state)`` (plain types), optionally
    ``null(n) -> ndarray``, the codes of "unconditional" (default: zeros). Columns are assigned a
    kind with ``setup_anndata(condition_kinds={"obs key": kind})``.
    """
    for attr in ("kind", "fit", "encode", "spec", "to_state", "from_state"):
        if not hasattr(encoder_cls, attr):
            raise TypeError(f"{encoder_cls.__name__} is not a condition encoder: it has no {attr!r}")
    ENCODERS[encoder_cls.kind] = encoder_cls
    return encoder_cls
