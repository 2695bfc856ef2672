"""Training-time distributions over the path time ``t ∈ [0, 1]``."""
from __future__ import annotations

import torch

_SCHEDULES = ("logit_normal", "uniform")


def sample_time(B: int, *, schedule: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
                generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Draw one training time per cell.

    ``"logit_normal"``: ``t = sigmoid(z)``, ``z ~ N(mean, std²)``; puts more weight on the middle
    of the path, where the marginal velocity is hardest to predict (Esser et al. 2024, "Scaling
    rectified flow transformers", arXiv:2403.03206; their default is mean 0, std 1).
    ``"uniform"``: ``t ~ U[0, 1)`` (Liu et al. 2022; Lipman et al. 2022).

    Parameters
    ----------
    B
        Number of cells.
    schedule
        ``"logit_normal"`` or ``"uniform"``.
    mean, std
        Location and scale of the logit (logit-normal only).
    generator
        Random stream; the draw happens on its device (so a CUDA generator works), then moves.
    device
        Device of the result (default: the generator's, else CPU).

    Returns
    -------
    t : (B,) float32
    """
    gen_device = generator.device if generator is not None else device
    if schedule == "uniform":
        t = torch.rand(B, generator=generator, device=gen_device)
    elif schedule == "logit_normal":
        if std <= 0:
            raise ValueError(f"std must be > 0 for the logit-normal schedule, got {std}")
        t = torch.sigmoid(mean + std * torch.randn(B, generator=generator, device=gen_device))
    else:
        raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
    return t if device is None else t.to(device)
