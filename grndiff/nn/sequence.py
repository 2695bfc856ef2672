"""A state-space sequence model over the genes laid out in a graph-derived order (``backbone="ssm"``).

::

    x_t (B, G) ─► permute into graph_order ─► gene tokens (identity + value; + perturbation flags)  (B, G, D)
    t, conditions ─► c = t_emb + cond_emb (+ perturbation summary)                                  (B, D)
    h ─► [SequenceBlock]×L ─► adaLN + zero-initialised per-gene head ─► un-permute ─► v (B, G)

    SequenceBlock: h + g₁ · out(LongConv(u) · σ(gate(u))),   u = modulate(LN(h), c)    (adaLN-Zero)
                   h + g₂ · MLP(modulate(LN(h), c))

The genes become a sequence by :func:`graph_order` (a BFS or spectral order of the prior graph, so
regulators sit near their targets); a bidirectional long convolution (:class:`LongConv`, a diagonal
state-space kernel in the family of S4, Gu et al. 2022, and Hyena, Poli et al. 2023) mixes every
gene with every other in ``O(G log G)`` through the FFT, with no attention and no G² memory.

Cost per layer, ``B`` cells, ``G`` genes, width ``D``, ``N`` kernel modes: FLOPs
``O(B·D·G log G)`` for the convolution plus ``O(B·G·D²)`` for the projections and the MLP, and
``O(D·N·G)`` to generate the kernel (independent of ``B``); memory ``O(B·G·D)`` activations plus
``O(D·N·G)`` for the kernel.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import register_backbone
from .blocks import Mlp, _modulate
from .conditions import attach_input_embedders
from .velocity import VelocityField

__all__ = ["LongConv", "SequenceBlock", "SequenceVelocity", "graph_order", "long_conv"]

ORDERS = ("bfs", "spectral")
MAX_SPECTRAL = 3000  # components larger than this are ordered by BFS (a dense eigendecomposition is O(n³))


# ------------------------------------------------------------------ the gene order
def graph_order(n_genes: int, edge_index: torch.Tensor | None = None, method: str = "bfs",
                max_spectral: int = MAX_SPECTRAL) -> torch.Tensor:
    """A permutation of the ``G`` genes (LongTensor (G,)) that keeps neighbours of the prior graph close.

    The graph is taken undirected (self-loops, repeated edges and indices ``≥ G`` are ignored).

    - ``"bfs"``: breadth-first search from the gene of highest out-degree (most targets as a
      regulator; ties → lowest index) that is not placed yet, neighbours visited by decreasing
      out-degree then index; one connected component after another (each seeded the same way);
    - ``"spectral"``: the same components in the same sequence, each ordered by its Fiedler vector
      (the eigenvector of the second-smallest eigenvalue of the normalised Laplacian
      ``I − D^{-1/2} A D^{-1/2}``, dense ``eigh`` in float64; the sign is fixed so that the seed
      gene lies on the first side). A component of more than ``max_spectral`` genes keeps its BFS
      order (the dense eigendecomposition costs ``O(n³)`` time and ``O(n²)`` memory).

    Genes without any edge come last, in index order. Deterministic: the same graph gives the same order.
    """
    if method not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {method!r}")
    G = int(n_genes)
    if edge_index is None:
        return torch.arange(G)
    ei = torch.as_tensor(edge_index, dtype=torch.long).reshape(2, -1).cpu()
    keep = (ei[0] != ei[1]) & (ei >= 0).all(0) & (ei < G).all(0)
    ei = ei[:, keep]
    if not ei.shape[1]:
        return torch.arange(G)
    directed = torch.unique(ei[0] * G + ei[1])
    outdeg = torch.bincount(directed // G, minlength=G)
    src, dst = directed // G, directed % G
    und = torch.unique(torch.cat([src * G + dst, dst * G + src]))
    u, v = und // G, und % G
    deg = torch.bincount(u, minlength=G)
    # priority: decreasing out-degree, then index (a stable sort of the indices by −out-degree)
    priority = torch.sort(-outdeg, stable=True).indices
    rank = torch.empty(G, dtype=torch.long)
    rank[priority] = torch.arange(G)
    by = torch.argsort(u * G + rank[v])  # neighbour lists grouped by gene, each in priority order
    nbrs = torch.split(v[by], deg.tolist())
    nbrs = [n.tolist() for n in nbrs]
    placed = [False] * G
    order: list[int] = []
    for s in priority.tolist():
        if placed[s] or deg[s] == 0:
            continue
        comp, placed[s], head = [s], True, 0
        while head < len(comp):
            for w in nbrs[comp[head]]:
                if not placed[w]:
                    placed[w] = True
                    comp.append(w)
            head += 1
        if method == "spectral" and 2 < len(comp) <= max_spectral:
            comp = _fiedler_order(comp, nbrs)
        order += comp
    order += [g for g in range(G) if deg[g] == 0]
    return torch.tensor(order, dtype=torch.long)


def _fiedler_order(comp: list[int], nbrs: list[list[int]]) -> list[int]:
    """The genes of one connected component sorted by the Fiedler vector of its normalised Laplacian."""
    n = len(comp)
    local = {g: i for i, g in enumerate(comp)}
    rows = [i for i, g in enumerate(comp) for _ in nbrs[g]]
    cols = [local[w] for g in comp for w in nbrs[g]]
    A = torch.zeros(n, n, dtype=torch.float64)
    A[rows, cols] = 1.0
    dm = A.sum(1).rsqrt()
    lap = torch.eye(n, dtype=torch.float64) - dm[:, None] * A * dm[None, :]
    f = torch.linalg.eigh(lap).eigenvectors[:, 1]
    if f[0] > 0:  # the seed (comp[0], the highest out-degree) on the first side
        f = -f
    idx = torch.sort(f, stable=True).indices.tolist()
    return [comp[i] for i in idx]


# ------------------------------------------------------------------ the long convolution
def _fft_size(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ ``n`` (sizes the FFT computes fastest)."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


class _FFTConv(torch.autograd.Function):
    """``y = irfft(rfft(u, n) · rfft(k, n))[..., :L]`` along the last axis, with a backward of FFTs
    too (correlations: ``∂u = irfft(rfft(∂y, n) · conj(k̂))``, ``∂k = Σ_b irfft(rfft(∂y, n) · conj(û))``)
    — about one forward in cost, where autograd through ``rfft``/``irfft`` costs ~4 (full complex FFTs)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor, n: int) -> torch.Tensor:  # u (B, D, L), k (D, n)
        L = u.shape[-1]
        u_f, k_f = torch.fft.rfft(u, n=n), torch.fft.rfft(k, n=n)
        ctx.save_for_backward(u_f, k_f)
        ctx.n, ctx.L = n, L
        return torch.fft.irfft(u_f * k_f, n=n)[..., :L]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: torch.Tensor):
        u_f, k_f = ctx.saved_tensors
        n, L = ctx.n, ctx.L
        g_f = torch.fft.rfft(gy, n=n)  # (B, D, n/2 + 1)
        gu = torch.fft.irfft(g_f * k_f.conj(), n=n)[..., :L] if ctx.needs_input_grad[0] else None
        # Σ_b conj(û)·ĝ, without materialising the (B, D, n/2 + 1) product
        gk = torch.fft.irfft(torch.linalg.vecdot(u_f, g_f, dim=0), n=n) if ctx.needs_input_grad[1] else None
        return gu, gk, None


