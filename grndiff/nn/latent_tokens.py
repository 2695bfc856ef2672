"""``backbone="latent_tokens"``: a Perceiver-style velocity field (Perceiver IO, Jaegle et al. 2021,
"Perceiver IO: A General Architecture for Structured Inputs & Outputs").

::

    x_t (B, G) ─► GeneEmbedder (+ perturbation flags on perturbed genes) ─► genes (B, G, D)
    t, conditions ─► c = t_emb + cond_emb (+ perturbation summary)               (B, D)
    M learned latents (M, D) ─► cross-attention: latents ← genes ─► (B, M, D)    read
      ─► [TokenBlock]×depth over the M latents                                   process
    genes ─► cross-attention: genes ← latents ─► FinalLayer ─► v (B, G)          write

No gene graph: genes interact only through the M latents, so the cost is linear in G (never G²).
Every residual branch is adaLN-Zero except the read's attention (gate 1 at init, so the latents see
the cell from the first step), and the read-out is zero-initialised: ``v ≡ 0`` at init, so the flow
starts as the identity map of its source.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import register_backbone
from .blocks import AdaLNBlock, FinalLayer, TokenBlock
from .conditions import ConditionEmbedder, PerturbationEmbedder
from .embed import GeneEmbedder, TimestepEmbedder
from .velocity import VelocityField

__all__ = ["CrossAttention", "CrossAttentionBlock", "LatentTokenVelocity"]


class CrossAttention(nn.Module):
    """Multi-head attention of N query tokens over K context tokens: (B, N, D), (B, K, D) → (B, N, D).

    Cost O(B·N·K·D) (plus O(B·(N + K)·D²) for the projections).
    """

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        K, H = ctx.shape[1], self.heads
        q = self.q(x).view(B, N, H, D // H).transpose(1, 2)  # (B, H, N, d)
        k, v = self.kv(ctx).view(B, K, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, K, d) each
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class CrossAttentionBlock(AdaLNBlock):
    """adaLN block whose mixer is :class:`CrossAttention` of ``x`` (B, N, D) over ``ctx`` (B, K, D).

    ``x + g1·attn(modulate(LN(x)), LN(ctx))`` then ``x + g2·MLP(modulate(LN(x)))``; shift, scale and
    gate regressed from ``c`` and zero-initialised (adaLN-Zero), except that ``attn_gate`` sets the
    attention gate's initial value (1: the branch is open at init, as in a Perceiver's read).
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 2.0, attn_gate: float = 0.0):
        super().__init__(hidden, CrossAttention(hidden, heads), mlp_ratio)
        self.norm_ctx = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        if attn_gate:
            with torch.no_grad():
                self.adaLN_modulation[-1].bias[2 * hidden:3 * hidden] = attn_gate

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, D), ``ctx`` (B, K, D), ``c`` (B, D) → (B, N, D)."""
        mods = [m.unsqueeze(1) for m in self.adaLN_modulation(c).chunk(6, dim=-1)]  # (B, 1, D) each
        kv = self.norm_ctx(ctx)
        return self._residuals(x, mods, lambda q: self.mixer(q, kv))


class LatentTokenVelocity(VelocityField):
    """Latent-token (Perceiver IO) velocity field: (B, G) → (B, G) through M learned latent tokens.

    Genes are tokens (gene identity + embedded value, :class:`GeneEmbedder`); ``M`` learned latent
    tokens read them by one cross-attention (queries: latents; keys/values: genes), ``depth``
    adaLN-Zero transformer blocks (:class:`TokenBlock`) mix the latents under ``c = t_emb +
    cond_emb (+ perturbation summary)``, and every gene token reads the latents back by
    cross-attention (queries: genes; keys/values: latents) before a zero-initialised linear read-out
    (:class:`FinalLayer`, one scalar per gene token). Gene perturbations (``pert`` (B, S) gene
    codes, ``-1`` padded) add a learned "perturbed" flag to the perturbed genes' tokens and a summary
    of their identities to ``c`` (:class:`PerturbationEmbedder` without a graph: no propagation).

    Cost, for B cells, G genes, width D, M latents, MLP ratio r, ``depth`` L:

    - FLOPs ≈ 2·B·[G·D·((4 + 2r)·D + 4M)  (gene-side projections, MLP; the read's and the write's attention)
      + (2 + 2r)·M·D²  (the read's query side) + L·M·D·((4 + 2r)·D + 2M)  (latent blocks)]
      — linear in G, never G²;
    - activations O(B·G·D) (a few gene-token tensors per cross-attention) plus the attention weights
      O(B·H·G·M) where ``scaled_dot_product_attention`` materialises them;
    - parameters G·D (gene identities) + M·D (latents) + O((L + 2)·(4 + 2r + 6)·D²): apart from the
      gene identities, independent of G.

    On a CPU the read and the write dominate: with head width D/H = 8 the attention kernels run far
    below matmul speed (M = 16 costs about what the default ``grn`` model does at small G).

    Parameters
    ----------
    n_genes
        ``G``.
    condition_specs
        :class:`ConditionSpec` or dicts ``{"name", "kind", "n_categories"}``.
    hidden, heads
        Width ``D`` and attention heads ``H`` (``D`` divisible by ``H``).
    n_tokens
        Number of latent tokens ``M``.
    depth
        Transformer blocks over the latents.
    mlp_ratio
        Hidden width of every MLP, as a multiple of ``D``.
    value_embedding
        ``"fourier"`` or ``"mlp"`` (see :class:`GeneEmbedder`).
    perturbation
        Accept gene perturbations ``pert`` (B, S); an int > 1 is the number of perturbation kinds
        (codes ``gene + G · kind``), 0 / ``False`` none.
    cond_dropout
        Classifier-free guidance dropout probability.
    """

    def __init__(self, n_genes: int, condition_specs=(), *, hidden: int = 32, heads: int = 4, n_tokens: int = 64,
                 depth: int = 2, mlp_ratio: float = 2.0, value_embedding: str = "fourier", perturbation: int = 0,
                 cond_dropout: float = 0.1):
        super().__init__()
        if int(n_tokens) < 1:
            raise ValueError(f"n_tokens must be ≥ 1, got {n_tokens}")
        if int(depth) < 0:
            raise ValueError(f"depth must be ≥ 0, got {depth}")
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.n_genes, self.hidden, self.n_tokens = int(n_genes), int(hidden), int(n_tokens)
        self.embed = GeneEmbedder(n_genes, hidden, value=value_embedding)
        self.t_embed = TimestepEmbedder(hidden)
        self.cond_embed = ConditionEmbedder(condition_specs, hidden, dropout_prob=cond_dropout)
        self.pert_embed = (PerturbationEmbedder(n_genes, hidden, n_kinds=int(perturbation))
                           if perturbation else None)
        self.latents = nn.Parameter(torch.randn(self.n_tokens, hidden) * 0.02)  # (M, D)
        self.read = CrossAttentionBlock(hidden, heads, mlp_ratio, attn_gate=1.0)  # latents ← genes
        self.blocks = nn.ModuleList(TokenBlock(hidden, heads, mlp_ratio) for _ in range(int(depth)))
        self.write = CrossAttentionBlock(hidden, heads, mlp_ratio)  # genes ← latents
        self.final = FinalLayer(hidden)  # zero-initialised: v ≡ 0 at init

    def conditioning(self, t: torch.Tensor, cond, pert, B: int, force_drop=None):
        """``c`` (B, D) and the per-gene perturbation term (B, G, D) or ``None``."""
        c = self.t_embed(t) + self.cond_embed(cond, B, device=t.device, force_drop=force_drop)  # (B, D)
        node = None
        if self.pert_embed is not None and pert is not None:
            node, glob = self.pert_embed(pert, self.embed.identity.weight)  # (B, G, D), (B, D)
            c = c + glob
        return c, node

    def velocity(self, x, t, cond, pert, force_drop):
        """See :meth:`VelocityField.velocity`: ``v`` (B, G) and ``{"tokens": latents (B, M, D)}``."""
        B = x.shape[0]
        c, node = self.conditioning(t, cond, pert, B, force_drop)
        genes = self.embed(x)  # (B, G, D)
        if node is not None:
            genes = genes + node
        lat = self.latents.to(genes.dtype).unsqueeze(0).expand(B, -1, -1)  # (B, M, D)
        lat = self.read(lat, genes, c)  # O(B·M·G·D)
        for blk in self.blocks:
            lat = blk(lat, c)  # O(B·M²·D + B·M·D²)
        h = self.write(genes, lat, c)  # (B, G, D), O(B·G·M·D)
        v = self.final(h, c).squeeze(-1)  # (B, G)
        return v, {"tokens": lat}

    @property
    def max_sampling_cells(self) -> int:
        """Cells per sampler call: a gene-token tensor (B, G, D) stays near 128 MB (as for ``grn``)."""
        return max(16, 2**25 // (self.n_genes * self.hidden))


@register_backbone("latent_tokens")
def _latent_tokens(inputs, hidden: int = 32, heads: int = 4, n_tokens: int = 64, depth: int = 2,
                   mlp_ratio: float = 2.0, cond_dropout: float = 0.1, value_embedding: str = "fourier"):
    if int(inputs.get("n_latent") or 0):
        raise ValueError(f"the graph has {inputs['n_latent']} latent nodes (unmeasured perturbed genes); "
                         "backbone='latent_tokens' has no graph to hold them. Use backbone='grn', or perturb "
                         "measured genes only.")
    return LatentTokenVelocity(inputs["n_genes"], inputs.get("condition_specs", []), hidden=hidden, heads=heads,
                               n_tokens=n_tokens, depth=depth, mlp_ratio=mlp_ratio, value_embedding=value_embedding,
                               perturbation=int(inputs.get("perturbation") or 0), cond_dropout=cond_dropout)
