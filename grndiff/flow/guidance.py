"""Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) for velocities."""
from __future__ import annotations

from .samplers import Velocity


def cfg_velocity(v_cond, v_uncond, w: float):
    """``v_u + w (v_c − v_u)``: w = 1 is plain conditional, w = 0 unconditional, w > 1 sharper."""
    return v_uncond + w * (v_cond - v_uncond)


def guided(f_cond: Velocity, f_uncond: Velocity, w: float) -> Velocity:
    """A velocity callable applying guidance weight ``w``."""
    if w == 1.0:
        return f_cond

    def f(x, t):
        return cfg_velocity(f_cond(x, t), f_uncond(x, t), w)
    return f