def long_conv(u: torch.Tensor, k_fwd: torch.Tensor, k_bwd: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel convolution along the sequence, by the FFT: ``u`` (B, L, D), kernels (D, L) → (B, L, D).

    ``y[i] = Σ_{j ≤ i} k_fwd[i − j] u[j] + Σ_{j > i} k_bwd[j − i] u[j]`` (``k_bwd[0]`` is unused:
    lag 0 belongs to the forward kernel); ``k_bwd=None`` is the causal convolution. Zero padding to
    ``n ≥ 2L − 1`` makes the circular convolution linear. ``O(B·D·L log L)`` forward and backward;
    computed in float32 (float64 stays float64) with autocast off, returned in ``u``'s dtype.
    """
    B, L, D = u.shape
    dtype = u.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    n = _fft_size(2 * L - 1)
    with torch.autocast(u.device.type, enabled=False):
        parts = [k_fwd.to(work), k_fwd.new_zeros(D, n - 2 * L + 1, dtype=work)]
        if k_bwd is not None and L > 1:
            parts.append(k_bwd[:, 1:].to(work).flip(-1))  # lag −l at n − l
        else:
            parts.append(k_fwd.new_zeros(D, L - 1, dtype=work))
        k = torch.cat(parts, dim=-1)  # (D, n)
        y = _FFTConv.apply(u.to(work).transpose(1, 2), k, n)  # (B, D, L)
    return y.transpose(1, 2).to(dtype)


class LongConv(nn.Module):
    """Bidirectional diagonal state-space convolution over a sequence (S4D, Gu et al. 2022).

    Per channel ``d`` and direction, the kernel of a diagonal linear SSM discretised with step
    ``Δ_d`` (zero-order hold): ``K[l] = 2·Re(Σ_n C̃_{dn} exp(Δ_d A_{dn} l))``,
    ``C̃ = C (exp(Δ A) − 1) / A``, with ``N`` complex modes ``A = −exp(a) + iω`` (S4D-Lin
    initialisation ``A = −½ + iπn``), ``log Δ`` uniform in ``[log 1e-3, log 1e-1]`` (decay lengths
    of ~20 to ~2,000 positions). The forward kernel reads the sequence up to each position, the
    backward kernel (its own ``C``, ``A``, ``Δ``) the rest; plus a skip ``D·u``. Generating the
    kernels costs ``O(D·N·L)``, applying them ``O(B·D·L log L)`` (:func:`long_conv`).
    """

    def __init__(self, hidden: int, n_modes: int = 16, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        ch = 2 * hidden  # forward channels, then backward ones
        self.hidden, self.n_modes = hidden, n_modes
        self.log_dt = nn.Parameter(torch.rand(ch) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_a_real = nn.Parameter(torch.full((ch, n_modes), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(n_modes, dtype=torch.float32).repeat(ch, 1))
        self.c = nn.Parameter(torch.randn(ch, n_modes, 2) * math.sqrt(0.5))  # complex C as (re, im)
        self.skip = nn.Parameter(torch.randn(hidden))

    def kernel(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward and backward kernels, (D, L) each, in float32."""
        with torch.autocast(self.c.device.type, enabled=False):
            dt = self.log_dt.float().exp().unsqueeze(-1)  # (2D, 1)
            a = torch.complex(-self.log_a_real.float().exp(), self.a_imag.float())  # (2D, N)
            dta = dt * a
            c = torch.view_as_complex(self.c.float().contiguous()) * (dta.exp() - 1) / a  # (2D, N)
            pos = torch.arange(length, device=a.device, dtype=torch.float32)
            # Re(c·exp(ΔA·l)) = exp(Re ΔA·l)(Re c·cos(Im ΔA·l) − Im c·sin(Im ΔA·l)): real arithmetic, several
            # times faster than a complex exp of the (2D, N, L) Vandermonde matrix on CPUs
            decay = torch.exp(dta.real.unsqueeze(-1) * pos)  # (2D, N, L)
            phase = dta.imag.unsqueeze(-1) * pos
            k = 2 * ((c.real.unsqueeze(-1) * torch.cos(phase) - c.imag.unsqueeze(-1) * torch.sin(phase))
                     * decay).sum(1)  # (2D, L)
        return k[:self.hidden], k[self.hidden:]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` (B, L, D) → (B, L, D)."""
        k_fwd, k_bwd = self.kernel(u.shape[1])
        return long_conv(u, k_fwd, k_bwd) + u * self.skip.to(u.dtype)


class SequenceBlock(nn.Module):
    """adaLN-Zero block: ``h + g₁·out(LongConv(u)·σ(gate(u)))`` then ``h + g₂·MLP(…)`` on (B, L, D).

    ``u = LN(h)(1 + scale) + shift``; the six modulations are regressed from ``c`` (B, D) by a
    zero-initialised linear map, so the block starts as the identity.
    """

    def __init__(self, hidden: int, mlp_ratio: float = 2.0, n_modes: int = 16):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.in_proj = nn.Linear(hidden, 2 * hidden)  # the convolved value and its gate
        self.conv = LongConv(hidden, n_modes)
        self.out_proj = nn.Linear(hidden, hidden)
        self.mlp = Mlp(hidden, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``h`` (B, L, D), ``c`` (B, D) → (B, L, D)."""
        sh1, sc1, g1, sh2, sc2, g2 = (m.unsqueeze(1) for m in self.adaLN_modulation(c).chunk(6, dim=-1))
        val, gate = self.in_proj(_modulate(self.norm1(h), sh1, sc1)).chunk(2, dim=-1)
        h = torch.addcmul(h, g1, self.out_proj(self.conv(val) * torch.sigmoid(gate)))
        return torch.addcmul(h, g2, self.mlp(_modulate(self.norm2(h), sh2, sc2)))


# ------------------------------------------------------------------ the velocity field
class SequenceVelocity(VelocityField):
    """Velocity ``v(x_t, t, c)`` (B, G) from a bidirectional state-space model over the genes in graph order.

    Every gene is a token (identity + value embedding, as :class:`GeneEmbedder`); the tokens are
    laid out in :func:`graph_order` of the prior (regulators next to their targets), mixed along
    that sequence by ``depth`` :class:`SequenceBlock` s (a bidirectional diagonal-SSM long
    convolution, S4 / Hyena family: Gu et al. 2022, *Efficiently Modeling Long Sequences with
    Structured State Spaces*; Poli et al. 2023, *Hyena Hierarchy*), conditioned by adaLN-Zero on
    ``c = t_emb + cond_emb (+ perturbation summary)``, and read out by a zero-initialised
    per-gene linear head, so ``v ≡ 0`` at init. A gene perturbation (``pert`` (B, S) codes,
    ``-1`` padded) adds the learned flag (and its spread along the prior edges) of
    :class:`PerturbationEmbedder` to the perturbed genes' tokens, and its global summary to ``c``.

    Cost per layer: ``O(B·D·G log G)`` FLOPs for the convolution (plus ``O(B·G·D²)`` for the
    projections and the MLP; ``O(D·N·G)`` for the kernels, ``N = n_modes``); memory ``O(B·G·D)``.
    Every gene sees every other gene in one layer, through a kernel that decays with the distance
    in the order.

    Parameters
    ----------
    n_genes
        ``G``.
    edge_index, edge_sign, edge_type
        The prior graph over the genes, ``(2, E)`` and ``(E,)`` (row 0 regulator, row 1 target):
        it decides the order and carries the perturbation spread. ``None`` → index order.
    condition_specs
        As for :class:`~grndiff.nn.GRNTransformer`.
    hidden, depth, mlp_ratio
        Width ``D``, number of blocks, MLP expansion.
    order
        ``"bfs"`` or ``"spectral"`` (:func:`graph_order`); the order is kept in the state dict.
    value_embedding
        ``"fourier"`` or ``"mlp"`` (:class:`GeneEmbedder`).
    perturbation
        Number of perturbation kinds (0 / ``False``: none), as for ``GRNTransformer``.
    cond_dropout
        Classifier-free guidance dropout probability.
    n_modes
        Complex modes ``N`` of each SSM kernel.
    """

    checkpoint_above: int = 2**24  # B·G·D values per activation above which blocks are recomputed in the backward

    def __init__(self, n_genes: int, edge_index: torch.Tensor | None = None, edge_sign: torch.Tensor | None = None,
                 edge_type: torch.Tensor | None = None, condition_specs=(), *, hidden: int = 32, depth: int = 2,
                 order: str = "bfs", mlp_ratio: float = 2.0, value_embedding: str = "fourier",
                 perturbation: int | bool = False, perturbation_hops: int = 3, cond_dropout: float = 0.1,
                 n_modes: int = 16):
        super().__init__()
        perm = graph_order(n_genes, edge_index, order)
        self.n_genes, self.hidden, self.order_method = n_genes, hidden, order
        self.register_buffer("order", perm)  # (G,) sequence position → gene; saved with the weights
        self.register_buffer("inverse", torch.argsort(perm))  # (G,) gene → sequence position
        attach_input_embedders(self, n_genes, hidden, condition_specs, cond_dropout=cond_dropout,
                               value_embedding=value_embedding, perturbation=perturbation, edge_index=edge_index,
                               edge_sign=edge_sign, edge_type=edge_type, perturbation_hops=perturbation_hops)
        self.blocks = nn.ModuleList(SequenceBlock(hidden, mlp_ratio, n_modes) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.head_weight = nn.Parameter(torch.zeros(n_genes, hidden))  # (G, D): one linear read-out per gene
        self.head_bias = nn.Parameter(torch.zeros(n_genes))
        nn.init.zeros_(self.final_modulation[-1].weight)
        nn.init.zeros_(self.final_modulation[-1].bias)

    @property
    def max_sampling_cells(self) -> int:
        """Cells per sampler call: an activation (B, G, D) stays near 128 MB."""
        return max(16, 2**25 // (self.n_genes * self.hidden))

    def velocity(self, x, t, cond, pert, force_drop):
        """See :meth:`VelocityField.velocity`: ``v`` (B, G), no extras."""
        B = x.shape[0]
        c = self.t_embed(t) + self.cond_embed(cond, B, device=x.device, force_drop=force_drop)  # (B, D)
        order = self.order
        emb = self.embed
        h = emb.proj(emb.value_features(x[:, order])) + emb.identity.weight[order]  # (B, G, D), sequence order
        if self.pert_embed is not None and pert is not None:
            node, glob = self.pert_embed(pert, emb.identity.weight)  # (B, G, D) in gene order, (B, D)
            h = h + node[:, order]
            c = c + glob
        grad_ckpt = torch.is_grad_enabled() and h.numel() > self.checkpoint_above
        for blk in self.blocks:
            h = checkpoint(blk, h, c, use_reentrant=False) if grad_ckpt else blk(h, c)
        shift, scale = self.final_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        h = _modulate(self.norm(h), shift, scale)  # (B, G, D)
        v = torch.einsum("bgd,gd->bg", h, self.head_weight[order].to(h.dtype)) + self.head_bias[order].to(h.dtype)
        return v[:, self.inverse], {}


@register_backbone("ssm")
def _ssm(inputs, hidden: int = 32, depth: int = 2, order: str = "bfs", mlp_ratio: float = 2.0,
         cond_dropout: float = 0.1, value_embedding: str = "fourier"):
    """``backbone="ssm"``: :class:`SequenceVelocity` over the prior's genes (no latent nodes)."""
    if int(inputs.get("n_latent") or 0):
        raise ValueError(f"backbone='ssm' has no latent nodes (the graph has {inputs['n_latent']}): the order is "
                         "over measured genes only; use backbone='grn'")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return SequenceVelocity(inputs["n_genes"], inputs.get("edge_index"), inputs.get("edge_sign"),
                            inputs.get("edge_type"), inputs.get("condition_specs", []), hidden=hidden, depth=depth,
                            order=order, mlp_ratio=mlp_ratio, value_embedding=value_embedding,
                            perturbation=int(inputs.get("perturbation") or 0), cond_dropout=cond_dropout)
