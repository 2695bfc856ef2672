"""The validation gate: how much of the learned flow :meth:`GRNDiff.predict` applies.

A model that transports control cells predicts ``x̂ = x_T + α·(x_flow − x_T)``, where ``x_T`` is
its source's estimate (the shifted control cells, ``predict(flow=False)``), ``x_flow`` the end of
the learned flow started there (``flow=True``), and ``α`` is chosen on data the network never saw:

- when a perturbation was seen in ≥ 3 contexts (IFN-β in each cell type), the perturbed cells of
  whole *contexts* are hidden from training (``unit="context"``);
- otherwise, with ≥ 3 perturbations (knock-outs), whole *perturbations* are hidden
  (``unit="perturbation"``);
- never random cells: cells of a group the network trained on say nothing about a new one.

Each hidden group is predicted from its control cells (flows of :data:`GATE_EULER_STEPS` Euler
steps), and every ``α`` of :data:`ALPHAS` is scored by Pearson Δ on the top-20 changed genes (log1p
units, as the benchmarks score). During training the same score stops the network early
(``GRNDiff.train(early_stopping=True)``) once it has not beaten the best so far — at first the
transport's — for a few checks. The smallest ``α``
of the best mean wins, so the network has to beat its own starting point to be used. With too few
contexts and perturbations to hide one, the gate warns and keeps the transport (``α = 0``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .data.conditions import warn
from .metrics.perturbation import pearson_delta

__all__ = ["ALPHAS", "GATE_EULER_STEPS", "GateSplit", "gate_split", "choose_alpha"]

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
GATE_EULER_STEPS = 10  # Euler steps of the flows the gate scores (each early-stopping check too)
MIN_GROUPS = 3  # contexts (or perturbations) needed before one can be hidden


@dataclass
class GateSplit:
    """Which training cells the gate hides, and how each hidden group is predicted.

    ``hidden`` is (N,) bool over the training AnnData; each entry of ``groups`` is
    ``(name, truth rows, control rows, conditions)`` with row indices into that AnnData.
    """

    unit: str
    hidden: np.ndarray
    groups: list = field(default_factory=list)


def _column(obs: pd.DataFrame, keys) -> np.ndarray:
    if not keys:
        return np.full(len(obs), "", dtype=object)
    return obs[list(keys)].astype(str).agg("|".join, axis=1).to_numpy()


def label_keys(setup: dict, match_keys) -> list[str]:
    """The ``obs`` keys that say which perturbation a cell received (not its context)."""
    ctx = set(match_keys or ())
    keys = [k for k in setup.get("condition_keys") or [] if k not in ctx]
    if setup.get("perturbation_key"):
        keys = [setup["perturbation_key"]] + keys
    return keys


def gate_split(obs: pd.DataFrame, control: np.ndarray, setup: dict, match_keys, *, fraction: float = 0.2,
               seed: int = 0, max_control: int = 300, min_cells: int = 10) -> GateSplit | str:
    """Choose the groups the gate hides from training, or return why none can be hidden.

    Parameters
    ----------
    obs
        The training cells' ``obs`` (N rows).
    control
        (N,) bool: the registered control cells.
    setup, match_keys
        The model's setup record and context keys.
    fraction
        Share of the contexts (or perturbations) hidden, at least one.
    max_control
        Control cells (seeded subset) transported per hidden group.
    min_cells
        Smallest hidden group (and control set) worth scoring.
    """
    keys = label_keys(setup, match_keys)
    if not keys:
        return "no perturbation key and no condition besides the context keys"
    lab, ctx = _column(obs, keys), _column(obs, match_keys)
    control = np.asarray(control, dtype=bool)
    pert = ~control
    rng = np.random.default_rng(seed)
    usable = {}  # (label, context) → truth rows, for groups with enough perturbed and control cells
    for key in sorted(set(zip(lab[pert], ctx[pert]))):
        rows = np.flatnonzero(pert & (lab == key[0]) & (ctx == key[1]))
        if rows.size >= min_cells and (control & (ctx == key[1])).sum() >= min_cells:
            usable[key] = rows
    contexts_of: dict = {}
    for lb, cx in usable:
        contexts_of.setdefault(lb, set()).add(cx)
    if any(len(v) >= MIN_GROUPS for v in contexts_of.values()):
        unit = "context"
        pool = sorted({cx for v in contexts_of.values() if len(v) >= MIN_GROUPS for cx in v})
        n = max(1, int(round(fraction * len(pool))))
        chosen = set(rng.permutation(np.array(pool, dtype=object))[:n].tolist())
        picked = [k for k in usable if k[1] in chosen and len(contexts_of[k[0]]) >= MIN_GROUPS]
    elif len(contexts_of) >= MIN_GROUPS:
        unit = "perturbation"
        pool = sorted(contexts_of)
        n = max(1, int(round(fraction * len(pool))))
        chosen = set(rng.permutation(np.array(pool, dtype=object))[:n].tolist())
        picked = [k for k in usable if k[0] in chosen]
    else:
        most = max((len(v) for v in contexts_of.values()), default=0)
        return (f"{len(contexts_of)} perturbation(s) seen in at most {most}"
                f" context(s): the gate needs {MIN_GROUPS} contexts of one perturbation or {MIN_GROUPS} perturbations "
                "to hide one")
    hidden = np.zeros(len(obs), dtype=bool)
    groups = []
    for lb, cx in picked:
        truth = usable[(lb, cx)]
        hidden[truth] = True
        ctrl = np.flatnonzero(control & (ctx == cx))
        if ctrl.size > max_control:
            ctrl = np.sort(rng.choice(ctrl, max_control, replace=False))
        first = obs.iloc[truth[0]]
        conditions = {k: first[k] for k in keys}
        groups.append((f"{lb} @ {cx}" if cx else lb, truth, ctrl, conditions))
    return GateSplit(unit=unit, hidden=hidden, groups=groups)


def score_alphas(x_transport: np.ndarray, x_flow: np.ndarray, truth: np.ndarray, ctrl: np.ndarray,
                 alphas=ALPHAS, top_n: int = 20) -> list[float]:
    """Pearson Δ top-``top_n`` of ``x_T + α(x_flow − x_T)`` for each ``α``; arrays are cells × G
    in log1p units (means are taken), the prediction arrays of one shape."""
    t, f = np.asarray(x_transport, dtype=np.float64).mean(0), np.asarray(x_flow, dtype=np.float64).mean(0)
    return [float(pearson_delta(t + a * (f - t), truth, ctrl, top_n=top_n)) for a in alphas]


def alpha_means(table: pd.DataFrame) -> pd.Series:
    """Mean score over the hidden groups per ``α`` (finite means only; ``table`` as :func:`choose_alpha`'s)."""
    mean = table.groupby("alpha")["pearson_delta_top20"].mean()
    return mean[np.isfinite(mean)]


def choose_alpha(table: pd.DataFrame) -> float:
    """The smallest ``α`` of the best mean score over the hidden groups (``table``: columns
    ``alpha``, ``pearson_delta_top20``, one row per group and α)."""
    mean = alpha_means(table)
    if mean.empty:
        return 0.0
    best = mean.max()
    return float(min(a for a, v in mean.items() if v >= best - 1e-12))


def warn_no_gate(reason: str) -> None:
    warn(f"grndiff: the validation gate could not hide any group ({reason}); predict() keeps the source's "
         "transport (flow=False) unless you pass flow=True, or train(gate=False)")
