"""The sparse kernels and graph layouts behind :class:`~grndiff.nn.GraphAttention` (pure torch).

- :class:`HeadGraph` — the ``H`` per-head copies of the gene graph interleaved in one CSR
  (row ``i·H + h``), built once per device: the shared mode's aggregation is one sparse matmul.
- :class:`BlockGraph` — the block-diagonal CSR of ``B·H`` (cell, head) copies: the dynamic mode's
  sampled ``Q Kᵀ`` logits, row softmax and aggregation.
- ``_SampledDot`` / ``_BlockSpMM`` / ``_SegmentSoftmax`` — autograd functions over those layouts
  whose backward passes reuse the transposed pattern instead of materialising ``(B, E, H, d)``.
"""
from __future__ import annotations

import torch


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
