"""Baseline backbones with the :class:`GRNTransformer` interface, for the tokenisation ablation.

- :class:`MLPVelocity` — no tokens: the whole expression vector through a residual adaLN MLP
  (the "Approach 3" of the design seeds; also run in a PCA latent by the benchmarks).
- :func:`gene_token_transformer` — every gene a token, full attention (O(G²): small G only).
- :func:`modules_only` — module tokens with no gene graph (self-loops only).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import Mlp, modulate
from .conditions import ConditionEmbedder, PerturbationEmbedder
from .embed import TimestepEmbedder
from .transformer import GRNTransformer
from .velocity import VelocityField


class _ResBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, 2.0)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 3 * hidden))
        nn.init.zeros_(self.ada[-1].weight)  # zero-init: identity at init
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, h, c):
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return h + gate * self.mlp(modulate(self.norm(h).unsqueeze(1), shift, scale).squeeze(1))


class MLPVelocity(VelocityField):
    """Residual MLP velocity on the whole vector: (B, G) → (B, G).

    Parameters
    ----------
    n_genes
        ``G`` (or the latent width when run in a PCA space).
    condition_specs
        As for :class:`GRNTransformer`.
    hidden, depth
        Width and number of residual blocks.
    perturbation
        Accept ``pert`` (B, S): a (B, G) indicator of perturbed genes is embedded into ``c``.
    """

    def __init__(self, n_genes: int, condition_specs=(), *, hidden: int = 512, depth: int = 3,
                 perturbation: bool = False, cond_dropout: float = 0.1):
        super().__init__()
        self.n_genes = n_genes
        self.inp = nn.Linear(n_genes, hidden)
        self.t_embed = TimestepEmbedder(hidden)
        self.cond_embed = ConditionEmbedder(condition_specs, hidden, dropout_prob=cond_dropout)
        self.gene_identity = nn.Parameter(torch.randn(n_genes, hidden) * 0.02) if perturbation else None
        self.pert_embed = PerturbationEmbedder(n_genes, hidden, n_kinds=int(perturbation)) if perturbation else None
        self.blocks = nn.ModuleList(_ResBlock(hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.out = nn.Linear(hidden, n_genes)
        nn.init.zeros_(self.out.weight)  # zero-init: v ≡ 0 at init
        nn.init.zeros_(self.out.bias)

    def velocity(self, x, t, cond, pert, force_drop):
        B = x.shape[0]
        c = self.t_embed(t) + self.cond_embed(cond, B, device=x.device, force_drop=force_drop)  # (B, D)
        if self.pert_embed is not None and pert is not None:
            c = c + self.pert_embed(pert, self.gene_identity)[1]
        h = self.inp(x)  # (B, D)
        for blk in self.blocks:
            h = blk(h, c)
        v = self.out(self.norm(h))  # (B, G)
        return v, {}


def gene_token_transformer(n_genes: int, condition_specs=(), **kw) -> GRNTransformer:
    """Every gene a token with full attention over all genes (memory O(B·H·G²))."""
    kw.pop("membership", None)
    for k in ("edge_index", "edge_sign", "edge_weight", "edge_type"):
        kw.pop(k, None)
    return GRNTransformer(n_genes, condition_specs=condition_specs, mixer="full", **kw)


def modules_only(n_genes: int, membership: torch.Tensor | None, condition_specs=(), **kw) -> GRNTransformer:
    """Module tokens without a gene graph: genes interact only through their modules."""
    for k in ("edge_index", "edge_sign", "edge_weight", "edge_type"):
        kw.pop(k, None)
    return GRNTransformer(n_genes, None, condition_specs=condition_specs, membership=membership, **kw)
