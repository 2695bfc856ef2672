"""Embedders for time, gene values and gene identity.

Shapes: ``B`` cells, ``G`` genes, ``D`` hidden width.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of ``t ∈ [0, 1]`` followed by an MLP (DiT, Peebles & Xie 2023).

    Parameters
    ----------
    hidden
        Output width ``D``.
    n_freq
        Number of sinusoidal frequencies (features = ``2 * n_freq``).
    """

    def __init__(self, hidden: int, n_freq: int = 128, max_period: float = 10_000.0):
        super().__init__()
        self.n_freq = n_freq
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def features(self, t: torch.Tensor) -> torch.Tensor:
        # t in [0, 1] is stretched to [0, 1000] so the frequencies match DiT's integer steps.
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(self.n_freq, device=t.device, dtype=torch.float32)
            / self.n_freq
        )
        args = (t.float() * 1000.0)[:, None] * freqs[None]  # (B, F)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2F)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (B,) → (B, D)."""
        return self.mlp(self.features(t).to(self.mlp[0].weight.dtype))


class GeneEmbedder(nn.Module):
    """Gene identity embedding plus a projection of the scalar (noisy) value.

    ``h[b, g] = E_id[g] + W · φ(x[b, g])`` where ``φ`` are random-free Fourier features
    ``[x, sin(2π f x), cos(2π f x)]`` on a fixed log-spaced frequency grid (Tancik et al. 2020),
    or the raw value through a 2-layer MLP when ``value="mlp"``.

    Parameters
    ----------
    n_genes
        ``G``.
    hidden
        ``D``.
    value
        ``"fourier"`` or ``"mlp"``.
    n_freq
        Fourier frequencies.
    """

    def __init__(self, n_genes: int, hidden: int, value: str = "fourier", n_freq: int = 8):
        super().__init__()
        if value not in ("fourier", "mlp"):
            raise ValueError(f"value must be 'fourier' or 'mlp', got {value!r}")
        self.value = value
        self.identity = nn.Embedding(n_genes, hidden)
        if value == "fourier":
            self.register_buffer("freqs", torch.logspace(-1, 1, n_freq), persistent=False)
            self.proj = nn.Linear(1 + 2 * n_freq, hidden)
        else:
            self.register_buffer("freqs", None, persistent=False)
            self.proj = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        nn.init.normal_(self.identity.weight, std=0.02)

    def value_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(-1)  # (B, G, 1)
        if self.value == "mlp":
            return x
        args = 2 * math.pi * x * self.freqs  # (B, G, F)
        return torch.cat([x, torch.sin(args), torch.cos(args)], dim=-1)  # (B, G, 1 + 2F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, G) → (B, G, D)."""
        return self.proj(self.value_features(x)) + self.identity.weight  # (B, G, D)

    def forward_genes(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, G) → gene-major (G, B, D) (the layout of the graph stack)."""
        return self.proj(self.value_features(x.T)) + self.identity.weight.unsqueeze(1)  # (G, B, D)
