"""The straight (rectified-flow) probability path and its regression loss.

Rectified flow / flow matching (Liu et al. 2022, arXiv:2209.03003; Lipman et al. 2022,
arXiv:2210.02747): ``x_t = (1 − t) x₀ + t x₁`` with target velocity ``u = x₁ − x₀``; the network
regresses ``u`` from ``(x_t, t)``. ``x₀`` is the source (noise or control cells), ``x₁`` the data.
"""
from __future__ import annotations

import torch


def _bt(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast per-cell times (B,) against (B, G)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.view(-1, *([1] * (x.dim() - 1))) if t.dim() else t


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sigma: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_t = (1 − t) x₀ + t x₁ (+ σ ε)`` → (B, G). ``t`` is (B,) or a scalar."""
    tt = _bt(t, x0)
    xt = (1 - tt) * x0 + tt * x1
    if sigma > 0:
        xt = xt + sigma * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return xt


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """``u = x₁ − x₀`` → (B, G), the conditional velocity of the straight path."""
    return x1 - x0


def flow_loss(v_pred: torch.Tensor, u: torch.Tensor, weight: torch.Tensor | None = None,
              reduction: str = "mean") -> torch.Tensor:
    """Per-cell MSE averaged over genes, then (weighted) over cells.

    ``reduction="none"`` returns the per-cell losses (B,).
    """
    per_cell = (v_pred - u).square().mean(dim=-1)  # (B,)
    if weight is not None:
        per_cell = per_cell * weight
    if reduction == "none":
        return per_cell
    if reduction == "sum":
        return per_cell.sum()
    return per_cell.mean() if weight is None else per_cell.sum() / weight.sum().clamp_min(1e-12)


def sample_source(shape, source: str = "noise", x_control: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """The flow's ``x₀``: N(0, I) noise of ``shape`` or the given control cells."""
    if source == "noise":
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if source == "control":
        if x_control is None:
            raise ValueError("source='control' needs x_control (the paired control cells)")
        return x_control
    raise ValueError(f"source must be 'noise' or 'control', got {source!r}")


def seeded_noise(shape, seed: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) noise from a private CPU generator: bitwise reproducible for a seed, then moved."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
