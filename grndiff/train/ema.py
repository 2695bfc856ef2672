"""Exponential moving average of weights, used for sampling (as in DiT / EDM)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Keeps ``shadow = decay·shadow + (1 − decay)·params``; buffers are copied.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so early, fast-changing
    weights are not averaged for thousands of steps (warm-up used by many diffusion codebases).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.n_updates)
        d = min(self.decay, (1 + n) / (10 + n))
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach().to(s.dtype), 1 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)
        self.n_updates += 1
