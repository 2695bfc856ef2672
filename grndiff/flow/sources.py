"""Where the flow starts: ``x₀`` is Gaussian noise (generation) or control cells (transport).

Transporting control cells to perturbed cells, rather than noise to cells, follows the
"source = control population" formulation of CellFlow / conditional OT maps; the path and the
loss are the same either way.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

_SOURCES = ("noise", "control")


def seeded_noise(shape: Sequence[int], seed: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) noise drawn from a private CPU generator, then moved.

    Drawing on the CPU makes the numbers depend on ``seed`` and ``shape`` only: bitwise identical
    across runs, and the same cells on CPU and GPU (CUDA's generator is a different stream).
    Noise is always drawn in float32 and then cast, so float32 and float64 runs start from the
    same points. The global RNG is left untouched.

    Parameters
    ----------
    shape
        Usually ``(B, G)``.
    seed
        Integer seed.
    device, dtype
        Where and how the result is returned.

    Returns
    -------
    x0 : ``shape``
    """
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def sample_source(like: torch.Tensor | Sequence[int], source: str = "noise", x_control: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """The flow's ``x₀`` for a batch of data cells.

    Parameters
    ----------
    like
        The data batch ``x₁`` (B, G) — its shape, device and dtype are used — or a shape ``(B, G)``.
    source
        ``"noise"``: draw N(0, I). ``"control"``: return ``x_control`` (paired control cells).
    x_control
        Control cells (B, G), required for ``source="control"``.
    generator
        Random stream for the noise (must live on the target device).
    device, dtype
        Override the device / dtype (default: those of ``like``, else CPU float32).

    Returns
    -------
    x0 : (B, G)
    """
    if isinstance(like, torch.Tensor):
        shape = tuple(like.shape)
        device = like.device if device is None else device
        dtype = like.dtype if dtype is None else dtype
    else:
        shape = tuple(int(s) for s in like)
    dtype = torch.float32 if dtype is None else dtype
    if source == "noise":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if source == "control":
        if x_control is None:
            raise ValueError("source='control' needs x_control, the control cells paired with the batch "
                             "(batch['x0']); pass them or use source='noise'")
        if tuple(x_control.shape) != shape:
            raise ValueError(f"x_control has shape {tuple(x_control.shape)} but the batch is {shape}: pair one "
                             "control cell with every data cell, over the same genes")
        return x_control.to(device=device, dtype=dtype)
    raise ValueError(f"source must be one of {_SOURCES}, got {source!r}")
