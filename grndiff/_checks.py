"""Argument checks of ``GRNDiff.sample``/``predict``: a clear ``ValueError``/``TypeError`` naming the
argument, the bad value and what to pass, before any work is done."""
from __future__ import annotations

import math
import numbers

import numpy as np


def check_count(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` ≥ ``minimum``; refuses floats (``2.5``), bools and strings."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        hint = f"; pass {name}={int(value)}" if isinstance(value, numbers.Real) and float(value).is_integer() else ""
        raise TypeError(f"{name} must be a whole number ≥ {minimum}, got {value!r} ({type(value).__name__}){hint}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {int(value)}")
    return int(value)


def check_finite(name: str, value) -> float:
    """``value`` as a finite ``float`` (refuses NaN, ±inf and non-numbers)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}; {name}=1.0 is plain conditional sampling"
                         if name == "guidance" else f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_sampling(*, n_steps, batch_size, guidance, method: str, seed) -> None:
    """The solver arguments shared by ``sample`` and ``predict``."""
    check_count("n_steps", n_steps)
    check_count("batch_size", batch_size)
    check_finite("guidance", guidance)
    check_count("seed", seed, minimum=0)
    from .flow.samplers import _METHODS
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}, got {method!r}")
