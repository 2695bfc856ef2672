"""Values that depend on weights alone (not on the cells), kept between calls while autograd is off.

In training every forward needs them fresh (they are part of the graph for the backward); when
sampling, every Euler step of every batch would rebuild the same ``(E, H)`` edge weights and
``(G, P)`` pooling matrices. The key is each input tensor's identity, storage and version counter:
an optimiser step, an EMA update or ``load_state_dict`` writes in place and bumps the version, so a
stale value is never returned (and a deep copy, whose tensors are new, never matches the original's).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def weight_cached(owner: torch.nn.Module, name: str, inputs: Iterable[torch.Tensor | None],
                  compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, memoised on ``owner`` under ``name`` while ``torch.is_grad_enabled()`` is False."""
    if torch.is_grad_enabled():
        return compute()
    key = tuple((id(t), t.data_ptr(), t._version) for t in inputs if t is not None)
    store = owner.__dict__.setdefault("_weight_cache", {})
    hit = store.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = compute()
    store[name] = (key, value)
    return value
