"""DiT-style blocks with adaLN-Zero modulation (Peebles & Xie 2023, "Scalable Diffusion Models
with Transformers"): LayerNorm without affine, shift/scale/gate regressed from the conditioning
vector ``c`` (B, D), modulation outputs zero-initialised so every block starts as the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .graph_attention import GraphAttention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N, D), ``shift``/``scale`` (B, D) → (B, N, D)."""
    return _modulate(x, shift.unsqueeze(1), scale.unsqueeze(1))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x (1 + scale) + shift`` with ``shift``/``scale`` already broadcastable to ``x``.

    One fused ``addcmul``: at G·B·D node states every extra element-wise pass is a full-size
    temporary (allocated, written, read back in the backward).
    """
    return torch.addcmul(shift, x, 1 + scale)


class Mlp(nn.Module):
    def __init__(self, hidden: int, ratio: float = 2.0):
        super().__init__()
        inner = int(hidden * ratio)
        self.fc1, self.fc2 = nn.Linear(hidden, inner), nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CrossCondition(nn.Module):
    """Cross-attention from node or token states to condition tokens: ``x + Wₒ·attn(LN(x), ctx)``.

    ``ctx`` (B, K, D) holds one token per condition (and the perturbation summary); every state of
    cell ``b`` attends to that cell's K tokens only. Batch-major ``x`` (B, N, D) or gene-major
    (N, B, D) (``gene_major=True``). Cost O(N·B·K·D) + O(N·B·D²) for the projections. The output
    projection is zero-initialised: the branch starts as the identity, as adaLN-Zero blocks do.
    """

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.q, self.kv, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, 2 * hidden), nn.Linear(hidden, hidden)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, gene_major: bool = False) -> torch.Tensor:
        B, K, D = ctx.shape
        H, d = self.heads, D // self.heads
        k, v = self.kv(ctx).view(B, K, 2, H, d).unbind(2)  # (B, K, H, d) each
        q = self.q(self.norm(x))
        if gene_major:  # x (N, B, D)
            q = q.view(*x.shape[:2], H, d)
            w = torch.einsum("nbhd,bkhd->nbhk", q, k).mul(d ** -0.5).softmax(-1)
            y = torch.einsum("nbhk,bkhd->nbhd", w, v)
        else:  # x (B, N, D)
            q = q.view(*x.shape[:2], H, d)
            w = torch.einsum("bnhd,bkhd->bnhk", q, k).mul(d ** -0.5).softmax(-1)
            y = torch.einsum("bnhk,bkhd->bnhd", w, v)
        return x + self.out(y.reshape(x.shape))


class AdaLNBlock(nn.Module):
    """``x + gate·mixer(modulate(LN(x)))`` then ``x + gate·MLP(modulate(LN(x)))``.

    ``mixer`` maps (B, N, D) → (B, N, D): graph attention over genes or full attention over tokens.
    With ``cross_heads > 0`` a :class:`CrossCondition` branch to condition tokens ``ctx`` (B, K, D)
    runs between the two (cross-attention conditioning).
    """

    def __init__(self, hidden: int, mixer: nn.Module, mlp_ratio: float = 2.0, cross_heads: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mixer = mixer
        self.mlp = Mlp(hidden, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        # zero-init: the block starts as the identity (adaLN-Zero)
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)
        self.cross = CrossCondition(hidden, cross_heads) if cross_heads else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, N, D), ``c`` (B, D), condition tokens ``ctx`` (B, K, D) or None → (B, N, D)."""
        mods = [m.unsqueeze(1) for m in self.adaLN_modulation(c).chunk(6, dim=-1)]  # (B, 1, D) each
        return self._residuals(x, mods, self.mixer, ctx)

    def forward_genes(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Gene-major ``x`` (N, B, D) → (N, B, D); mixers without a gene-major path run on the transpose."""
        return self(x.transpose(0, 1), c, ctx).transpose(0, 1)

    def _residuals(self, x: torch.Tensor, mods, mixer, ctx=None, gene_major: bool = False) -> torch.Tensor:
        """The gated residual branches; ``mods`` (shift, scale, gate) ×2, broadcastable to ``x``."""
        sh1, sc1, g1, sh2, sc2, g2 = mods
        compiled = fused.is_enabled()  # the element-wise passes through torch.compile (grndiff.nn.fused)
        h = (fused.get("ln_modulate")(x, sh1, sc1, self.norm1.eps) if compiled
             else _modulate(self.norm1(x), sh1, sc1))
        x = torch.addcmul(x, g1, mixer(h))  # x + g1 · mixer(modulate(LN(x)))
        if self.cross is not None and ctx is not None and ctx.shape[1]:
            x = self.cross(x, ctx, gene_major)
        if compiled:
            m = self.mlp
            return fused.get("mlp_residual")(x, sh2, sc2, g2, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias,
                                             self.norm2.eps)
        return torch.addcmul(x, g2, self.mlp(_modulate(self.norm2(x), sh2, sc2)))


class GraphDiTBlock(AdaLNBlock):
    """adaLN-Zero block whose mixer is :class:`GraphAttention` over the shared gene graph."""

    def __init__(self, hidden: int, heads: int, n_genes: int, edge_index: torch.Tensor,
                 edge_sign=None, edge_weight=None, edge_type=None, mode: str = "shared",
                 mlp_ratio: float = 2.0, cross_heads: int = 0):
        attn = GraphAttention(hidden, heads, n_genes, edge_index, edge_sign, edge_weight, edge_type, mode=mode)
        super().__init__(hidden, attn, mlp_ratio, cross_heads)

    def forward_genes(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Gene-major ``x`` (G, B, D), ``c`` (B, D), ``ctx`` (B, K, D) or None → (G, B, D); equal to
        ``forward`` on ``x.transpose(0, 1)``."""
        mods = self.adaLN_modulation(c).chunk(6, dim=-1)  # (B, D) each: broadcasts over genes as is
        return self._residuals(x, mods, self.mixer.forward_genes, ctx, gene_major=True)

    @property
    def attn(self) -> GraphAttention:
        return self.mixer


class FullAttention(nn.Module):
    """Multi-head self-attention over all N tokens (``scaled_dot_product_attention``)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class TokenBlock(AdaLNBlock):
    """adaLN-Zero block with full attention over P pathway tokens (or all genes)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 2.0, cross_heads: int = 0):
        super().__init__(hidden, FullAttention(hidden, heads), mlp_ratio, cross_heads)


class FinalLayer(nn.Module):
    """adaLN + linear read-out of one scalar per node; zero-initialised so v ≡ 0 at init."""

    def __init__(self, hidden: int, out: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        for lin in (self.linear, self.adaLN_modulation[-1]):  # zero-init: output 0 at init
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, D), ``c`` (B, D) → (B, N, out); gene-major ``x`` (N, B, D) → (N, B, out)
        with :meth:`forward_genes`."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))

    def forward_genes(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # (B, D): broadcast over genes
        return self.linear(_modulate(self.norm(x), shift, scale))
