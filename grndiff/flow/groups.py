"""Which group is a cell in: the one place the flow turns condition codes into group identities.

A batch's conditions are ``cond`` {name: (n,) codes or numbers} and optionally ``pert`` (n, S)
perturbed-node indices padded with negatives. Three views of the same question:

- :func:`group_ids` — per-group sources (:class:`~grndiff.flow.GaussianSource`): a mixed-radix id
  over the categorical codes, 0 for a cell with a null code (the pooled group);
- :func:`condition_keys` — the shifted control: one hashable tuple per cell (dictionary keys);
- :func:`group_index` — minibatch OT: an integer per distinct (conditions, perturbation) tuple.

A condition a cell does not have (absent from ``cond``, or NaN) reads as :data:`MISSING`, a value no
categorical code (≥ 0) takes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

MISSING = -7.0  # a condition value a cell does not have (absent or NaN): not a code, not a valid number here

__all__ = ["MISSING", "condition_keys", "condition_matrix", "group_ids", "group_index", "group_radix"]


def _spec(s, key):
    return s[key] if isinstance(s, dict) else getattr(s, key)


def group_radix(specs, max_groups: int = 100_000) -> list[tuple[str, int]]:
    """(name, number of categories) of the categorical conditions, for per-group sources; empty
    (one pooled group) when their combinations would exceed ``max_groups``."""
    out = [(_spec(s, "name"), int(_spec(s, "n_categories"))) for s in (specs or [])
           if _spec(s, "kind") == "categorical"]
    total = 1
    for _, r in out:
        total *= max(r, 1)
    return out if total <= max_groups else []


def group_ids(radix: list[tuple[str, int]], cond: dict | None, n: int, device=None) -> torch.Tensor:
    """Group id (n,) of each cell's categorical conditions: a mixed-radix number over the codes,
    + 1; 0 = a cell with a null/unknown code (→ the pooled group)."""
    if not radix or not cond or any(name not in cond for name, _ in radix):
        return torch.zeros(n, dtype=torch.long, device=device)
    key, null = 0, None
    for name, r in radix:
        code = torch.as_tensor(cond[name]).long()
        key = key * r + (code - 1).clamp_min(0)
        null = (code <= 0) if null is None else (null | (code <= 0))
    return torch.where(null, torch.zeros_like(key), key + 1).to(device)


def condition_matrix(cond: dict | None, names: Sequence[str], n: int) -> torch.Tensor:
    """(n, C) float64 CPU matrix of the conditions ``names`` (C columns; a vector condition takes
    several), :data:`MISSING` where a cell does not have one."""
    cols = []
    for name in names:
        if cond is None or name not in cond:
            cols.append(torch.full((n, 1), MISSING, dtype=torch.float64))
        else:
            cols.append(torch.as_tensor(cond[name]).detach().cpu().reshape(n, -1).double())
    if not cols:
        return torch.zeros(n, 0, dtype=torch.float64)
    return torch.nan_to_num(torch.cat(cols, 1), nan=MISSING)


def _sorted_perturbations(pert: torch.Tensor, n: int) -> torch.Tensor:
    """(n, S) perturbed indices, sorted per cell (the padding first): one row per perturbation set."""
    return torch.as_tensor(pert).detach().cpu().reshape(n, -1).long().sort(dim=1).values


def condition_keys(cond: dict | None, pert: torch.Tensor | None, names: Sequence[str], n: int,
                   with_pert: bool) -> list[tuple]:
    """One hashable key per cell (n tuples): the values of conditions ``names`` and, if
    ``with_pert``, the sorted set of perturbed node indices."""
    base = condition_matrix(cond, names, n).tolist()
    if not with_pert or pert is None:
        return [tuple(r) for r in base]
    p = _sorted_perturbations(pert, n).tolist()
    return [tuple(r) + tuple(float(g) for g in ps if g >= 0) for r, ps in zip(base, p)]


def group_index(cond: dict | None, pert: torch.Tensor | None, n: int, device=None) -> torch.Tensor:
    """(n,) integer id of each cell's full condition tuple (every condition in ``cond`` and the
    perturbation set), 0 … number of distinct tuples − 1, on ``device``."""
    key = condition_matrix(cond, list(cond or {}), n)
    if pert is not None:
        key = torch.cat([key, _sorted_perturbations(pert, n).double()], 1)
    if key.shape[1] == 0:
        return torch.zeros(n, dtype=torch.long, device=device)
    return torch.unique(key, dim=0, return_inverse=True)[1].to(device)
