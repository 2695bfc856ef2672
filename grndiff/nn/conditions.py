"""Condition embedders: every kind of condition becomes one vector per cell, summed into ``c``.

Kinds (codes produced by ``grndiff.data``; here only tensors):

========== =================== ============================================================
kind        input               embedding
========== =================== ============================================================
categorical (B,) long, 0 = null  ``Embedding(K + 1, D)``; row 0 is the null token (CFG)
continuous  (B,) float, NaN=null MLP on the standardised value; a learned null vector for NaN
set         (B, S) long, 0 = pad  Deep Sets (Zaheer et al. 2017): MLP(Σ embeddings); empty → null
hierarchical (B, L) long         sum of one categorical embedding per level
========== =================== ============================================================

Genetic perturbations are node interventions: :class:`PerturbationEmbedder` adds a learned flag
to the perturbed genes' nodes and a permutation-invariant summary of their identities to ``c``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..edge_types import PRIOR_EDGE_TYPES
from .embed import GeneEmbedder, TimestepEmbedder

PROPAGATED_EDGE_TYPES = PRIOR_EDGE_TYPES  # a perturbation flag travels along the prior's own edges
EMBEDDERS: dict = {}  # kind → builder(spec, hidden) -> nn.Module mapping a condition's codes to (B, D)
NULL_CODES: dict = {}  # kind → the code value of its null token (CFG / unconditional)


def register_condition_embedder(kind: str, null: float = 0.0):
    """Register ``builder(spec: ConditionSpec, hidden: int) -> nn.Module`` for condition ``kind``.

    The module maps the kind's codes (``(B,)`` or ``(B, ...)``, as its encoder in
    :mod:`grndiff.data` writes them) to ``(B, D)``; every code equal to ``null`` (NaN allowed)
    must map to the kind's null embedding. The data side registers the encoder of the same kind
    (:func:`grndiff.data.register_condition_kind`); ``docs/architecture.md`` shows both.
    """
    def deco(builder):
        EMBEDDERS[kind] = builder
        NULL_CODES[kind] = float(null)
        return builder
    return deco


def kinds() -> tuple[str, ...]:
    """The registered condition kinds."""
    return tuple(EMBEDDERS)


@dataclass
class ConditionSpec:
    """What the model needs to know about one condition (plain, serialisable).

    ``n_categories`` counts real categories (the null token is extra); for ``hierarchical`` use
    ``levels`` (categories per level, coarse → fine).
    """

    name: str
    kind: str
    n_categories: int = 0
    levels: list[int] = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in EMBEDDERS:
            raise ValueError(f"condition {self.name!r}: kind must be one of {kinds()}, got {self.kind!r} "
                             "(a new kind registers its embedder with register_condition_embedder)")

    @classmethod
    def from_dict(cls, d: dict) -> ConditionSpec:
        levels = d.get("levels") or d.get("levels_n_categories") or []
        return cls(name=d["name"], kind=d["kind"], n_categories=int(d.get("n_categories", 0) or 0),
                   levels=[int(v) for v in levels])


class ConditionEmbedder(nn.Module):
    """Sum of per-condition embeddings → (B, D); zero vector when there are no conditions.

    Parameters
    ----------
    specs
        One :class:`ConditionSpec` (or dict) per condition.
    hidden
        ``D``.
    dropout_prob
        Probability, during training, of replacing ALL of a cell's conditions by their null tokens
        (classifier-free guidance, Ho & Salimans 2022).
    """

    def __init__(self, specs, hidden: int, dropout_prob: float = 0.1):
        super().__init__()
        self.specs = [s if isinstance(s, ConditionSpec) else ConditionSpec.from_dict(s) for s in specs]
        self.hidden, self.dropout_prob = hidden, dropout_prob
        self.embedders = nn.ModuleDict({s.name: EMBEDDERS[s.kind](s, hidden) for s in self.specs})

    def null_like(self, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same conditions with every entry replaced by its null token."""
        return {s.name: torch.full_like(cond[s.name], NULL_CODES[s.kind]) for s in self.specs}

    def drop(self, cond: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Null the conditions of cells where ``mask`` (B,) bool is True."""
        null = self.null_like(cond)
        out = {}
        for s in self.specs:
            v, m = cond[s.name], mask.view(-1, *([1] * (cond[s.name].dim() - 1)))
            out[s.name] = torch.where(m, null[s.name], v)
        return out

    def forward(self, cond: dict[str, torch.Tensor] | None, batch_size: int, device=None,
                force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """→ (B, D). Missing names raise a KeyError naming them."""
        out = torch.zeros(batch_size, self.hidden, device=device)
        if not self.specs:
            return out
        cond = self._seen(cond, batch_size, out.device, force_drop)
        for s in self.specs:
            out = out + self.embedders[s.name](cond[s.name])
        return out

    def tokens(self, cond: dict[str, torch.Tensor] | None, batch_size: int, device=None,
               force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """One token per condition, ``(B, K, D)`` (K = number of conditions; ``(B, 0, D)`` without
        any), for cross-attention conditioning; the same null tokens and dropout as :meth:`forward`."""
        if not self.specs:
            return torch.zeros(batch_size, 0, self.hidden, device=device)
        cond = self._seen(cond, batch_size, device, force_drop)
        return torch.stack([self.embedders[s.name](cond[s.name]) for s in self.specs], dim=1)

    def _seen(self, cond, batch_size: int, device, force_drop) -> dict[str, torch.Tensor]:
        """The conditions the network sees: checked, nulled where ``force_drop`` (or, in training,
        at random with ``dropout_prob``: classifier-free guidance)."""
        cond = cond or {}
        missing = [s.name for s in self.specs if s.name not in cond]
        if missing:
            raise KeyError(f"conditions {missing} are missing from the batch (known: {[s.name for s in self.specs]})")
        if force_drop is not None:
            return self.drop(cond, force_drop)
        if self.training and self.dropout_prob > 0:
            return self.drop(cond, torch.rand(batch_size, device=device) < self.dropout_prob)
        return cond


# ------------------------------------------------------------------ the shipped kinds
class _CategoricalEmbedding(nn.Embedding):
    """Row 0 is the null token (CFG). (An ``nn.Embedding``: state-dict keys as before.)"""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return super().forward(v.long())


class _LevelEmbeddings(nn.ModuleList):
    """Hierarchical codes (B, L): the sum of one categorical embedding per level, coarse → fine."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return sum(e(v[:, i].long()) for i, e in enumerate(self))


register_condition_embedder("categorical")(lambda s, hidden: _CategoricalEmbedding(s.n_categories + 1, hidden))
register_condition_embedder("continuous", null=float("nan"))(lambda s, hidden: _ContinuousEmbedder(hidden))
register_condition_embedder("set")(lambda s, hidden: _SetEmbedder(s.n_categories, hidden))
register_condition_embedder("hierarchical")(
    lambda s, hidden: _LevelEmbeddings(nn.Embedding(k + 1, hidden) for k in s.levels))


class _ContinuousEmbedder(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.null = nn.Parameter(torch.zeros(hidden))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        v = v.float()
        isnull = torch.isnan(v)
        e = self.mlp(torch.nan_to_num(v).unsqueeze(-1))  # (B, D)
        return torch.where(isnull.unsqueeze(-1), self.null.expand_as(e), e)


class _SetEmbedder(nn.Module):
    """Permutation-invariant: ρ(Σ_s φ(e_s)); an empty set (all padding) is the null token."""

    def __init__(self, n_categories: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(n_categories + 1, hidden, padding_idx=0)
        self.rho = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))
        self.null = nn.Parameter(torch.zeros(hidden))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        v = v.long()
        if v.dim() == 1:
            v = v.unsqueeze(-1)
        e = self.rho(self.emb(v).sum(1))  # (B, D)
        empty = (v == 0).all(1, keepdim=True)
        return torch.where(empty, self.null.expand_as(e), e)


class PerturbationEmbedder(nn.Module):
    r"""Gene perturbations as node interventions.

    ``pert`` (B, S) long gene indices, ``-1`` padded. Returns a node term (B, G, D) and a global
    term (B, D):

    - a learned flag on each perturbed gene, one per perturbation kind (knock-out, activation…);
    - with a graph (``edge_index``), the perturbation *propagated along the prior edges*:
      :math:`f_k = A f_{k-1}`, :math:`f_0` = the (B, G) indicator of perturbed genes, for
      ``k = 1..hops``, once with the signed, in-degree-normalised adjacency
      :math:`A_{ij} = s_{ij} / \deg^{in}_i` (activation +1, repression −1, unknown 0) and once
      with :math:`|A|`. A linear map of these ``2·hops`` channels (per kind) is added to every
      node, so a target gene knows "an activator of mine, k steps upstream, is knocked out"
      whether or not that regulator was ever perturbed in training — the graph carries the
      effect, as in GEARS (Roohani et al. 2024), which propagates over a gene graph for the same
      reason;
    - a global MLP of the sum of the perturbed genes' identity embeddings (plus their kind flags).

    With ``n_kinds`` > 1, a code ``c ≥ 0`` in ``pert`` is gene ``c mod G`` under kind ``c div G``
    (kind 0: the data set's default kind), so one model holds knock-outs and activations.

    Parameters
    ----------
    n_genes, hidden
        ``G`` and ``D``.
    edge_index, edge_sign, edge_type
        The gene graph, ``(2, E)`` (row 0 source, row 1 target) and ``(E,)``; only prior edges
        in their own direction (type 0 regulation and type 4 signalling, or every non-self edge
        when ``edge_type`` is ``None``) propagate. ``n_genes`` counts every node the codes may
        index (measured genes, then latent ones).
    hops
        Propagation depth ``K`` (0 disables it).
    n_kinds
        Perturbation kinds; kind 0 uses ``flag``, kinds 1.. their own row of ``kind_flags``.
    """

    def __init__(self, n_genes: int, hidden: int, edge_index: torch.Tensor | None = None,
                 edge_sign: torch.Tensor | None = None, edge_type: torch.Tensor | None = None, hops: int = 3,
                 n_kinds: int = 1):
        super().__init__()
        self.n_genes, self.n_kinds = n_genes, max(int(n_kinds), 1)
        self.flag = nn.Parameter(torch.randn(hidden) * 0.02)
        # one more learned flag per extra kind; none for a single kind, so its state dict is unchanged
        self.kind_flags = nn.Parameter(torch.randn(self.n_kinds - 1, hidden) * 0.02) if self.n_kinds > 1 else None
        self.global_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.hops = 0
        self.register_module("prop", None)
        if edge_index is not None and hops > 0:
            ei = torch.as_tensor(edge_index, dtype=torch.long)
            keep = ei[0] != ei[1]
            if edge_type is not None:
                keep &= torch.isin(torch.as_tensor(edge_type).long(), torch.tensor(PROPAGATED_EDGE_TYPES))
            src, dst = ei[0, keep], ei[1, keep]
            if src.numel():
                sign = (torch.zeros(src.numel()) if edge_sign is None
                        else torch.as_tensor(edge_sign, dtype=torch.float32)[keep].sign())
                indeg = torch.zeros(n_genes).index_add_(0, dst, torch.ones(dst.numel())).clamp_min(1)
                self.register_buffer("p_src", src, persistent=False)
                self.register_buffer("p_dst", dst, persistent=False)
                self.register_buffer("p_signed", sign / indeg[dst], persistent=False)
                self.register_buffer("p_abs", 1.0 / indeg[dst], persistent=False)
                self.hops = int(hops)
                self.prop = nn.Linear(2 * self.hops * self.n_kinds, hidden)
                nn.init.normal_(self.prop.weight, std=0.02)
                nn.init.zeros_(self.prop.bias)

    def _spread(self, f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """One hop along the prior edges: (B, G) → (B, G), ``out_i = Σ_j w_ij f_j``."""
        out = torch.zeros_like(f)
        return out.index_add_(1, self.p_dst, f[:, self.p_src] * w)

    def propagated(self, onehot: torch.Tensor) -> torch.Tensor:
        """(B, G) perturbation indicator → (B, G, 2·hops) signed and unsigned k-hop spread."""
        feats, fs, fa = [], onehot, onehot
        for _ in range(self.hops):
            fs, fa = self._spread(fs, self.p_signed), self._spread(fa, self.p_abs)
            feats += [fs, fa]
        return torch.stack(feats, -1)  # (B, G, 2K)

    def forward(self, pert: torch.Tensor, gene_identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pert`` (B, S), ``gene_identity`` (G, D) → node (B, G, D), global (B, D)."""
        if self.n_kinds > 1:
            return self._forward_kinds(pert, gene_identity)
        B = pert.shape[0]
        valid = pert >= 0
        idx = pert.clamp_min(0)
        onehot = torch.zeros(B, self.n_genes, device=pert.device, dtype=gene_identity.dtype)
        onehot.scatter_add_(1, idx, valid.to(onehot.dtype))
        onehot = onehot.clamp_max(1.0)  # (B, G)
        node = onehot.unsqueeze(-1) * self.flag  # (B, G, D)
        if self.prop is not None:
            node = node + self.prop(self.propagated(onehot)) * valid.any(1).view(B, 1, 1).to(node.dtype)
        summed = onehot @ gene_identity  # (B, D)
        has = valid.any(1, keepdim=True).to(summed.dtype)
        return node, self.global_mlp(summed) * has

    def _forward_kinds(self, pert: torch.Tensor, gene_identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for codes ``gene + G · kind`` (B, S)."""
        B, G, K = pert.shape[0], self.n_genes, self.n_kinds
        valid = pert >= 0
        code = pert.clamp_min(0)
        gene, kind = code % G, (code // G).clamp_max(K - 1)  # (B, S)
        dtype = gene_identity.dtype
        table = torch.cat([self.flag.unsqueeze(0), self.kind_flags]).to(dtype)  # (K, D)
        flags = table[kind] * valid.unsqueeze(-1).to(dtype)  # (B, S, D)
        node = torch.zeros(B, G, flags.shape[-1], device=pert.device, dtype=dtype)
        node.scatter_add_(1, gene.unsqueeze(-1).expand_as(flags), flags)  # (B, G, D)
        onehot = torch.zeros(B, K * G, device=pert.device, dtype=dtype)
        onehot.scatter_add_(1, kind * G + gene, valid.to(dtype))
        onehot = onehot.clamp_max(1.0).view(B, K, G)  # (B, K, G): one indicator per kind
        if self.prop is not None:
            feats = self.propagated(onehot.reshape(B * K, G)).view(B, K, G, -1)  # (B, K, G, 2·hops)
            feats = feats.permute(0, 2, 1, 3).reshape(B, G, -1)  # (B, G, K·2·hops)
            node = node + self.prop(feats) * valid.any(1).view(B, 1, 1).to(dtype)
        extra = (flags - self.flag.to(dtype) * valid.unsqueeze(-1)).sum(1)  # (B, D): 0 for kind-0 genes
        summed = onehot.sum(1).clamp_max(1.0) @ gene_identity + extra
        has = valid.any(1, keepdim=True).to(summed.dtype)
        return node, self.global_mlp(summed) * has  # (B, G, D), (B, D)


def attach_input_embedders(net: nn.Module, n_genes: int, hidden: int, condition_specs, *, cond_dropout: float,
                           value_embedding: str, perturbation, n_nodes: int | None = None, edge_index=None,
                           edge_sign=None, edge_type=None, perturbation_hops: int = 3) -> None:
    """Give a gene-token backbone its input embedders, in this order (its initial weights depend on
    it): ``net.embed`` (:class:`~grndiff.nn.GeneEmbedder`), ``net.t_embed``, ``net.cond_embed`` and
    ``net.pert_embed`` (a :class:`PerturbationEmbedder` over ``n_nodes`` nodes, or ``None`` without
    perturbations)."""
    net.embed = GeneEmbedder(n_genes, hidden, value=value_embedding)
    net.t_embed = TimestepEmbedder(hidden)
    net.cond_embed = ConditionEmbedder(condition_specs, hidden, dropout_prob=cond_dropout)
    net.pert_embed = (PerturbationEmbedder(n_nodes or n_genes, hidden, edge_index, edge_sign, edge_type,
                                           hops=perturbation_hops, n_kinds=int(perturbation))
                      if perturbation else None)
