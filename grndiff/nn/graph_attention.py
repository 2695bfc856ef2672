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

from ..edge_types import N_EDGE_TYPES, N_EDGE_TYPES_ALL
from ._cache import weight_cached
from .sparse_graph import (
    BlockGraph,
    HeadGraph,
    _dynamic_aggregate,
    _head_aggregate,
    _SampledDot,
    _SegmentSoftmax,
    _to_blocks,
    _work_dtype,
)

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

N_SIGNS = 3  # -1, 0, +1 → 0, 1, 2


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
        ``(E,)`` in {0, …, 5} (:mod:`grndiff.graph`); ``None`` → 0. Each type has its own
        learned per-head bias; a graph with signalling edges (types 4, 5) gets 6 bias rows, any
        other graph 4 (so models without them keep their parameters).
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
        n_types = N_EDGE_TYPES_ALL if E and int(etype.max()) >= N_EDGE_TYPES else N_EDGE_TYPES
        self.register_buffer("etype", etype[order].clamp(0, n_types - 1), persistent=False)

        self.mode, self.hidden, self.heads, self.n_genes = mode, hidden, heads, n_genes
        self.head_dim = hidden // heads
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.sign_bias = nn.Embedding(N_SIGNS, heads)
        self.type_bias = nn.Embedding(n_types, heads)
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
