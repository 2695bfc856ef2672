"""Gene perturbations and their kinds: ``obs`` labels → (N, S) int64 codes for :mod:`grndiff.nn`.

A label names the perturbed genes of a cell, joined by ``combo_sep`` (``"KLF1+CEBPA"``); the
control label (alone or as a component) means none. A gene may carry its kind after a colon,
``"KLF1:up"`` or ``"KLF1:crispra"``; without one it has the data set's default kind
(``setup_anndata(perturbation_type=...)``). A cell's code for gene ``g`` (in model order) under
kind ``k`` (index into :attr:`PerturbationEncoder.kinds`, 0 = the default kind) is ``g + G · k``;
rows are sorted and ``-1`` padded. A model trained on one kind sees plain gene indices (k = 0),
exactly as before kinds existed.

==========  =========================================================
kind        also written
==========  =========================================================
``ko``      knockout
``kd``      knockdown, down
``crispri`` inhibition, interference
``crispra`` activation, up
``oe``      overexpression
==========  =========================================================
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .conditions import UnknownConditionError, _labels, _listing, _pad, _per_unique, _refuse_missing, split_combo

log = logging.getLogger("grndiff")

PERTURBATION_KINDS = ("ko", "kd", "crispri", "crispra", "oe")
KIND_ALIASES = {"knockout": "ko", "knockdown": "kd", "down": "kd", "inhibition": "crispri", "interference": "crispri",
                "activation": "crispra", "up": "crispra", "overexpression": "oe", **{k: k for k in PERTURBATION_KINDS}}


def canonical_kind(word) -> str | None:
    """``"activation"`` → ``"crispra"`` (table in the module docstring); ``None`` for other words."""
    return KIND_ALIASES.get(str(word).strip().lower()) if word is not None else None


def with_kind(labels, kind, combo_sep: str = "+", control: str = "control") -> np.ndarray:
    """Give every gene of ``labels`` (N,) without a kind the ``kind`` (one, or one per cell):
    ``"KLF1+CEBPA:kd"`` with ``"activation"`` → ``"KLF1:activation+CEBPA:kd"``."""
    labels = _labels(labels)
    kinds = np.broadcast_to(np.asarray(kind, dtype=object), labels.shape)
    out = []
    for label, k in zip(labels, kinds):
        parts = split_combo(label, control, combo_sep)
        if canonical_kind(k) is None:
            raise UnknownConditionError(f"perturbation kind {k!r} is not one of {sorted(KIND_ALIASES)}")
        out.append(combo_sep.join(p if _split(p)[1] else f"{p}:{k}" for p in parts) or label)
    return np.array(out, dtype=object)


def perturbed_genes(adata, setup: dict | None = None) -> list[str]:
    """The genes perturbed in ``adata`` (kinds stripped), in order of first appearance.

    Parameters
    ----------
    adata
        Registered with ``setup_anndata(perturbation_key=...)`` (or give ``setup``).
    setup
        A :func:`~grndiff.data.get_setup` record; read from ``adata`` when ``None``.

    Returns
    -------
    list of str
        Every gene named in ``obs[perturbation_key]`` (``"KLF1:up+CEBPA"`` → ``KLF1``, ``CEBPA``);
        empty without a perturbation key.
    """
    if setup is None:
        from .setup import get_setup
        setup = get_setup(adata)
    key = setup.get("perturbation_key")
    if not key:
        return []
    control, sep = str(setup.get("control", "control")), setup.get("combo_sep", "+")
    labels = _refuse_missing(key, _labels(adata.obs[key]), control)
    parts, _ = _per_unique(labels, lambda v: split_combo(v, control, sep))
    return list(dict.fromkeys(_split(p)[0] for ps in parts for p in ps))


def _split(part: str) -> tuple[str, str | None]:
    """``"KLF1:up"`` → ``("KLF1", "crispra")``; ``"KLF1"`` → ``("KLF1", None)``."""
    gene, sep, word = part.rpartition(":")
    kind = canonical_kind(word) if sep else None
    return (gene, kind) if kind else (part, None)


class PerturbationEncoder:
    """Gene perturbations → (N, S) int64 codes ``gene + G · kind``, -1 padded, sorted per row.

    Parameters
    ----------
    genes
        Node names in model order: the measured genes (``var_names``, or symbols from
        ``var[symbol_key]``), then the graph's latent genes (unmeasured prior genes), so a
        perturbation of a latent gene is a code ``≥ G``.
    control, combo_sep
        The "no perturbation" label and the separator of combinations (``"KLF1+CEBPA"``).
    allow_missing
        Drop perturbed genes absent from ``genes`` with a warning instead of raising.
    name
        The ``obs`` column.
    seen
        Perturbed genes present in training (set by :meth:`fit`).
    kinds
        The kinds, default kind first (set by :meth:`fit`: the default plus every kind written in
        the training labels).
    default_kind
        Kind of a gene written without one.
    """

    kind = "perturbation"

    def __init__(self, genes: Sequence[str], control: str = "control", combo_sep: str = "+",
                 allow_missing: bool = False, name: str = "perturbation", seen: Sequence[str] | None = None,
                 kinds: Sequence[str] | None = None, default_kind: str = "ko"):
        self.genes = [str(g) for g in genes]
        self.control, self.combo_sep, self.allow_missing, self.name = str(control), combo_sep, allow_missing, name
        self.seen = [] if seen is None else [str(s) for s in seen]
        self.default_kind = canonical_kind(default_kind) or "ko"
        self.kinds = [self.default_kind] if not kinds else [str(k) for k in kinds]
        self._index: dict[str, int] = {}
        for i, g in enumerate(self.genes):  # duplicated symbols: the first gene wins
            self._index.setdefault(g, i)

    @property
    def n_kinds(self) -> int:
        return len(self.kinds)

    def _parts(self, values) -> tuple[list[list[tuple[str, str]]], np.ndarray]:
        labels = _refuse_missing(self.name, _labels(values), self.control)
        parts, codes = _per_unique(labels, lambda v: split_combo(v, self.control, self.combo_sep))
        return [[(g, k or self.default_kind) for g, k in map(_split, ps)] for ps in parts], codes

    def _rows(self, parts, codes) -> tuple[np.ndarray, list[str]]:
        """(N, S) codes (-1 padded) and the perturbed genes not in ``genes``."""
        unknown = sorted({k for ps in parts for _, k in ps if k not in self.kinds})
        if unknown:
            raise UnknownConditionError(
                f"obs[{self.name!r}]: perturbation kind(s) {unknown} never occur in training (kinds: {self.kinds}); "
                "the model has not learned what they do. Use one of those kinds, or train with cells of these kinds.")
        G = len(self.genes)
        missing = [g for ps in parts for g, _ in ps if g not in self._index]
        rows = [sorted(self._index[g] + G * self.kinds.index(k) for g, k in ps if g in self._index) for ps in parts]
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
                f"{_listing(missing)}.{hint} A node intervention needs the gene in the graph: a measured gene, or an "
                "unmeasured prior gene that the model made a latent node because it was perturbed when the model "
                "was built (GRNDiff(adata, ...) with those cells, or graph_kwargs={'perturbed': [...]}). Keep "
                "measured genes in the AnnData (do not filter them out), pass symbol_key= if var_names are Ensembl "
                "ids, or pass allow_missing_genes=True to setup_anndata to drop them (those cells then look "
                f"unperturbed). A kind after a colon must be one of {sorted(KIND_ALIASES)}.")
        log.warning("grndiff: dropping %d perturbed genes absent from the model's genes: %s", len(missing),
                    _listing(missing))

    def fit(self, values) -> PerturbationEncoder:
        parts, codes = self._parts(values)
        written = {k for ps in parts for _, k in ps} - {self.default_kind}
        self.kinds = [self.default_kind] + sorted(written)
        rows, missing = self._rows(parts, codes)
        self._missing(missing)
        self.seen = [self.genes[i] for i in np.unique(rows[rows >= 0] % len(self.genes))]
        return self

    def encode(self, values) -> np.ndarray:
        """Labels (N,) → (N, S) int64 codes ``gene + G · kind``, -1 padded (S ≥ 1; control rows are all -1)."""
        rows, missing = self._rows(*self._parts(values))
        self._missing(missing)
        return rows

    def decode(self, codes) -> np.ndarray:
        """(N, S) codes → labels; a gene of a kind other than the default is written ``"KLF1:crispra"``."""
        codes, G = np.atleast_2d(np.asarray(codes, dtype=np.int64)), len(self.genes)

        def name(c: int) -> str:
            return self.genes[c % G] if c < G else f"{self.genes[c % G]}:{self.kinds[c // G]}"
        return np.array([self.combo_sep.join(name(c) for c in row if c >= 0) or self.control for row in codes],
                        dtype=object)

    def spec(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_categories": len(self.genes), "n_kinds": self.n_kinds}

    def to_state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "genes": list(self.genes), "control": self.control,
                "combo_sep": self.combo_sep, "allow_missing": bool(self.allow_missing), "seen": list(self.seen),
                "kinds": list(self.kinds), "default_kind": self.default_kind}

    @classmethod
    def from_state(cls, state: dict) -> PerturbationEncoder:
        return cls(state["genes"], state["control"], state["combo_sep"], state["allow_missing"], state["name"],
                   state.get("seen"), state.get("kinds"), state.get("default_kind", "ko"))
