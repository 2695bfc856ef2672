"""ODE samplers for ``dx/dt = f(x, t)`` from ``t0`` to ``t1`` (either direction).

``f(x (B, G), t (B,)) -> (B, G)``. Euler and Heun use a fixed uniform grid; ``dopri5`` is the
adaptive Dormand–Prince solver from torchdiffeq (Chen et al. 2018).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _tvec(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def _progress(n: int, enabled: bool, desc: str):
    if not enabled:
        return range(n)
    from tqdm.auto import trange
    return trange(n, desc=desc, leave=False)


@torch.no_grad()
def euler(f: Velocity, x0: torch.Tensor, n_steps: int = 50, t0: float = 0.0, t1: float = 1.0,
          return_trajectory: bool = False, progress: bool = False):
    """Explicit Euler: ``n_steps`` evaluations. Returns x(t1) (B, G) or the trajectory (n_steps+1, B, G)."""
    x, dt = x0, (t1 - t0) / n_steps
    traj = [x0] if return_trajectory else None
    for i in _progress(n_steps, progress, "euler"):
        x = x + dt * f(x, _tvec(t0 + i * dt, x))
        if traj is not None:
            traj.append(x)
    return torch.stack(traj) if traj is not None else x


@torch.no_grad()
def heun(f: Velocity, x0: torch.Tensor, n_steps: int = 25, t0: float = 0.0, t1: float = 1.0,
         return_trajectory: bool = False, progress: bool = False):
    """Heun's 2nd-order method (explicit trapezoid): 2 evaluations per step."""
    x, dt = x0, (t1 - t0) / n_steps
    traj = [x0] if return_trajectory else None
    for i in _progress(n_steps, progress, "heun"):
        t = t0 + i * dt
        k1 = f(x, _tvec(t, x))
        k2 = f(x + dt * k1, _tvec(t + dt, x))
        x = x + 0.5 * dt * (k1 + k2)
        if traj is not None:
            traj.append(x)
    return torch.stack(traj) if traj is not None else x


class _Counted(torch.nn.Module):
    def __init__(self, f: Velocity):
        super().__init__()
        self.f, self.nfe = f, 0

    def forward(self, t, x):
        self.nfe += 1
        return self.f(x, _tvec(float(t), x))


@torch.no_grad()
def dopri5(f: Velocity, x0: torch.Tensor, t0: float = 0.0, t1: float = 1.0, rtol: float = 1e-5,
           atol: float = 1e-5, return_nfe: bool = False):
    """Adaptive Dormand–Prince 5(4) via torchdiffeq. With ``return_nfe`` also the evaluation count."""
    try:
        from torchdiffeq import odeint
    except ImportError as e:  # pragma: no cover - declared dependency
        raise ImportError("method='dopri5' needs torchdiffeq: pip install torchdiffeq") from e
    fc = _Counted(f)
    ts = torch.tensor([t0, t1], dtype=x0.dtype, device=x0.device)
    x = odeint(fc, x0, ts, method="dopri5", rtol=rtol, atol=atol)[-1]
    return (x, fc.nfe) if return_nfe else x


def sample_ode(f: Velocity, x0: torch.Tensor, *, method: str = "euler", n_steps: int = 50, t0: float = 0.0,
               t1: float = 1.0, return_trajectory: bool = False, progress: bool = False, **kw):
    """Front door: integrate from ``t0`` to ``t1`` with ``method`` in {"euler", "heun", "dopri5"}."""
    if method == "euler":
        return euler(f, x0, n_steps, t0, t1, return_trajectory, progress)
    if method == "heun":
        return heun(f, x0, n_steps, t0, t1, return_trajectory, progress)
    if method == "dopri5":
        if return_trajectory:
            raise ValueError("return_trajectory is only available for fixed-step methods")
        return dopri5(f, x0, t0, t1, **kw)
    raise ValueError(f"method must be 'euler', 'heun' or 'dopri5', got {method!r}")
