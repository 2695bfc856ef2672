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
    per-cell logits (GAT/Transformer-style). The ``B·H`` (cell, head) copies of the graph form ONE
    block-diagonal CSR with ``B·H·E`` non-zeros: logits are ``Q Kᵀ`` sampled at its pattern, the
    softmax runs over each CSR row, and the aggregation is one sparse matmul; ``O(B·H·E)`` memory,
    no gathered ``(B, E, H, d)`` tensors.

Layout. The gene stack of :class:`~grndiff.nn.GRNTransformer` keeps node states *gene-major*,
``(G, B, D)`` (:meth:`GraphAttention.forward_genes`): there the shared aggregation is ONE sparse
matmul with the ``H`` per-head graphs interleaved (row ``i·H + h``, :class:`HeadGraph`), and the
only reorderings are the per-gene ``(B, H, d) ↔ (H, B, d)`` swaps inside 8 KB blocks. The
batch-major ``(B, G, H, d) → (H, G, B, d)`` transposition it replaces strides across the whole
tensor: at G = 7,000, B = 64 it alone took longer than all the layer's matmuls.
:meth:`GraphAttention.forward` takes ``(B, G, D)`` and transposes around it.

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

from ._cache import weight_cached

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

    def _layout(self, n_blocks: int) -> BlockGraph:
        """Block-diagonal layout of ``n_blocks = B·H`` (cell, head) graph copies (dynamic mode)."""
        # index tensors only (nothing learnable): built lazily, cached per (count, device), kept out of
        # the state dict. The batch size rarely changes (a short last batch): a tiny cache suffices.
        cache = self.__dict__.setdefault("_blocks", {})
        key = (n_blocks, self.src.device)
        if key not in cache:
            if len(cache) >= 4:
                cache.clear()
            cache[key] = BlockGraph(self.src, self.dst, self.n_genes, n_blocks)
        return cache[key]

    def _head_graph(self) -> HeadGraph:
        """The interleaved per-head layout of the shared mode (graph-only: built once per device)."""
        cache = self.__dict__.setdefault("_heads", {})
        key = self.src.device
        if key not in cache:
            cache.clear()
            cache[key] = HeadGraph(self.src, self.dst, self.n_genes, self.heads)
        return cache[key]

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

    def _shared_values(self, layout: HeadGraph) -> torch.Tensor:
        """Gained shared weights ``α γ`` as the value array (H·E,) of the interleaved head layout."""
        alpha = self.shared_weights() * self.sign_gain[self.sign_idx]  # (E, H)
        return alpha.reshape(-1).index_select(0, layout.order)  # (H·E,) in CSR order

    def dynamic_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell attention weights (B, E, H) for the (normalised) node states ``x`` (B, G, D)."""
        alpha, _ = self._dynamic_softmax(x)  # (B, H, E)
        return alpha.permute(0, 2, 1)  # (B, E, H), a view

    def _dynamic_softmax(self, x: torch.Tensor) -> tuple[torch.Tensor, BlockGraph]:
        """Dynamic weights (B, H, E) and the (cell, head) block layout whose value array they are.

        Runs in float32 (float64 if given) whatever the autocast dtype: the sparse CPU kernels need it.
        """
        B, G, _ = x.shape
        H, d, E = self.heads, self.head_dim, self.n_edges
        layout = self._layout(B * H)
        q, k = self.qk(x).view(B, G, 2, H, d).unbind(2)  # (B, G, H, d) each
        work = _work_dtype(q.dtype)
        # ⟨q_i, k_j⟩ of every (cell, head, edge), directly in the layout's value order
        dots = _SampledDot.apply(_to_blocks(q, work), _to_blocks(k, work), *layout.tensors())  # (B·H·E,)
        bias = self.edge_bias().T.to(work)  # (H, E), broadcast over cells
        logits = torch.add(bias, dots.view(B, H, E), alpha=1 / math.sqrt(d))  # (B, H, E) = bias + dots / √d
        # a CSR row is one (cell, head, target): the row softmax is the softmax over its in-edges
        alpha = _SegmentSoftmax.apply(logits.reshape(-1), layout.crow, layout.row)  # (B·H·E,)
        return alpha.view(B, H, E), layout  # (B, H, E)

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, G, D) → (B, G, D) (see :meth:`forward_genes` for the gene-major layout)."""
        if x.shape[1] != self.n_genes:
            raise ValueError(f"expected {self.n_genes} genes, got {x.shape[1]}")
        return self.forward_genes(x.transpose(0, 1)).transpose(0, 1)

    def forward_genes(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (G, B, D), gene-major → (G, B, D)."""
        G, B, D = x.shape
        if G != self.n_genes:
            raise ValueError(f"expected {self.n_genes} genes, got {G}")
        H, d = self.heads, self.head_dim
        if self.mode == "shared":
            layout = self._head_graph()
            vals = weight_cached(self, "shared", self.parameters(), lambda: self._shared_values(layout))  # (H·E,)
            v = self.value(x).reshape(G, B, H, d)  # (G, B, H, d)
            y = _head_aggregate(vals, layout, v)  # (G, B, H, d)
            return self.out(y.reshape(G, B, D))
        gain = self.sign_gain[self.sign_idx]  # (E, H)
        xb = x.transpose(0, 1)  # (B, G, D): per-cell logits live in the (cell, head) block layout
        v = self.value(xb).view(B, G, H, d)  # (B, G, H, d)
        alpha, layout = self._dynamic_softmax(xb)  # (B, H, E)
        alpha = alpha * gain.T.to(alpha.dtype)  # (B, H, E)
        y = _dynamic_aggregate(alpha, layout, v)  # (B, G, H, d)
        return self.out(y.reshape(B, G, D)).transpose(0, 1)  # (G, B, D)


# ------------------------------------------------------------------ sparse kernels
# torch's generic sparse autograd goes through COO and materialises per-edge products, and its CPU
# kernels exist only for float32/64 (autocast would hand them bfloat16). The autograd Functions below
# therefore take float32/64 inputs, switch autocast off around the kernels, and write their backward
# as sparse kernels of the same fixed layout (transposed layout precomputed in BlockGraph).

def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype the sparse kernels run in: float32/64 as given, anything lower (autocast) → float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _no_autocast(t: torch.Tensor) -> torch.autocast:
    return torch.autocast(t.device.type, enabled=False)


def _csr(crow: torch.Tensor, col: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Square ``(n, n)`` CSR matrix with a fixed, trusted layout."""
    n = crow.numel() - 1
    return torch.sparse_csr_tensor(crow, col, vals, (n, n), check_invariants=False)


def _sampled_dot(crow: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``⟨a[row_e], b[col_e]⟩`` for every stored entry ``e`` of the layout → (nnz,), in CSR order.

    ``(a bᵀ) ⊙ mask`` via ``torch.sparse.sampled_addmm``: no gathered (nnz, d) rows.
    """
    pattern = _csr(crow, col, a.new_zeros(col.numel()))  # only the pattern matters (beta=0)
    return torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0).values()  # (nnz,)


class _SampledDot(torch.autograd.Function):
    """``s = (Q Kᵀ) ⊙ mask(A)`` as the value array (nnz,) of A's CSR layout, for dense Q, K (n, d).

    With ``S`` the CSR matrix holding ``∂s``: ``∂Q = S K`` and ``∂K = Sᵀ Q`` (transposed layout).
    """

    @staticmethod
    def forward(ctx, Q, K, crow, col, crow_t, col_t, perm_t):  # noqa: D102
        ctx.save_for_backward(Q, K, crow, col, crow_t, col_t, perm_t)
        with _no_autocast(Q):
            return _sampled_dot(crow, col, Q.contiguous(), K.contiguous())  # (nnz,)

    @staticmethod
    def backward(ctx, grad_s):  # noqa: D102
        Q, K, crow, col, crow_t, col_t, perm_t = ctx.saved_tensors
        grad_q = grad_k = None
        with _no_autocast(Q):
            if ctx.needs_input_grad[0]:
                grad_q = _csr(crow, col, grad_s) @ K  # (n, d)
            if ctx.needs_input_grad[1]:
                grad_k = _csr(crow_t, col_t, grad_s.index_select(0, perm_t)) @ Q  # (n, d)
        return grad_q, grad_k, None, None, None, None, None


class _BlockSpMM(torch.autograd.Function):
    """``Y = A V`` for a sparse ``A`` (CSR layout fixed, values differentiable) and dense ``V``.

    Backward: ``∂V = Aᵀ ∂Y`` (transposed layout) and ``∂A = (∂Y Vᵀ) ⊙ mask(A)`` (sampled dot).
    """

    @staticmethod
    def forward(ctx, vals, V, crow, col, crow_t, col_t, perm_t):  # noqa: D102
        ctx.save_for_backward(vals, V, crow, col, crow_t, col_t, perm_t)
        with _no_autocast(V):
            return _csr(crow, col, vals) @ V

    @staticmethod
    def backward(ctx, grad_y):  # noqa: D102
        vals, V, crow, col, crow_t, col_t, perm_t = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_vals = grad_v = None
        with _no_autocast(V):
            if ctx.needs_input_grad[1]:
                grad_v = _csr(crow_t, col_t, vals.index_select(0, perm_t)) @ grad_y
            if ctx.needs_input_grad[0]:
                grad_vals = _sampled_dot(crow, col, grad_y, V)
        return grad_vals, grad_v, None, None, None, None, None


class _SegmentSoftmax(torch.autograd.Function):
    """Softmax of a CSR value array (nnz,) within each row, i.e. over one target's in-edges.

    Row reductions are ``segment_reduce`` over ``crow``; ``row`` (nnz,) broadcasts them back to the
    entries. Only the output ``a`` is saved: ``∂l = a ⊙ (∂a − Σ_row a ∂a)``. Empty rows own no
    entries, so they need no special case.
    """

    @staticmethod
    def forward(ctx, logits, crow, row):  # noqa: D102
        row_max = torch.segment_reduce(logits, "max", offsets=crow)  # (n,), for stability only
        ex = (logits - row_max.index_select(0, row)).exp_()  # (nnz,)
        alpha = ex.div_(torch.segment_reduce(ex, "sum", offsets=crow).index_select(0, row))  # (nnz,)
        ctx.save_for_backward(alpha, crow, row)
        return alpha

    @staticmethod
    def backward(ctx, grad_a):  # noqa: D102
        alpha, crow, row = ctx.saved_tensors
        ga = grad_a * alpha  # (nnz,)
        row_dot = torch.segment_reduce(ga, "sum", offsets=crow)  # (n,)
        return ga.sub_(alpha * row_dot.index_select(0, row)), None, None


# ------------------------------------------------------------------ layouts
def _csr_layout(rows: torch.Tensor, cols: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``crow_indices`` and ``col_indices`` for entries already sorted by (row, col)."""
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return crow, cols


class BlockGraph:
    """Block-diagonal CSR layout of ``n_blocks`` copies of the ``(G, G)`` graph, and its transpose.

    Blocks are the (cell, head) pairs of the dynamic mode (the shared mode uses :class:`HeadGraph`;
    ``n_blocks = B·H``, cell-major). Entries are block-major and, inside a block, in the layer's
    (target, source) edge order, so an ``(n_blocks, E)`` array of per-edge values IS the CSR value
    array. ``row`` is each entry's row, ``perm_t`` maps the transposed layout's entries to the values.

    One block's layout is built (one argsort of E keys) and tiled with offsets: sorting the
    ``B·H·E`` entries of the dynamic layout directly would cost far more than a forward pass.
    Indices are int32 whenever they fit: the MKL sparse kernels behind CPU ``csr @ dense`` take
    int32 and would otherwise convert the whole layout on every call (and it halves the cache).
    """

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, n_genes: int, n_blocks: int):
        E = src.numel()
        self.n = n_blocks * n_genes
        idx = torch.int32 if n_blocks * max(E, n_genes) < 2**31 else torch.long
        crow, col = _csr_layout(dst, src, n_genes)  # (G+1,), (E,)
        perm_t = torch.argsort(src * n_genes + dst)  # (E,) source-major order
        crow_t, col_t = _csr_layout(src[perm_t], dst[perm_t], n_genes)
        crow, col, crow_t, col_t, perm_t, dst = (t.to(idx) for t in (crow, col, crow_t, col_t, perm_t, dst))
        blocks = torch.arange(n_blocks, dtype=idx, device=src.device)[:, None]  # (n_blocks, 1)
        self.crow, self.crow_t = _tile_crow(crow, blocks * E), _tile_crow(crow_t, blocks * E)  # (n+1,)
        self.col, self.col_t = _tile(col, blocks * n_genes), _tile(col_t, blocks * n_genes)  # (n_blocks·E,)
        self.perm_t = _tile(perm_t, blocks * E)  # (n_blocks·E,)
        self.row = _tile(dst, blocks * n_genes)  # (n_blocks·E,)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.crow, self.col, self.crow_t, self.col_t, self.perm_t


class HeadGraph:
    """CSR layout of the ``H`` per-head copies of the ``(G, G)`` graph, *interleaved*: entry
    ``(i·H + h, j·H + h)`` holds head ``h``'s weight of edge ``j → i``; and its transpose.

    ``order`` (H·E,) gathers the CSR value array from an ``(E, H)`` per-edge array flattened
    row-major; ``perm_t`` maps the transposed layout's entries to the values (as :class:`BlockGraph`).
    Only index tensors: it depends on the graph alone, so a layer builds it once and keeps it.
    """

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, n_genes: int, heads: int):
        E, H = src.numel(), heads
        n = n_genes * H
        idx = torch.int32 if H * max(E, n_genes) < 2**31 else torch.long
        h = torch.arange(H, device=src.device)
        rows = (dst[:, None] * H + h).reshape(-1)  # (E·H,) in the (E, H) row-major order
        cols = (src[:, None] * H + h).reshape(-1)
        order = torch.argsort(rows * n + cols)  # CSR order: (row, col)
        crow, col = _csr_layout(rows[order], cols[order], n)
        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.numel(), device=src.device)
        by_col = torch.argsort(cols * n + rows)  # transposed CSR order
        crow_t, col_t = _csr_layout(cols[by_col], rows[by_col], n)
        self.n = n
        self.order = order
        self.crow, self.col, self.crow_t, self.col_t = (t.to(idx) for t in (crow, col, crow_t, col_t))
        self.perm_t = inv[by_col].to(idx)  # (H·E,) CSR position of each transposed entry

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.crow, self.col, self.crow_t, self.col_t, self.perm_t


