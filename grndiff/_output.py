"""What ``GRNDiff.sample``/``predict`` hand back, scanpy style: the gene annotations (``var``) of
the data, and for ``predict`` every ``obs`` column of the cells given (donor, batch …), not only
the conditions. Also the checks of ``predict``'s input that need the model."""
from __future__ import annotations

import numpy as np
import pandas as pd


def annotate_output(out, *, var: pd.DataFrame | None = None, like=None):
    """``out`` (an AnnData whose ``obs`` holds the conditions) with ``var`` annotations and, when
    ``like`` is given, ``like.obs``'s other columns (same cells, same order). Returns ``out``."""
    if var is not None and len(var.columns):
        genes = out.var_names
        names = pd.Index(var.index.astype(str))
        if names.is_unique and genes.isin(names).all():
            v = var.copy()
            v.index = names
            v = v.loc[genes]
            v.index = genes
            out.var = v
    if like is not None and like.n_obs == out.n_obs:
        extra = [c for c in like.obs.columns if c not in out.obs.columns]
        if extra:
            obs = like.obs[extra].copy()
            obs.index = out.obs_names
            for c in out.obs.columns:  # the conditions asked for replace the cells' own values
                obs[c] = out.obs[c].to_numpy() if not isinstance(out.obs[c].dtype, pd.CategoricalDtype) else out.obs[c]
            out.obs = obs[[c for c in like.obs.columns if c in obs.columns] +
                          [c for c in out.obs.columns if c not in like.obs.columns]]
    return out


def var_to_state(var: pd.DataFrame | None, genes) -> dict | None:
    """``var`` (rows of ``genes``) as plain types, loadable with ``torch.load(weights_only=True)``:
    numbers, booleans and strings; other columns are left out. ``None`` when unknown."""
    if var is None or not len(var.columns):
        return None
    names = pd.Index(var.index.astype(str))
    if not names.is_unique or not pd.Index(genes).isin(names).all():
        return None
    v = var.copy()
    v.index = names
    v = v.loc[list(genes)]
    cols = {}
    for c in v.columns:
        s = v[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            cols[str(c)] = {"dtype": str(s.dtype), "values": s.to_numpy().tolist()}
        elif s.map(lambda x: x is None or isinstance(x, str) or (isinstance(x, float) and np.isnan(x))).all():
            cols[str(c)] = {"dtype": "str", "values": [None if not isinstance(x, str) else x for x in s]}
    return {"index": [str(g) for g in genes], "columns": cols} if cols else None


def var_from_state(state: dict | None) -> pd.DataFrame | None:
    if not state:
        return None
    df = pd.DataFrame(index=pd.Index(state["index"], dtype=str))
    for c, col in state["columns"].items():
        if col["dtype"] == "str":
            df[c] = pd.Categorical(col["values"])
        else:
            df[c] = np.asarray(col["values"], dtype=col["dtype"])
    return df


def check_predict_input(model, adata_ctrl, conditions) -> None:
    """``predict``'s input: refuse 0 cells and a ``conditions`` that is not a dict; warn when a
    condition the model was trained with is neither a column of ``adata_ctrl.obs`` nor given in
    ``conditions`` (it would be predicted unconditionally, with its null token)."""
    from .data.conditions import warn
    if not isinstance(conditions, dict):
        raise TypeError(f"conditions must be a dict {{obs key: value}}, e.g. {{'condition': 'stim'}}; got "
                        f"{type(conditions).__name__}")
    if adata_ctrl.n_obs == 0:
        raise ValueError("predict() got an AnnData with 0 cells; pass the control cells to transport, e.g. "
                         "adata[adata.obs['condition'] == 'ctrl']")
    skip = {model.setup.get("perturbation_key")}  # left out = control cells, as they are
    missing = [k for k in model.processor.conditions.keys
               if k not in skip and k not in adata_ctrl.obs.columns and k not in conditions]
    if missing:
        pronoun = "it" if len(missing) == 1 else "them"
        warn(f"predict(): the cells have no obs column {missing} and conditions= does not give "
             f"{pronoun}, so the model predicts without {pronoun} "
             f"(unconditional, null token). Add the column(s) to adata.obs, or give the value(s) in conditions=, "
             f"e.g. conditions={{{missing[0]!r}: ..., ...}}.")
