"""ODE samplers for ``dx/dt = f(x, t)`` from ``t0`` to ``t1`` (either direction).

``f(x (B, G), t (B,)) -> (B, G)`` is any velocity callable (a trained network with its
conditions bound, or a guided combination of two). Euler and Heun walk a uniform time grid;
``dopri5`` is the adaptive Dormand–Prince 5(4) solver of torchdiffeq (Chen et al. 2018, "Neural
ordinary differential equations"). All are deterministic given ``x0``: seed the source
(:func:`grndiff.flow.seeded_noise`) and the samples are bitwise reproducible on CPU.

Every sampler can return its number of function evaluations (``return_nfe=True``); to count
evaluations made by code you do not call directly (``GRNDiff.sample``), wrap it in
:func:`count_nfe`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_METHODS = ("euler", "heun", "dopri5")


# ------------------------------------------------------------------ evaluation counting
@dataclasses.dataclass
class NFETally:
    """Evaluations counted by :func:`count_nfe`: ``nfe`` calls of ``f`` over ``solves`` ODE
    solves that started from ``cells`` cells in all."""

    nfe: int = 0
    solves: int = 0
    cells: int = 0

    @property
    def nfe_per_solve(self) -> float:
        return self.nfe / self.solves if self.solves else 0.0


# a context variable, not a module global: nested and concurrent count_nfe() blocks stay separate
_TALLIES: contextvars.ContextVar[tuple[NFETally, ...]] = contextvars.ContextVar("grndiff_nfe_tallies", default=())


@contextlib.contextmanager
def count_nfe() -> Iterator[NFETally]:
    """Count the velocity evaluations of every sampler run inside the block.

    Examples
    --------
    ``with count_nfe() as tally: model.sample(500, method="dopri5")``, then ``tally.nfe``,
    ``tally.solves`` (one per batch of cells) and ``tally.nfe_per_solve``.
    """
    tally = NFETally()
    token = _TALLIES.set(_TALLIES.get() + (tally,))
    try:
        yield tally
    finally:
        _TALLIES.reset(token)


class _Counted:
    """``f`` with a call counter (and an optional progress bar fed by the time reached)."""

    def __init__(self, f: Velocity, bar=None, t0: float = 0.0, t1: float = 1.0):
        self.f, self.nfe, self.bar, self.t0, self.span, self.done = f, 0, bar, t0, t1 - t0, 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if self.bar is not None:  # adaptive solvers: report the fraction of [t0, t1] reached
            frac = (float(t[0]) - self.t0) / self.span if self.span else 1.0
            if frac > self.done:
                self.bar.update(frac - self.done)
                self.done = frac
            self.bar.set_postfix(nfe=self.nfe, refresh=False)
        return self.f(x, t)

    def finish(self, n_cells: int) -> int:
        if self.bar is not None:
            self.bar.close()
        for tally in _TALLIES.get():
            tally.nfe += self.nfe
            tally.solves += 1
            tally.cells += n_cells
        return self.nfe


def _bar(enabled: bool, desc: str, total: int | None):
    """A tqdm bar over ``total`` steps, or over the fraction of the time span when ``total`` is None."""
    if not enabled:
        return None
    from .._progress import bar  # a bar on a terminal or in Jupyter, occasional lines in a log file
    if total is not None:
        return bar(total, f"sampling ({desc})", unit="step")
    return bar(1.0, f"sampling ({desc})", unit="%",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}")


def _grid(t0: float, t1: float, n_steps: int) -> list[float]:
    """Uniform time grid with exact end points, as Python floats (no device sync per step)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be ≥ 1, got {n_steps}")
    return [t0 + (t1 - t0) * i / n_steps for i in range(n_steps)] + [float(t1)]


def _tvec(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)  # (B,)


def _out(x: torch.Tensor, traj: list | None, nfe: int, return_nfe: bool):
    res = torch.stack(traj) if traj is not None else x
    return (res, nfe) if return_nfe else res


# ------------------------------------------------------------------ fixed-step solvers
@torch.no_grad()
def euler(f: Velocity, x0: torch.Tensor, n_steps: int = 50, t0: float = 0.0, t1: float = 1.0, *,
          return_trajectory: bool = False, progress: bool = False, return_nfe: bool = False):
    """Explicit Euler on a uniform grid: ``x ← x + Δt f(x, t)``; ``n_steps`` evaluations, error O(Δt).

    Parameters
    ----------
    f
        Velocity ``f(x (B, G), t (B,)) -> (B, G)``.
    x0
        State at ``t0``, (B, G).
    n_steps
        Number of steps.
    t0, t1
        Start and end time (``t1 < t0`` integrates backwards).
    return_trajectory
        Return every grid state instead of the last.
    progress
        Show a tqdm bar.
    return_nfe
        Also return the number of evaluations of ``f``.

    Returns
    -------
    x : (B, G), or (n_steps + 1, B, G) with ``return_trajectory``; and ``nfe`` (int) with ``return_nfe``.
    """
    def step(fc, x, ta, tb):
        return x + (tb - ta) * fc(x, _tvec(ta, x))
    return _fixed_steps("euler", step, f, x0, n_steps, t0, t1, return_trajectory, progress, return_nfe)