def _tile(idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """One block's index array (E,) repeated per block, shifted by that block's offset (n_blocks, 1)."""
    return (idx + offsets).reshape(-1)  # (n_blocks·E,)


def _tile_crow(crow: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Row pointers (G+1,) of one block → (n_blocks·G + 1,) of the block-diagonal matrix."""
    end = (crow[-1:] + offsets[-1]) if offsets.numel() else crow[:1]
    return torch.cat([_tile(crow[:-1], offsets), end])


# ------------------------------------------------------------------ aggregation
def _head_aggregate(vals: torch.Tensor, layout: HeadGraph, v: torch.Tensor) -> torch.Tensor:
    """``y[i, b, h] = Σ_j α[ij, h] · v[j, b, h]`` as ONE sparse matmul of the interleaved head graph.

    vals (H·E,) the weights in the layout's CSR order, v (G, B, H, d) gene-major → (G, B, H, d).
    Rows ``i·H + h`` of the ``(G·H, G·H)`` CSR; cells and head channels are the columns ``(b, k)``.
    """
    G, B, H, d = v.shape
    work = _work_dtype(v.dtype)
    vals = vals.to(work)
    rhs = v.transpose(1, 2).reshape(G * H, B * d).to(work)  # (G·H, B·d): a swap within each gene
    y = _BlockSpMM.apply(vals, rhs, *layout.tensors())  # (G·H, B·d)
    return y.view(G, H, B, d).transpose(1, 2).to(v.dtype)  # (G, B, H, d)


def _dynamic_aggregate(alpha: torch.Tensor, layout: BlockGraph, v: torch.Tensor) -> torch.Tensor:
    """``y[b, i, h] = Σ_j α[b, h, ij] · v[b, j, h]`` as ONE sparse matmul over the B·H (cell, head) blocks.

    alpha (B, H, E) (already the layout's value array), v (B, G, H, d) → (B, G, H, d).
    """
    B, G, H, d = v.shape
    work = _work_dtype(v.dtype)
    y = _BlockSpMM.apply(alpha.reshape(-1).to(work), _to_blocks(v, work), *layout.tensors())  # (B·H·G, d)
    return y.view(B, H, G, d).transpose(1, 2).to(v.dtype)  # (B, G, H, d)


def _to_blocks(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-node head vectors (B, G, H, d) → rows of the (cell, head) block layout (B·H·G, d)."""
    B, G, H, d = t.shape
    return t.to(dtype).transpose(1, 2).reshape(B * H * G, d)  # (B·H·G, d)
