"""Rectified-flow math, pure torch (no AnnData, no other grndiff subpackage).

Conventions: time ``t ∈ [0, 1]``; ``x₀`` the source (N(0, I) noise or control cells), ``x₁`` the
data; path ``x_t = (1 − t) x₀ + t x₁``; target ``u = x₁ − x₀``; a velocity callable is
``f(x (B, G), t (B,)) -> (B, G)``.

- :mod:`.paths`: :func:`interpolate`, :func:`target_velocity`, :func:`velocity_from_data`, :func:`flow_loss`
- :mod:`.sources`: :func:`sample_source`, :func:`seeded_noise`, :class:`GaussianSource` (a per-group Gaussian fitted to data)
- :mod:`.schedule`: :func:`sample_time` (logit-normal or uniform)
- :mod:`.ot`: :func:`ot_pair`, :func:`ot_pair_indices` (minibatch OT, within condition groups)
- :mod:`.samplers`: :func:`euler`, :func:`heun`, :func:`dopri5`, :func:`sample_ode`, :func:`count_nfe`
- :mod:`.guidance`: :func:`cfg_velocity`, :func:`guided`
"""
from .guidance import cfg_velocity, guided
from .ot import ot_pair, ot_pair_indices
from .paths import flow_loss, interpolate, target_velocity, velocity_from_data
from .samplers import NFETally, Velocity, count_nfe, dopri5, euler, heun, sample_ode
from .schedule import sample_time
from .sources import GaussianSource, sample_source, seeded_noise

__all__ = ["GaussianSource", "NFETally", "Velocity", "cfg_velocity", "count_nfe", "dopri5", "euler", "flow_loss", "guided", "heun",
           "interpolate", "ot_pair", "ot_pair_indices", "sample_ode", "sample_source", "sample_time",
           "seeded_noise", "target_velocity", "velocity_from_data"]