@torch.no_grad()
def heun(f: Velocity, x0: torch.Tensor, n_steps: int = 25, t0: float = 0.0, t1: float = 1.0, *,
         return_trajectory: bool = False, progress: bool = False, return_nfe: bool = False):
    """Heun's method (explicit trapezoid, 2nd order): 2 evaluations per step, error O(Δt²).

    ``k₁ = f(x, t)``, ``k₂ = f(x + Δt k₁, t + Δt)``, ``x ← x + Δt (k₁ + k₂) / 2``. At equal
    evaluations (Heun with n/2 steps vs Euler with n) it is usually far more accurate on the
    nearly straight fields rectified flows learn. Parameters and returns as :func:`euler`.
    """
    def step(fc, x, ta, tb):
        dt = tb - ta
        k1 = fc(x, _tvec(ta, x))  # (B, G)
        k2 = fc(x + dt * k1, _tvec(tb, x))  # (B, G)
        return x + 0.5 * dt * (k1 + k2)
    return _fixed_steps("heun", step, f, x0, n_steps, t0, t1, return_trajectory, progress, return_nfe)


def _fixed_steps(name, step, f, x0, n_steps, t0, t1, return_trajectory, progress, return_nfe):
    """The loop of a fixed-grid solver: ``x ← step(f, x, tᵢ, tᵢ₊₁)`` over ``n_steps`` steps."""
    ts, fc = _grid(t0, t1, n_steps), _Counted(f)
    x, traj = x0, ([x0] if return_trajectory else None)
    bar = _bar(progress, name, n_steps)
    for i in range(n_steps):
        x = step(fc, x, ts[i], ts[i + 1])
        if traj is not None:
            traj.append(x)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return _out(x, traj, fc.finish(x0.shape[0]), return_nfe)


# ------------------------------------------------------------------ adaptive solver
@torch.no_grad()
def dopri5(f: Velocity, x0: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5, *, t0: float = 0.0,
           t1: float = 1.0, return_trajectory: bool = False, n_steps: int = 50, max_steps: int = 10_000,
           progress: bool = False, return_nfe: bool = False):
    """Adaptive Dormand–Prince 5(4) via torchdiffeq: the step size follows ``rtol``/``atol``.

    Parameters
    ----------
    f, x0, t0, t1, progress, return_nfe
        As :func:`euler`. The bar shows the fraction of ``[t0, t1]`` covered and the nfe.
    rtol, atol
        Relative and absolute local error tolerances.
    return_trajectory
        Return the states at ``n_steps + 1`` uniform times (dense output: extra grid times cost
        no extra evaluations).
    n_steps
        Grid size for ``return_trajectory`` only; the solver chooses its own steps.
    max_steps
        Give up (RuntimeError) after this many solver steps: an untrained or diverging field can
        otherwise shrink the step forever.

    Returns
    -------
    x : (B, G), or (n_steps + 1, B, G); and ``nfe`` with ``return_nfe`` (includes the evaluations
    spent choosing the first step and on rejected steps: the real cost).
    """
    try:
        from torchdiffeq import odeint
    except ImportError as e:  # pragma: no cover - torchdiffeq is a declared dependency
        raise ImportError("method='dopri5' needs torchdiffeq: pip install torchdiffeq (or "
                          "pip install grndiff, which depends on it); or use method='euler' / 'heun'") from e
    B = x0.shape[0]
    fc = _Counted(f, _bar(progress, "dopri5", None), t0, t1)

    def rhs(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # torchdiffeq's argument order
        return fc(x, t.to(x.dtype).reshape(1).expand(B).contiguous())  # t: (B,), no host sync

    times = _grid(t0, t1, n_steps) if return_trajectory else [t0, t1]
    ts = torch.tensor(times, dtype=torch.float64 if x0.dtype == torch.float64 else torch.float32, device=x0.device)
    try:
        xs = odeint(rhs, x0, ts, method="dopri5", rtol=rtol, atol=atol, options={"max_num_steps": max_steps})
    except AssertionError as e:
        if "max_num_steps" in str(e):
            raise RuntimeError(f"dopri5 took more than max_steps={max_steps} steps ({fc.nfe} evaluations): the "
                               "velocity field is stiff or diverging (an untrained model?). Loosen rtol/atol, "
                               "raise max_steps, or use a fixed-step method='euler' / 'heun'.") from e
        raise
    finally:
        nfe = fc.finish(B)
    res = xs if return_trajectory else xs[-1]  # (T, B, G) or (B, G)
    return (res, nfe) if return_nfe else res


# ------------------------------------------------------------------ front door
@torch.no_grad()
def sample_ode(f: Velocity, x0: torch.Tensor, *, method: str = "euler", n_steps: int = 50, t0: float = 0.0,
               t1: float = 1.0, rtol: float = 1e-5, atol: float = 1e-5, return_trajectory: bool = False,
               progress: bool = False, return_nfe: bool = False):
    """Integrate ``dx/dt = f(x, t)`` from ``x0`` at ``t0`` to ``t1``.

    Parameters
    ----------
    f
        Velocity ``f(x (B, G), t (B,)) -> (B, G)``.
    x0
        Start states (B, G): noise or control cells for ``t0=0 → t1=1``; cells for the inversion
        ``t0=1 → t1=0``.
    method
        ``"euler"`` (``n_steps`` evaluations), ``"heun"`` (``2 n_steps``), ``"dopri5"`` (adaptive;
        ``n_steps`` only sets the trajectory grid).
    rtol, atol
        Tolerances of ``"dopri5"`` (ignored by the fixed-step methods).
    return_trajectory, progress, return_nfe
        See :func:`euler`.

    Returns
    -------
    x : (B, G), or (n_steps + 1, B, G) with ``return_trajectory``; plus ``nfe`` with ``return_nfe``.
    """
    if method in ("euler", "heun"):
        solver = euler if method == "euler" else heun
        return solver(f, x0, n_steps, t0, t1, return_trajectory=return_trajectory, progress=progress,
                      return_nfe=return_nfe)
    if method == "dopri5":
        return dopri5(f, x0, rtol, atol, t0=t0, t1=t1, return_trajectory=return_trajectory, n_steps=n_steps,
                      progress=progress, return_nfe=return_nfe)
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
