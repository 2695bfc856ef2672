r"""Edge-restricted multi-head attention over ONE gene graph shared by all cells.

For target gene ``i`` with in-neighbours ``N(i)`` (row 1 of ``edge_index`` is the target ``i``,
row 0 the source ``j``; messages flow ``j → i``) and head ``h``:

.. math::
    \alpha^h_{ij} = \mathrm{softmax}_{j \in N(i)}\big(e^h_{ij}\big), \qquad
    y^h_i = \sum_{j \in N(i)} \alpha^h_{ij}\, \gamma^h_{s(ij)}\, W^h_V x_j

Two ways to score an edge:

``mode="shared"``
    :math:`e^h_{ij} = \langle q^h(g_i), k^h(g_j) \rangle / \sqrt{d} + b^h_{\text{sign}(ij)}
    + b^h_{\text{type}(ij)} + c^h w_{ij}` from learnt *gene-identity* vectors ``g`` and the edge's
    sign, type and weight. The weights are the same for every cell, so one layer is ONE sparse
    matmul of the ``(G, G)`` graph with all cells' values ``(G, B·D)``; time, condition and the
    cell's own state still reach every node through adaLN and the node MLPs.
``mode="dynamic"``
    :math:`e^h_{ij} = \langle W_Q x_i, W_K x_j \rangle / \sqrt{d} + (\text{same edge biases})`:
    per-cell logits (GAT/Transformer-style), gather + segment softmax + scatter; costs
    ``O(B·E·D)`` memory.

``γ^h_s`` is a learnt per-head gain per edge sign (initialised to 1), so activation and repression
can act with opposite signs although softmax weights are positive. Genes without in-edges get a
zero message (add self-loops in :class:`grndiff.graph.GeneGraph` to avoid that).
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch_geometric.utils import softmax as segment_softmax

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

N_SIGNS = 3  # -1, 0, +1 → 0, 1, 2
N_EDGE_TYPES = 4  # prior, reverse, self-loop, kNN


class GraphAttention(nn.Module):
    """Multi-head attention restricted to the edges of a fixed gene graph.

    Parameters
    ----------
    hidden
        Width ``D`` (= ``heads × head_dim``).
    heads
        ``H``.
    n_genes
        ``G``.
    edge_index
        ``(2, E)`` long, row 0 source ``j``, row 1 target ``i``.
    edge_sign
        ``(E,)`` in {-1, 0, +1}; ``None`` → 0.
    edge_weight
        ``(E,)`` non-negative; ``None`` → 1.
    edge_type
        ``(E,)`` in {0, 1, 2, 3}; ``None`` → 0.
    mode
        ``"shared"`` or ``"dynamic"``.
    id_dim
        Width of the gene-identity vectors used by the shared scores.
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        n_genes: int,
        edge_index: torch.Tensor,
        edge_sign: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
        edge_type: torch.Tensor | None = None,
        mode: str = "shared",
        id_dim: int = 32,
    ):
        super().__init__()
        if mode not in ("shared", "dynamic"):
            raise ValueError(f"mode must be 'shared' or 'dynamic', got {mode!r}")
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        edge_index = torch.as_tensor(edge_index, dtype=torch.long)
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= n_genes):
            raise ValueError(f"edge_index refers to genes outside [0, {n_genes})")
        E = edge_index.shape[1]
        sign = torch.zeros(E) if edge_sign is None else torch.as_tensor(edge_sign, dtype=torch.float32)
        weight = torch.ones(E) if edge_weight is None else torch.as_tensor(edge_weight, dtype=torch.float32)
        etype = torch.zeros(E, dtype=torch.long) if edge_type is None else torch.as_tensor(edge_type).long()
        # sort edges by (target, source): the COO matrix (rows = targets) is then coalesced as built
        order = torch.argsort(edge_index[1] * n_genes + edge_index[0])
        self.register_buffer("src", edge_index[0, order].contiguous(), persistent=False)
        self.register_buffer("dst", edge_index[1, order].contiguous(), persistent=False)
        self.register_buffer("sign_idx", (sign[order].sign() + 1).long(), persistent=False)
        self.register_buffer("weight", weight[order], persistent=False)
        self.register_buffer("etype", etype[order].clamp(0, N_EDGE_TYPES - 1), persistent=False)

        self.mode, self.hidden, self.heads, self.n_genes = mode, hidden, heads, n_genes
        self.head_dim = hidden // heads
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.sign_bias = nn.Embedding(N_SIGNS, heads)
        self.type_bias = nn.Embedding(N_EDGE_TYPES, heads)
        self.weight_coef = nn.Parameter(torch.zeros(heads))
        self.sign_gain = nn.Parameter(torch.ones(N_SIGNS, heads))
        if mode == "shared":
            self.gene_id = nn.Parameter(torch.randn(n_genes, id_dim) * 0.02)
            self.q_id = nn.Linear(id_dim, hidden, bias=False)
            self.k_id = nn.Linear(id_dim, hidden, bias=False)
            self.register_parameter("qk", None)
        else:
            self.register_parameter("gene_id", None)
            self.register_module("q_id", None)
            self.register_module("k_id", None)
            self.qk = nn.Linear(hidden, 2 * hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sign_bias.weight)
        nn.init.zeros_(self.type_bias.weight)

    def _layout(self) -> tuple[torch.Tensor, ...]:
        # built lazily and cached per device (index tensors only; nothing learnable)
        dev = self.src.device
        if getattr(self, "_block", None) is None or self._block.crow.device != dev:
            self._block = BlockGraph(self.src, self.dst, self.n_genes, self.heads)
        return self._block.tensors()

    @property
    def n_edges(self) -> int:
        return int(self.src.numel())

    # ------------------------------------------------------------------ scores
    def edge_bias(self) -> torch.Tensor:
        """Per-edge, per-head bias from sign, type and weight → (E, H)."""
        return (self.sign_bias(self.sign_idx) + self.type_bias(self.etype)
                + self.weight[:, None] * self.weight_coef)  # (E, H)

    def shared_weights(self) -> torch.Tensor:
        """Normalised shared attention weights ``α`` (E, H); they sum to 1 over each target's in-edges."""
        if self.mode != "shared":
            raise RuntimeError("shared_weights() exists only for mode='shared'")
        H, d = self.heads, self.head_dim
        q = self.q_id(self.gene_id).view(-1, H, d)  # (G, H, d)
        k = self.k_id(self.gene_id).view(-1, H, d)  # (G, H, d)
        logits = (q[self.dst] * k[self.src]).sum(-1) / math.sqrt(d) + self.edge_bias()  # (E, H)
        return segment_softmax(logits, self.dst, num_nodes=self.n_genes, dim=0)  # (E, H)

    def dynamic_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell attention weights (B, E, H) for the (normalised) node states ``x`` (B, G, D)."""
        B, G, _ = x.shape
        H, d = self.heads, self.head_dim
        q, k = self.qk(x).view(B, G, 2, H, d).unbind(2)  # (B, G, H, d) each
        logits = (q[:, self.dst] * k[:, self.src]).sum(-1) / math.sqrt(d)  # (B, E, H)
        logits = logits + self.edge_bias()
        return segment_softmax(logits, self.dst, num_nodes=G, dim=1)  # (B, E, H)

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, G, D) → (B, G, D)."""
        B, G, D = x.shape
        if G != self.n_genes:
            raise ValueError(f"expected {self.n_genes} genes, got {G}")
        H, d = self.heads, self.head_dim
        v = self.value(x).view(B, G, H, d)  # (B, G, H, d)
        gain = self.sign_gain[self.sign_idx]  # (E, H)
        if self.mode == "shared":
            alpha = self.shared_weights() * gain  # (E, H)
            y = _shared_aggregate(alpha, self._layout(), v)  # (B, G, H, d)
        else:
            alpha = self.dynamic_weights(x) * gain  # (B, E, H)
            msg = v[:, self.src] * alpha.unsqueeze(-1)  # (B, E, H, d)
            y = torch.zeros_like(v).index_add_(1, self.dst, msg)  # (B, G, H, d)
        return self.out(y.reshape(B, G, D))

    def dense_weights(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Attention as a dense matrix for tests and plots: (H, G, G) shared or (B, H, G, G) dynamic,
        entry ``[..., i, j]`` = weight of source ``j`` in target ``i`` (sign gain included)."""
        gain = self.sign_gain[self.sign_idx]
        if self.mode == "shared":
            alpha = (self.shared_weights() * gain).T  # (H, E)
            out = torch.zeros(self.heads, self.n_genes, self.n_genes, dtype=alpha.dtype, device=alpha.device)
            out[:, self.dst, self.src] = alpha
            return out
        alpha = (self.dynamic_weights(x) * gain).permute(0, 2, 1)  # (B, H, E)
        out = torch.zeros(x.shape[0], self.heads, self.n_genes, self.n_genes, dtype=alpha.dtype, device=x.device)
        out[:, :, self.dst, self.src] = alpha
        return out


def _csr_layout(rows: torch.Tensor, cols: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``crow_indices`` and ``col_indices`` for entries already sorted by (row, col)."""
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return crow, cols


class _BlockSpMM(torch.autograd.Function):
    """``Y = A V`` for a sparse ``A`` (CSR layout fixed, values differentiable) and dense ``V``.

    torch's generic sparse autograd goes through COO and materialises per-edge products; here the
    backward is two sparse kernels: ``∂V = Aᵀ ∂Y`` (transpose layout precomputed) and
    ``∂A = (∂Y Vᵀ) ⊙ mask(A)`` (``torch.sparse.sampled_addmm``).
    """

    @staticmethod
    def forward(ctx, vals, V, crow, col, crow_t, col_t, perm_t):  # noqa: D102
        n = crow.numel() - 1
        A = torch.sparse_csr_tensor(crow, col, vals, (n, n), check_invariants=False)
        ctx.save_for_backward(vals, V, crow, col, crow_t, col_t, perm_t)
        return A @ V

    @staticmethod
    def backward(ctx, grad_y):  # noqa: D102
        vals, V, crow, col, crow_t, col_t, perm_t = ctx.saved_tensors
        n = crow.numel() - 1
        grad_y = grad_y.contiguous()
        grad_vals = grad_v = None
        if ctx.needs_input_grad[1]:
            grad_v = torch.sparse_csr_tensor(crow_t, col_t, vals[perm_t], (n, n), check_invariants=False) @ grad_y
        if ctx.needs_input_grad[0]:
            pattern = torch.sparse_csr_tensor(crow, col, torch.zeros_like(vals), (n, n), check_invariants=False)
            grad_vals = torch.sparse.sampled_addmm(pattern, grad_y, V.T, beta=0.0).values()
        return grad_vals, grad_v, None, None, None, None, None


class BlockGraph:
    """Block-diagonal CSR layout of H copies of the ``(G, G)`` graph (one per head), and its
    transpose. ``rows``/``cols`` are the COO coordinates in head-major, (target, source) order."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, n_genes: int, heads: int):
        E, n = src.numel(), heads * n_genes
        offs = (torch.arange(heads, device=src.device) * n_genes).repeat_interleave(E)  # (H·E,)
        rows, cols = dst.repeat(heads) + offs, src.repeat(heads) + offs
        self.n = n
        self.crow, self.col = _csr_layout(rows, cols, n)
        self.perm_t = torch.argsort(cols * n + rows)
        self.crow_t, self.col_t = _csr_layout(cols[self.perm_t], rows[self.perm_t], n)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.crow, self.col, self.crow_t, self.col_t, self.perm_t


def _shared_aggregate(alpha: torch.Tensor, layout: tuple[torch.Tensor, ...], v: torch.Tensor) -> torch.Tensor:
    """``y[b, i, h] = Σ_j α[ij, h] · v[b, j, h]`` as ONE block-diagonal sparse matmul.

    alpha (E, H), v (B, G, H, d) → (B, G, H, d). The H per-head ``(G, G)`` matrices form a
    ``(H·G, H·G)`` block-diagonal CSR; cells and head channels are folded into the columns.
    """
    B, G, H, d = v.shape
    dtype = v.dtype
    # sparse CPU kernels want float32/64: compute there and cast back (autocast-safe)
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    vals = alpha.T.reshape(-1).to(work)  # (H·E,) head-major, each block sorted by (dst, src)
    rhs = v.permute(2, 1, 0, 3).reshape(H * G, B * d).to(work)  # (H·G, B·d)
    y = _BlockSpMM.apply(vals, rhs, *layout)  # (H·G, B·d)
    return y.view(H, G, B, d).permute(2, 1, 0, 3).to(dtype)  # (B, G, H, d)
