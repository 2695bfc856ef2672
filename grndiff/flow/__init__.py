"""Rectified-flow math (pure torch, no AnnData): paths, time sampling, OT pairing, ODE samplers,
classifier-free guidance. Conventions: t ∈ [0, 1], x₀ source (noise or control), x₁ data."""
from .guidance import cfg_velocity, guided
from .ot import ot_pair, ot_pair_indices
from .paths import flow_loss, interpolate, sample_source, seeded_noise, target_velocity
from .samplers import dopri5, euler, heun, sample_ode
from .schedule import sample_time

__all__ = ["cfg_velocity", "dopri5", "euler", "flow_loss", "guided", "heun", "interpolate", "ot_pair",
           "ot_pair_indices", "sample_ode", "sample_source", "sample_time", "seeded_noise", "target_velocity"]
