"""The straight (rectified-flow) probability path and its regression loss.

Rectified flow / flow matching (Liu et al. 2022, arXiv:2209.03003; Lipman et al. 2022,
arXiv:2210.02747): for a coupling ``(x₀, x₁)`` the path is ``x_t = (1 − t) x₀ + t x₁`` and its
velocity ``u = x₁ − x₀``; a network ``v(x_t, t)`` regresses ``u``. The regression optimum is the
marginal velocity ``E[x₁ − x₀ | x_t]``, whose ODE carries the law of ``x₀`` onto that of ``x₁``.
``x₀`` is the source (noise or control cells), ``x₁`` the data.
"""
from __future__ import annotations

import torch

_REDUCTIONS = ("mean", "sum", "none")


def _per_cell(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Times (B,) or a scalar, shaped to broadcast against ``x`` (B, G) → (B, 1) or ()."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a scalar or have one time per cell ({x.shape[0]},), got shape {tuple(t.shape)}")
    return t.view(-1, *([1] * (x.dim() - 1)))  # (B, 1)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float, sigma: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Point of the straight path at time ``t``.

    ``x_t = (1 − t) x₀ + t x₁ + σ ε``, ``ε ~ N(0, I)``. ``σ > 0`` turns each path into a thin
    Gaussian tube (the ``σ_min`` of Lipman et al. 2022 / the "I-CFM" of Tong et al. 2023), which
    smooths the regression target; the target velocity is unchanged.

    Parameters
    ----------
    x0, x1
        Source and data cells, (B, G).
    t
        Per-cell times (B,) in [0, 1], or a scalar.
    sigma
        Standard deviation of the added noise (0 = deterministic path).
    generator
        Random stream for the noise; must live on ``x0.device``.

    Returns
    -------
    x_t : (B, G)
    """
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    tt = _per_cell(t, x0)  # (B, 1)
    xt = (1 - tt) * x0 + tt * x1
    if sigma > 0:
        xt = xt + sigma * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return xt


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Velocity of the straight path, ``u = d x_t / dt = x₁ − x₀``.

    Parameters
    ----------
    x0, x1
        Source and data cells, (B, G).

    Returns
    -------
    u : (B, G)
    """
    return x1 - x0


def velocity_from_data(x1_hat: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | float,
                       min_gap: float = 0.05) -> torch.Tensor:
    """Velocity implied by a prediction of the clean cell ("x-prediction").

    On the straight path ``x₁ = x_t + (1 − t) u``, so a network that predicts the data ``x̂₁``
    defines ``v = (x̂₁ − x_t) / (1 − t)``; ``1 − t`` is floored at ``min_gap`` so the division
    stays finite near ``t = 1``. Regressing ``v`` on ``u`` with this parametrisation ("x-pred,
    v-loss") is what Li & He (2025, "Back to Basics: Let Denoising Generative Models Denoise",
    arXiv:2511.13720) found necessary when the data fill few of many dimensions — as cells do in
    gene space: a velocity network must reproduce the source noise in every gene exactly, a data
    network only the cell.

    Parameters
    ----------
    x1_hat, xt
        Predicted clean cells and the current points, (B, G).
    t
        Per-cell times (B,) or a scalar.
    min_gap
        Floor of ``1 − t``.

    Returns
    -------
    v : (B, G)
    """
    gap = (1 - _per_cell(t, xt)).clamp_min(min_gap)
    return (x1_hat - xt) / gap


def flow_loss(v_pred: torch.Tensor, u: torch.Tensor, weight: torch.Tensor | None = None,
              reduction: str = "mean") -> torch.Tensor:
    """Flow-matching regression loss: per-cell MSE over genes, then reduced over cells.

    ``ℓ_b = (1/G) Σ_g (v_bg − u_bg)²``. With per-cell weights ``w`` the ``"mean"`` is the
    weighted mean ``Σ_b w_b ℓ_b / Σ_b w_b`` (so a batch with all weights equal gives the plain
    mean) and ``"sum"`` is ``Σ_b w_b ℓ_b``.

    Parameters
    ----------
    v_pred, u
        Predicted and target velocities, (B, G).
    weight
        Non-negative per-cell weights (B,), or None.
    reduction
        ``"mean"`` → scalar, ``"sum"`` → scalar, ``"none"`` → per-cell (weighted) losses (B,).

    Returns
    -------
    loss : () or (B,)
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if v_pred.shape != u.shape:
        raise ValueError(f"v_pred and u must have the same shape, got {tuple(v_pred.shape)} and {tuple(u.shape)}")
    per_cell = (v_pred - u).square().mean(dim=-1)  # (B,)
    if weight is not None:
        per_cell = per_cell * weight.to(per_cell.dtype)
    if reduction == "none":
        return per_cell
    if reduction == "sum":
        return per_cell.sum()
    if weight is None:
        return per_cell.mean()
    return per_cell.sum() / weight.sum().to(per_cell.dtype).clamp_min(1e-12)  # all-zero weights → 0, not NaN
