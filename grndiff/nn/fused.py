"""The element-wise halves of an adaLN block, optionally compiled (``torch.compile``, inductor).

A gene block's node states are (G, B, D) tensors; between its matrix products it runs LayerNorm,
the adaLN modulation, GELU and the gated residual, each a full pass over memory in eager mode.
:func:`ln_modulate` and :func:`mlp_residual` are those passes as plain functions of tensors, so that
inductor can fuse them. Eager (the default) and compiled give the same result up to float rounding.

``with compiled(True): ...`` makes the blocks use the compiled functions inside the block. They are
built once per process (module-level objects: a second ``train()`` reuses them; inductor also keeps
an on-disk cache across processes). Where compiling fails (no C++ compiler, an unsupported
platform) one warning is given and the eager functions are used.

Measured ratios are in ``benchmarks/results/speed_precision.md``.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_state = threading.local()
_compiled: dict[str, object] = {}
_failed: list[str] = []


def ln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``LN(x)·(1 + scale) + shift``; ``x`` (..., D), ``shift``/``scale`` broadcastable to it."""
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=eps), 1 + scale)


def mlp_residual(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor,
                 w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 eps: float = 1e-6) -> torch.Tensor:
    """``x + gate · fc2(GELU(fc1(ln_modulate(x))))`` (the block's second branch), same shape as ``x``."""
    h = F.linear(F.gelu(F.linear(ln_modulate(x, shift, scale, eps), w1, b1), approximate="tanh"), w2, b2)
    return torch.addcmul(x, gate, h)


_EAGER = {"ln_modulate": ln_modulate, "mlp_residual": mlp_residual}


def is_enabled() -> bool:
    """Whether the blocks use the compiled functions here (inside :func:`compiled`)."""
    return getattr(_state, "on", False) and not _failed


@contextlib.contextmanager
def compiled(enabled: bool = True) -> Iterator[None]:
    """Use the compiled element-wise functions inside the block (``enabled=False``: no change)."""
    before = getattr(_state, "on", False)
    _state.on = bool(enabled)
    try:
        yield
    finally:
        _state.on = before


def get(name: str):
    """The function ``name`` (``"ln_modulate"``, ``"mlp_residual"``) to call now: compiled or eager."""
    if not is_enabled():
        return _EAGER[name]
    fn = _compiled.get(name)
    if fn is None:
        fn = _compiled[name] = _guarded(name, torch.compile(_EAGER[name]))
    return fn


def _guarded(name: str, fn):
    """``fn``, falling back to the eager function (one warning) when compiling it fails."""
    def call(*args, **kwargs):
        if _failed:
            return _EAGER[name](*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (inductor raises many kinds: no compiler, unsupported op…)
            _failed.append(f"{type(err).__name__}: {err}")
            warnings.warn(f"grndiff: torch.compile failed ({_failed[0][:300]}); running eager instead",
                          RuntimeWarning, stacklevel=2)
            return _EAGER[name](*args, **kwargs)
    return call
