"""``VelocityField``: the contract every backbone fulfils (what :class:`~grndiff.train.FlowModule`,
the samplers and :mod:`grndiff.tl` call).

A backbone subclasses it and writes one method, :meth:`VelocityField.velocity`; time is broadcast
and classifier-free guidance is done here, once for all backbones.
"""
from __future__ import annotations

import torch
from torch import nn


class VelocityField(nn.Module):
    """Base class of the velocity networks ``v(x_t, t, conditions)`` (B, G) → (B, G).

    Subclasses set ``n_genes`` and ``condition_specs`` and implement :meth:`velocity`. Optional:
    ``pooling`` (a :class:`~grndiff.nn.ModulePooling`, read by the token tools) and
    ``graph_layers()`` (the graph-attention layers, read by the plots).
    """

    n_genes: int

    @property
    def condition_specs(self) -> list:
        return self.cond_embed.specs

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict | None, pert: torch.Tensor | None,
                 force_drop: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """``x`` (B, G), ``t`` (B,) → ``v`` (B, G) and extras (``tokens`` (B, P, D), ``activity``
        (B, P); ``{}`` without module tokens). ``force_drop`` (B,) bool: cells whose conditions
        are replaced by the null token (the unconditional half of guidance)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, t, cond: dict | None = None, pert: torch.Tensor | None = None, *,
                force_drop: torch.Tensor | None = None, return_tokens: bool = False):
        """Velocity at ``x`` (B, G), time ``t`` (B,) or a scalar; with ``return_tokens`` also the extras."""
        B, G = x.shape
        if G != self.n_genes:
            raise ValueError(f"x has {G} genes, the model was built for {self.n_genes}")
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        t = t.expand(B) if t.dim() == 0 else t
        v, extras = self.velocity(x, t, cond, pert, force_drop)
        return (v, extras) if return_tokens else v

    def forward_with_cfg(self, x, t, cond=None, pert=None, guidance: float = 1.0) -> torch.Tensor:
        """Classifier-free guidance, both halves in one batch: ``v_u + w (v_c − v_u)`` → (B, G)."""
        if guidance == 1.0 or not self.condition_specs:
            return self(x, t, cond, pert)
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        t = t.expand(B) if t.dim() == 0 else t
        cond2 = {k: torch.cat([v, v]) for k, v in (cond or {}).items()}
        drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(x.device)
        pert2 = None if pert is None else torch.cat([pert, pert])
        v_c, v_u = self(torch.cat([x, x]), torch.cat([t, t]), cond2, pert2, force_drop=drop).chunk(2)
        return v_u + guidance * (v_c - v_u)
