"""The graph diffusion transformer: velocity ``v(x_t, t, c)`` of a rectified flow over genes.

::

    x_t (B, G) ─► GeneEmbedder ─► (+ perturbation flags on perturbed nodes) ─► h (G, B, D)
    t, conditions ─► c = t_emb + cond_emb (+ perturbation summary)            (B, D)
                     (conditioning="cross_attention": c = t_emb; condition tokens (B, K, D) attended to)
    h ─► [GraphDiTBlock]×⌈L/2⌉ ─► ModulePooling ─► [TokenBlock]×M ─► unpool (+h)
      ─► [GraphDiTBlock]×⌊L/2⌋ ─► FinalLayer ─► v (B, G)

Every block is adaLN-Zero and the final layer is zero-initialised: ``v ≡ 0`` at init. Node states
are gene-major, ``(G, B, D)``, from the embedding to the read-out (the ``forward_genes`` methods):
the layout in which graph aggregation and module pooling are plain matmuls over genes.

Latent nodes (``n_latent = L > 0``: unmeasured prior genes, see :class:`grndiff.graph.GeneGraph`)
follow the ``G`` genes: node states are ``(G + L, B, D)`` in the graph blocks, a latent node's input
state is a learned vector (it has no expression value), perturbation codes may index it, and module
pooling and the read-out use the first ``G`` nodes only, so ``v`` stays ``(B, G)``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..edge_types import EDGE_SELF
from .blocks import FinalLayer, GraphDiTBlock, TokenBlock
from .conditions import attach_input_embedders
from .pooling import ModulePooling
from .velocity import VelocityField

CONDITIONINGS = ("adaln", "cross_attention")


class GRNTransformer(VelocityField):
    """Graph transformer velocity field over one shared gene graph.

    Parameters
    ----------
    n_genes
        ``G``.
    edge_index, edge_sign, edge_weight, edge_type
        The gene graph (see :class:`grndiff.graph.GeneGraph`): ``(2, E)`` and ``(E,)`` tensors
        over the ``G + n_latent`` nodes. ``None`` → self-loops only (no message passing between genes).
    condition_specs
        :class:`ConditionSpec` or dicts ``{"name", "kind", "n_categories"}``.
    membership
        ``(G, P)`` prior module membership; enables module pooling.
    hidden, heads, depth, token_depth
        Width ``D``, heads ``H``, graph blocks ``L``, token blocks ``M``. Defaults are sized for
        CPU training on ~1–2k genes: every elementwise pass touches B·G·D values, so a narrow,
        shallow gene stack (D = 32, L = 2) with the global work done by module tokens and the cell
        token trains ~25× faster per step than D = 64, L = 4 at B = 128 (measured on kang2018).
    cell_token
        Add a global "cell token" — an MLP of the whole (noisy) expression vector through a
        low-rank projection G → 4D → D — to the adaLN conditioning, so every node sees the cell's
        global state (like a [CLS] token); cheap (G·4D weights) and a remedy for per-gene errors
        that add up across genes.
    n_learned_modules
        Learned soft modules added to (or replacing) the prior ones.
    mode
        Graph attention mode: ``"shared"`` (one sparse matmul per layer, the default — see
        ``benchmarks/results/kernel.md``) or ``"dynamic"`` (per-cell attention logits).
    mixer
        ``"graph"`` (edge-restricted attention) or ``"full"`` (full attention over all genes: the
        gene-token baseline; memory grows as G²).
    perturbation
        Add a :class:`PerturbationEmbedder` for gene perturbations given as ``pert`` (B, S); an
        int > 1 is the number of perturbation kinds (codes ``gene + G · kind``).
    perturbation_hops
        How far a perturbation is propagated along the prior edges as explicit node features
        (see :class:`PerturbationEmbedder`); 0 leaves only the flag and message passing.
    cond_dropout
        Classifier-free guidance dropout probability.
    conditioning
        How the conditions reach the blocks: ``"adaln"`` (default: their summed embedding, with time
        and the cell token, regresses every block's shift/scale/gate) or ``"cross_attention"``
        (one token per condition, plus the perturbation summary, that every node and module token
        attends to in each block through a zero-initialised :class:`~grndiff.nn.blocks.CrossCondition`
        branch; adaLN then carries only time and the cell token). Extra cost per block
        O(G·B·K·D + G·B·D²) for K condition tokens.
    n_latent
        ``L`` latent nodes after the ``G`` genes (nodes ``G .. G+L-1`` of ``edge_index`` and of
        the perturbation codes), each with a learned input state ``latent_state`` (L, D) and no
        output. Set from the graph (``GeneGraph.n_latent``), not by users; 0 builds exactly the
        model without latent nodes (same parameters, same outputs for the same seed).
    """

    def __init__(
        self,
        n_genes: int,
        edge_index: torch.Tensor | None = None,
        edge_sign: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
        edge_type: torch.Tensor | None = None,
        condition_specs=(),
        membership: torch.Tensor | None = None,
        *,
        hidden: int = 32,
        heads: int = 4,
        depth: int = 2,
        token_depth: int = 2,
        cell_token: bool = True,
        n_learned_modules: int = 0,
        init_learned_from_prior: bool = False,
        mode: str = "shared",
        mixer: str = "graph",
        mlp_ratio: float = 2.0,
        value_embedding: str = "fourier",
        perturbation: bool = False,
        perturbation_hops: int = 3,
        cond_dropout: float = 0.1,
        conditioning: str = "adaln",
        n_latent: int = 0,
    ):
        super().__init__()
        if mixer not in ("graph", "full"):
            raise ValueError(f"mixer must be 'graph' or 'full', got {mixer!r}")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        self.cross = conditioning == "cross_attention"
        cross_heads = heads if self.cross else 0
        n_latent = int(n_latent)
        if n_latent < 0:
            raise ValueError(f"n_latent must be ≥ 0, got {n_latent}")
        if n_latent and mixer != "graph":
            raise ValueError("latent nodes (unmeasured perturbed genes) pass messages along graph edges: they need "
                             "mixer='graph'")
        n_nodes = n_genes + n_latent
        if edge_index is None:  # self-loops only: a node-wise model
            edge_index = torch.arange(n_nodes).repeat(2, 1)
            edge_type = torch.full((n_nodes,), EDGE_SELF, dtype=torch.long)
        self.n_genes, self.n_latent, self.hidden = n_genes, n_latent, hidden
        attach_input_embedders(self, n_genes, hidden, condition_specs, cond_dropout=cond_dropout,
                               value_embedding=value_embedding, perturbation=perturbation, n_nodes=n_nodes,
                               edge_index=edge_index, edge_sign=edge_sign, edge_type=edge_type,
                               perturbation_hops=perturbation_hops)
        self.cell_embed = (nn.Sequential(nn.Linear(n_genes, 4 * hidden), nn.SiLU(), nn.Linear(4 * hidden, hidden))
                           if cell_token else None)

        def block():
            if mixer == "full":
                return TokenBlock(hidden, heads, mlp_ratio, cross_heads)
            return GraphDiTBlock(hidden, heads, n_nodes, edge_index, edge_sign, edge_weight, edge_type,
                                 mode=mode, mlp_ratio=mlp_ratio, cross_heads=cross_heads)

        n_pre = (depth + 1) // 2
        self.blocks_pre = nn.ModuleList(block() for _ in range(n_pre))
        self.blocks_post = nn.ModuleList(block() for _ in range(depth - n_pre))
        if membership is not None or n_learned_modules:
            self.pooling = ModulePooling(n_genes, hidden, membership, n_learned_modules, init_learned_from_prior)
            self.token_blocks = nn.ModuleList(TokenBlock(hidden, heads, mlp_ratio, cross_heads)
                                              for _ in range(token_depth))
        else:
            self.pooling, self.token_blocks = None, nn.ModuleList()
        self.final = FinalLayer(hidden)
        # created last, and only with latent nodes: a model without them draws the same initial weights
        if n_latent:
            self.latent_state = nn.Parameter(torch.randn(n_latent, hidden) * 0.02)  # (L, D)
        else:
            self.register_parameter("latent_state", None)

    def node_identity(self) -> torch.Tensor:
        """Identity vectors of every node (G + L, D): the genes' embeddings, then the latent states."""
        if self.latent_state is None:
            return self.embed.identity.weight
        return torch.cat([self.embed.identity.weight, self.latent_state.to(self.embed.identity.weight.dtype)])

    def conditioning(self, t: torch.Tensor, cond, pert, B: int, force_drop=None):
        """``c`` (B, D) for adaLN, per-node perturbation features (B, G + L, D) or None, and the
        condition tokens ``ctx`` (B, K, D) of cross-attention conditioning (None under adaLN)."""
        node, glob, ctx = None, None, None
        if self.cross:
            c = self.t_embed(t)
            ctx = self.cond_embed.tokens(cond, B, device=t.device, force_drop=force_drop)  # (B, K, D)
        else:
            c = self.t_embed(t) + self.cond_embed(cond, B, device=t.device, force_drop=force_drop)  # (B, D)
        if self.pert_embed is not None and pert is not None:
            node, glob = self.pert_embed(pert, self.node_identity())  # node (B, G + L, D)
            if self.cross:
                ctx = torch.cat([ctx, glob.unsqueeze(1)], dim=1)  # the perturbation summary: one more token
            else:
                c = c + glob
        return c, node, ctx

    def velocity(self, x, t, cond, pert, force_drop):
        """See :meth:`VelocityField.velocity`: ``v`` (B, G) and the module tokens (B, P, D), if any."""
        B = x.shape[0]
        c, node, ctx = self.conditioning(t, cond, pert, B, force_drop)
        if self.cell_embed is not None:
            c = c + self.cell_embed(x)  # (B, D) global state of the cell
        # the gene stack runs gene-major (G, B, D): see grndiff.nn.graph_attention, "Layout"
        h = self.embed.forward_genes(x)  # (G, B, D)
        G = self.n_genes
        if self.latent_state is not None:  # latent nodes: a learned state, no expression value
            lat = self.latent_state.to(h.dtype).unsqueeze(1).expand(-1, B, -1)  # (L, B, D)
            h = torch.cat([h, lat])  # (G + L, B, D)
        if node is not None:
            h = h + node.transpose(0, 1)
        run = self._block_runner(h)
        for blk in self.blocks_pre:
            h = run(blk, h, c, ctx)
        extras = {}
        if self.pooling is not None:
            tok = self.pooling.pool_genes(h[:G] if self.n_latent else h)  # (B, P, D): measured genes only
            for tb in self.token_blocks:
                tok = tb(tok, c, ctx)
            if self.n_latent:
                h = torch.cat([h[:G] + self.pooling.unpool_genes(tok), h[G:]])  # (G + L, B, D)
            else:
                h = h + self.pooling.unpool_genes(tok)  # (G, B, D)
            extras = {"tokens": tok, "activity": self.pooling.activity(tok)}
        for blk in self.blocks_post:
            h = run(blk, h, c, ctx)
        v = self.final.forward_genes(h[:G] if self.n_latent else h, c).squeeze(-1).T  # (B, G): no latent column
        return v, extras

    # A gene block keeps ~14 node-state tensors (G, B, D) for its backward: at G = 20,000, B = 64 that
    # is 2.3 GB per block. Above this many node-state values per tensor (64 MB in float32) each gene
    # block is recomputed in the backward instead (activation checkpointing: ~1/3 more compute, one
    # saved tensor per block); below it, nothing changes. The blocks draw no random numbers, so the
    # recomputation is exact.
    checkpoint_above: int = 2**24

    @property
    def max_sampling_cells(self) -> int:
        """Cells per sampler call (``FlowModule.generate`` caps its batches with it): a node-state
        tensor (G, B, D) stays near 128 MB, so sampling memory does not grow with the batch size asked
        for (1,024 cells at G = 20,000 would hold ~2.6 GB per tensor); 149 cells at G = 7,000."""
        return max(16, 2**25 // ((self.n_genes + self.n_latent) * self.hidden))

    def _block_runner(self, h: torch.Tensor):
        if torch.is_grad_enabled() and h.numel() > self.checkpoint_above:
            return lambda blk, x, c, ctx: checkpoint(blk.forward_genes, x, c, ctx, use_reentrant=False)
        return lambda blk, x, c, ctx: blk.forward_genes(x, c, ctx)

    def graph_layers(self) -> list:
        """The GraphAttention modules, in order (for interpretation plots)."""
        return [b.mixer for b in list(self.blocks_pre) + list(self.blocks_post) if isinstance(b, GraphDiTBlock)]
