"""Training-time distributions over ``t ∈ (0, 1)``."""
from __future__ import annotations

import torch


def sample_time(B: int, *, schedule: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
                generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Draw B times (B,).

    ``"logit_normal"``: ``t = sigmoid(N(mean, std²))`` puts more weight on the middle of the
    path, where the velocity is hardest to predict (Esser et al. 2024, arXiv:2403.03206).
    ``"uniform"``: U(0, 1).
    """
    if schedule == "uniform":
        t = torch.rand(B, generator=generator)
    elif schedule == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(B, generator=generator))
    else:
        raise ValueError(f"schedule must be 'logit_normal' or 'uniform', got {schedule!r}")
    return t.to(device) if device is not None else t
