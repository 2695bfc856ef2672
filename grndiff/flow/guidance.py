"""Classifier-free guidance for velocity fields (Ho & Salimans 2022, arXiv:2207.12598).

One network trained with conditions randomly replaced by their null token gives both a
conditional and an unconditional velocity; extrapolating from the second towards the first
sharpens samples towards the condition. For flows the combination is applied to velocities,
as diffusion models apply it to scores.
"""
from __future__ import annotations

import torch

from .samplers import Velocity


def cfg_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Guided velocity ``v_u + w (v_c − v_u)``.

    Parameters
    ----------
    v_cond, v_uncond
        Conditional and unconditional velocities, (B, G).
    w
        Guidance weight: 0 → unconditional, 1 → conditional, > 1 → sharper towards the condition.

    Returns
    -------
    v : (B, G)
    """
    return v_uncond + w * (v_cond - v_uncond)


def guided(f_cond: Velocity, f_uncond: Velocity, w: float) -> Velocity:
    """Velocity callable ``f(x, t)`` applying guidance weight ``w`` to two velocity callables.

    ``w = 1`` returns ``f_cond`` and ``w = 0`` returns ``f_uncond`` unchanged (one evaluation
    per step instead of two). Otherwise each call evaluates both, so one evaluation counted by a
    sampler costs two network passes; a network that can run both halves in one batch (DiT's
    ``forward_with_cfg``) is cheaper.

    Parameters
    ----------
    f_cond, f_uncond
        ``f(x (B, G), t (B,)) -> (B, G)`` with and without the condition.
    w
        Guidance weight.

    Returns
    -------
    f : ``f(x (B, G), t (B,)) -> (B, G)``
    """
    if w == 1.0:
        return f_cond
    if w == 0.0:
        return f_uncond

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cfg_velocity(f_cond(x, t), f_uncond(x, t), w)
    return f
