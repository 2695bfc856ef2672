"""Register an AnnData's fields once: ``setup_anndata`` validates them and writes a plain-dict
record into ``adata.uns["_grndiff"]``; ``get_setup`` reads it back.

Nothing else in the AnnData is touched: no layer is added, no column converted, ``X`` stays as it
is. Everything derived (normalised matrix, condition codes) is computed later, on demand, by
:class:`~grndiff.data.ExpressionProcessor`.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .backed import detect_kind_streamed
from .conditions import ENCODERS, warn
from .normalize import KINDS, detect_kind
from .perturbation import KIND_ALIASES, PERTURBATION_KINDS, canonical_kind

log = logging.getLogger("grndiff")

UNS_KEY = "_grndiff"
SETUP_VERSION = 1


def setup_anndata(adata, *, layer: str | None = None, condition_keys: Sequence[str] | None = None,
                  continuous_keys: Sequence[str] | None = None, set_keys: Sequence[str] | None = None,
                  hierarchy: Sequence[str] | None = None, perturbation_key: str | None = None,
                  control: str = "control", perturbation_type: str = "ko", combo_sep: str = "+",
                  symbol_key: str | None = None, value_kind: str | None = None,
                  control_obs: dict[str, Any] | None = None, allow_missing_genes: bool = False,
                  condition_kinds: dict[str, str] | None = None, kind: str | None = None,
                  perturbation_kind: str | None = None) -> None:
    """Validate and register the fields of ``adata`` that grndiff will use.

    Parameters
    ----------
    adata
        Cells × genes (N, G). Only ``adata.uns["_grndiff"]`` is written.
    layer
        Expression layer (``adata.layers[layer]``); ``None`` uses ``adata.X``. Raw counts or
        log1p-normalised values (detected, see :func:`~grndiff.data.detect_kind`; or declared with
        ``value_kind``).
    condition_keys
        Categorical ``obs`` columns (cell type, stimulation, donor...).
    continuous_keys
        Numeric ``obs`` columns (dose, age...), standardised.
    set_keys
        ``obs`` columns whose values are sets joined by ``combo_sep`` (drugs, non-gene
        perturbations: ``"dex+nutlin"``); the ``control`` label is the empty set.
    hierarchy
        Ordered ``obs`` keys, coarse → fine (``["tissue", "cell_type"]``), encoded together.
    perturbation_key
        ``obs`` column of gene perturbations (``"KLF1"``, ``"KLF1+CEBPA"``; ``control`` = none).
        Genes are matched to ``var_names`` (or to ``var[symbol_key]``); a gene that is not
        measured may still be any gene of the model's prior: the model makes it a latent node
        (see :class:`~grndiff.GRNDiff`). A gene in neither is an error when the model is built.
    control
        Label meaning "no perturbation" in ``perturbation_key`` and ``set_keys``.
    perturbation_type
        ``"ko"``, ``"kd"``, ``"crispri"``, ``"crispra"`` or ``"oe"`` (aliases such as
        ``"activation"``/``"up"``: :mod:`grndiff.data.perturbation`): the type of a gene written
        without one in ``perturbation_key``. A label may give each gene its own type
        (``"KLF1:up+CEBPA"``), and ``sample``/``predict`` take ``{"perturbation": "KLF1", "kind":
        "activation"}``; the model learns one flag per type seen in training.
    combo_sep
        Separator of combined perturbations.
    symbol_key
        ``var`` column with gene symbols, when ``var_names`` are Ensembl ids.
    value_kind
        ``"counts"`` or ``"log"`` to declare what the layer holds; ``None`` detects it (a layer
        named ``"counts"`` is declared counts by its name).
    control_obs
        ``{obs key: value or [values]}`` selecting control cells for ``source="control"`` when
        there is no ``perturbation_key``, e.g. ``{"condition": "ctrl"}``.
    allow_missing_genes
        Drop (with a warning) perturbed genes that are neither among the measured genes nor in the
        model's prior, instead of raising.
    kind, perturbation_kind
        Former names of ``value_kind`` and ``perturbation_type`` (a ``FutureWarning``).
    condition_kinds
        ``{obs key: kind}`` for condition kinds registered with
        :func:`~grndiff.data.register_condition_kind` (and their embedders with
        :func:`grndiff.nn.register_condition_embedder`); see ``docs/architecture.md``.

    Raises
    ------
    KeyError
        A key is not in ``adata.obs`` / ``adata.var`` / ``adata.layers``.
    ValueError
        Empty AnnData, duplicated names, NaN in a condition column, bad expression values.
    """
    value_kind, perturbation_type = _renamed(value_kind, perturbation_type, kind, perturbation_kind)
    _check_shape_and_names(adata)
    lists = {"condition_keys": _as_list(condition_keys, "condition_keys"),
             "continuous_keys": _as_list(continuous_keys, "continuous_keys"),
             "set_keys": _as_list(set_keys, "set_keys"), "hierarchy": _as_list(hierarchy, "hierarchy")}
    if canonical_kind(perturbation_type) is None:
        aliases = sorted(set(KIND_ALIASES) - set(PERTURBATION_KINDS))
        raise ValueError(f"perturbation_type must be one of {PERTURBATION_KINDS} (or {aliases}), got "
                         f"{perturbation_type!r}")
    perturbation_type = canonical_kind(perturbation_type)
    if not isinstance(combo_sep, str) or not combo_sep:
        raise ValueError(f"combo_sep must be a non-empty string such as '+', got {combo_sep!r}")
    if value_kind is not None and value_kind not in KINDS:
        raise ValueError(f"value_kind must be one of {KINDS} or None (detect), got {value_kind!r}")

    condition_kinds = {str(k): str(v) for k, v in (condition_kinds or {}).items()}
    unknown_kinds = sorted({v for v in condition_kinds.values() if v not in ENCODERS})
    if unknown_kinds:
        raise ValueError(f"condition_kinds: unknown kind(s) {unknown_kinds}; registered kinds are {sorted(ENCODERS)} "
                         "(a new kind registers its encoder with grndiff.data.register_condition_kind)")
    roles = [(k, role) for role, ks in lists.items() for k in ks] + [(k, "condition_kinds") for k in condition_kinds]
    if perturbation_key is not None:
        roles.append((perturbation_key, "perturbation_key"))
    seen: dict[str, str] = {}
    for key, role in roles:
        if key in seen:
            raise ValueError(f"obs column {key!r} is registered twice ({seen[key]} and {role}); give each "
                             "column one role")
        seen[key] = role
        _check_obs_key(adata, key, role)
    labelled = lists["condition_keys"] + lists["set_keys"] + lists["hierarchy"]
    for key in labelled + ([perturbation_key] if perturbation_key else []):
        _check_no_nan(adata, key)
    for key in lists["continuous_keys"]:
        _check_continuous(adata, key)
    if perturbation_key is not None:
        _check_has_control(adata, perturbation_key, control)
    if symbol_key is not None:
        if symbol_key not in adata.var.columns:
            raise KeyError(f"symbol_key={symbol_key!r} is not a column of adata.var "
                           f"(columns: {list(adata.var.columns)})")
        n_nan = int(adata.var[symbol_key].isna().sum())
        if n_nan:
            raise ValueError(f"adata.var[{symbol_key!r}] has {n_nan} genes without a symbol (NaN); fill them, e.g. "
                             f"adata.var[{symbol_key!r}] = adata.var[{symbol_key!r}].fillna(pd.Series(adata.var_names, "
                             "index=adata.var_names))")
    control_obs = _check_control_obs(adata, control_obs)

    X, field = _get_matrix(adata, layer)
    declared = value_kind if value_kind is not None else ("counts" if layer == "counts" else None)
    if getattr(adata, "isbacked", False) and layer is None:  # X stays on disk: checked block by block
        found = detect_kind_streamed(adata.filename, field=field, declared=declared)
    else:
        found = detect_kind(X, field=field, declared=declared)
        _check_precision(X, field, found)
    log.info("grndiff: %s holds %s", field, "raw counts (→ CP10k + log1p)" if found == "counts" else "log1p values")

    record = {
        "version": SETUP_VERSION, "layer": layer, "value_kind": found, "condition_keys": lists["condition_keys"],
        "continuous_keys": lists["continuous_keys"], "set_keys": lists["set_keys"], "hierarchy": lists["hierarchy"],
        "perturbation_key": perturbation_key, "control": str(control), "perturbation_type": perturbation_type,
        "combo_sep": combo_sep, "symbol_key": symbol_key, "control_obs": control_obs,
        "allow_missing_genes": bool(allow_missing_genes), "n_obs": int(adata.n_obs), "n_vars": int(adata.n_vars),
        "condition_kinds": condition_kinds or None,
    }
    # None values are left out: older anndata versions cannot write None into .uns (h5ad)
    adata.uns[UNS_KEY] = {k: v for k, v in record.items() if v is not None}


_DEFAULTS = {"layer": None, "value_kind": None, "condition_keys": [], "continuous_keys": [], "set_keys": [],
             "hierarchy": [], "perturbation_key": None, "control": "control", "perturbation_type": "ko",
             "combo_sep": "+",
             "symbol_key": None, "control_obs": None, "allow_missing_genes": False, "condition_kinds": {}}


_OLD_KEYS = {"kind": "value_kind", "perturbation_kind": "perturbation_type"}


def upgrade_setup(rec: dict) -> dict:
    """A setup record (a copy) with the keys written before the renames under their new names."""
    rec = dict(rec)
    for old, new in _OLD_KEYS.items():
        if old in rec:
            rec.setdefault(new, rec.pop(old))
    return rec


def _renamed(value_kind, perturbation_type, kind, perturbation_kind):
    """``value_kind``/``perturbation_type``, taking the former names (``kind``/``perturbation_kind``)
    with a FutureWarning; both names at once is an error."""
    out = []
    for new_name, new, default, old_name, old in (("value_kind", value_kind, None, "kind", kind),
                                                  ("perturbation_type", perturbation_type, "ko", "perturbation_kind",
                                                   perturbation_kind)):
        if old is not None:
            if new != default:
                raise TypeError(f"pass {new_name}= only ({old_name}= is its former name)")
            warnings.warn(f"setup_anndata({old_name}=...) is now {new_name}=...; the old name will be removed",
                          FutureWarning, stacklevel=3)
            new = old
        out.append(new)
    return tuple(out)


def get_setup(adata) -> dict:
    """The record written by :func:`setup_anndata`, as plain Python types (lists, str, bool, None).

    Raises
    ------
    ValueError
        When ``setup_anndata`` was not run on this AnnData (or on the object it was copied from).
    """
    rec = getattr(adata, "uns", {}).get(UNS_KEY)
    if rec is None:
        raise ValueError("this AnnData was not registered: adata.uns['_grndiff'] is missing. Run "
                         "grndiff.GRNDiff.setup_anndata(adata, layer=..., condition_keys=[...]) first "
                         "(setup is lost when the AnnData is rebuilt instead of copied/sliced).")
    out = {**_DEFAULTS, **upgrade_setup(_plain(dict(rec)))}
    for k in ("condition_keys", "continuous_keys", "set_keys", "hierarchy"):
        out[k] = [str(v) for v in (out[k] or [])]
    out["condition_kinds"] = {str(k): str(v) for k, v in (out["condition_kinds"] or {}).items()}
    if out["control_obs"]:
        out["control_obs"] = {str(k): [str(x) for x in (v if isinstance(v, list) else [v])]
                              for k, v in out["control_obs"].items()}
    return out


# ---------------------------------------------------------------- checks
def _check_shape_and_names(adata) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"the AnnData is empty ({adata.n_obs} cells × {adata.n_vars} genes); grndiff needs at least "
                         "one cell and one gene")
    for axis, names, fix in (("var_names", adata.var_names, "adata.var_names_make_unique()"),
                             ("obs_names", adata.obs_names, "adata.obs_names_make_unique()")):
        dup = names[names.duplicated()]
        if len(dup):
            raise ValueError(f"adata.{axis} has {len(dup)} duplicated names (e.g. {list(dup.unique()[:5])}); "
                             f"make them unique first: {fix}")


def _as_list(keys, arg: str) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):  # a single column name is a common slip for a one-element list
        return [keys]
    keys = list(keys)
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        raise TypeError(f"{arg} must be obs column names (strings), got {bad}")
    return keys


def _check_obs_key(adata, key: str, role: str) -> None:
    if key not in adata.obs.columns:
        hint = " (it is an index, not a column)" if key == adata.obs.index.name else ""
        raise KeyError(f"{role}: {key!r} is not a column of adata.obs{hint}; available columns: "
                       f"{list(adata.obs.columns)}")


def _check_no_nan(adata, key: str) -> None:
    n_nan = int(adata.obs[key].isna().sum())
    if n_nan:
        raise ValueError(
            f"adata.obs[{key!r}] has no value (NaN) for {n_nan} of {adata.n_obs} cells. Remove them "
            f"(adata = adata[adata.obs[{key!r}].notna()].copy()) or label them, e.g. "
            f"adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).replace('nan', 'unknown')")


def _check_continuous(adata, key: str) -> None:
    col = adata.obs[key]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise TypeError(f"continuous_keys: adata.obs[{key!r}] has dtype {col.dtype}, not numbers; convert it "
                        f"(pd.to_numeric(adata.obs[{key!r}])) or register it under condition_keys")
    v = col.to_numpy(dtype=float)
    n_nan, n_inf = int(np.isnan(v).sum()), int(np.isinf(v).sum())
    if n_nan or n_inf:
        raise ValueError(f"adata.obs[{key!r}] has {n_nan} NaN and {n_inf} infinite values out of {adata.n_obs} cells; "
                         f"remove those cells (adata = adata[np.isfinite(adata.obs[{key!r}])].copy()) or fill them")


def _check_has_control(adata, key: str, control: str) -> None:
    vals = adata.obs[key].astype(str)
    if not (vals == str(control)).any():
        log.warning("grndiff: adata.obs[%r] has no control cells labelled %r; pass control=... if the control "
                    "label differs (needed for source='control')", key, control)


def _check_control_obs(adata, control_obs) -> dict | None:
    if control_obs is None:
        return None
    if not isinstance(control_obs, dict) or not control_obs:
        raise TypeError(f"control_obs must be a dict such as {{'condition': 'ctrl'}}, got {control_obs!r}")
    out = {}
    for k, v in control_obs.items():
        _check_obs_key(adata, k, "control_obs")
        vals = [str(x) for x in (v if isinstance(v, (list, tuple, set, np.ndarray)) else [v])]
        present = set(adata.obs[k].astype(str))
        missing = [x for x in vals if x not in present]
        if missing:
            raise ValueError(f"control_obs: adata.obs[{k!r}] has no cells labelled {missing}; "
                             f"its values are {sorted(present)[:20]}")
        out[str(k)] = vals
    return out


MAX_LIBRARY_SIZE = 1e8  # a droplet holds ~1e3–1e5 UMIs; full-length bulk-like cells ~1e7


def _check_precision(X, field: str, kind: str) -> None:
    """Refuse a matrix whose integer type has saturated; warn on lossy types and absurd depths."""
    dtype = np.dtype(getattr(X, "dtype", np.float32))
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        top = np.iinfo(dtype).max
        vmax = X.max() if hasattr(X, "max") else np.max(X)
        if vmax >= top:
            raise ValueError(f"{field} is stored as {dtype} and reaches its maximum {top}: counts were clipped or "
                             "wrapped around when converted. Re-read the counts as float32 or int32 (a lossless type) "
                             f"instead of {field} = {field}.astype(np.{dtype})")
        warn(f"{field} is stored as {dtype}: sums and counts above {top} overflow it. Store counts as float32: "
             f"{field} = {field}.astype(np.float32)")
    elif dtype == np.float16:
        warn(f"{field} is stored as float16: integers above 2048 are rounded and log1p values keep ~3 digits. "
             f"Store it as float32: {field} = {field}.astype(np.float32)")
    if kind == "counts":
        depth = float(np.asarray(X.sum(axis=1), dtype=np.float64).max())
        if depth > MAX_LIBRARY_SIZE:
            warn(f"{field}: a cell has {depth:.3g} counts (a droplet holds ~1e3–1e5): these may be normalised or "
                 "aggregated values rather than raw counts, and float32 cannot hold counts above ~1.7e7 exactly. "
                 "Pass the raw UMI counts, or remove such cells: "
                 f"adata = adata[np.asarray({field}.sum(1)).ravel() <= 1e8].copy()")


def _get_matrix(adata, layer):
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty (None); pass layer='counts' (or the layer holding expression). "
                             f"Layers: {list(adata.layers.keys())}")
        return adata.X, "adata.X"
    if layer not in adata.layers:
        raise KeyError(f"layer={layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}); use "
                       "layer=None for adata.X")
    return adata.layers[layer], f"adata.layers[{layer!r}]"


def _plain(v):
    """numpy scalars/arrays (as read back from .h5ad) → Python types."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v
