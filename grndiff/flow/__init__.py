"""Rectified-flow math on tensors: torch, with numpy/scipy where a step runs on the CPU anyway (the
minibatch OT assignment, the shifted control's fitting); no AnnData, no other grndiff subpackage.

Conventions: time ``t ∈ [0, 1]``; ``x₀`` the source, ``x₁`` the data; path
``x_t = (1 − t) x₀ + t x₁``; target ``u = x₁ − x₀``; a velocity callable is
``f(x (B, G), t (B,)) -> (B, G)``.

- :mod:`.paths`: :func:`interpolate`, :func:`target_velocity`, :func:`velocity_from_data`, :func:`flow_loss`
- :mod:`.sources`: the :class:`Source` objects (:class:`NoiseSource`, :class:`GaussianSource`,
  :class:`ControlSource`) and :func:`make_source`; :mod:`.shifted_control`: :class:`ShiftedControlSource`
- :mod:`.schedule`: :func:`sample_time` (logit-normal or uniform)
- :mod:`.groups`: which group a cell is in (:func:`group_ids`, :func:`condition_keys`, :func:`group_index`)
- :mod:`.minibatch_ot`: :func:`ot_pair_indices` (minibatch OT, within condition groups)
- :mod:`.samplers`: :func:`euler`, :func:`heun`, :func:`dopri5`, :func:`sample_ode`, :func:`count_nfe`
"""
from .groups import condition_keys, group_ids, group_index
from .minibatch_ot import ot_pair_indices
from .paths import flow_loss, interpolate, target_velocity, velocity_from_data
from .samplers import NFETally, Velocity, count_nfe, dopri5, euler, heun, sample_ode
from .schedule import sample_time
from .shifted_control import ShiftedControlSource
from .sources import (
    ControlSource,
    GaussianSource,
    NoiseSource,
    PerGroupGaussian,
    Source,
    make_source,
    register_source,
    seeded_noise,
    source_classes,
)

__all__ = ["ControlSource", "GaussianSource", "NFETally", "NoiseSource", "PerGroupGaussian", "ShiftedControlSource",
           "Source", "Velocity", "count_nfe", "dopri5", "euler", "condition_keys", "flow_loss", "group_ids",
           "group_index", "heun", "interpolate", "make_source", "ot_pair_indices", "register_source", "sample_ode",
           "sample_time", "seeded_noise", "source_classes", "target_velocity", "velocity_from_data"]
