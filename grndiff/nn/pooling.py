"""Module pooling: genes → pathway/module tokens → genes.

A prior membership ``M`` (G, P₀) (Hallmark, Reactome, regulons) and/or ``P₁`` learned soft modules
(a per-gene softmax over modules, optionally initialised from ``M``) define an assignment
``S`` (G, P). Pooling averages gene states within each module; unpooling gives every gene the mean
of its modules' tokens, through a zero-initialised projection (the path starts closed).
"""
from __future__ import annotations

import torch
from torch import nn

from ._cache import weight_cached


class ModulePooling(nn.Module):
    """Pool gene states (B, G, D) into module tokens (B, P, D) and broadcast them back.

    Parameters
    ----------
    n_genes, hidden
        ``G`` genes and ``D`` hidden width.
    membership
        ``(G, P₀)`` 0/1 prior membership, or ``None``.
    n_learned
        Number of learned soft modules ``P₁`` (0 = prior modules only).
    init_from_prior
        Initialise the learned logits from ``membership`` (requires ``n_learned == P₀``).
    """

    def __init__(self, n_genes: int, hidden: int, membership: torch.Tensor | None = None,
                 n_learned: int = 0, init_from_prior: bool = False):
        super().__init__()
        if membership is None and n_learned == 0:
            raise ValueError("ModulePooling needs a prior membership (G, P) or n_learned > 0")
        if membership is not None:
            membership = torch.as_tensor(membership, dtype=torch.float32)
            if membership.dim() != 2 or membership.shape[0] != n_genes:
                raise ValueError(f"membership must be (G={n_genes}, P), got {tuple(membership.shape)}")
            self.register_buffer("membership", membership)
        else:
            self.register_buffer("membership", None)
        self.n_prior = 0 if membership is None else membership.shape[1]
        self.n_learned = n_learned
        if n_learned:
            logits = torch.randn(n_genes, n_learned) * 0.01
            if init_from_prior:
                if membership is None or membership.shape[1] != n_learned:
                    raise ValueError("init_from_prior needs n_learned == number of prior modules")
                logits = logits + 4.0 * membership
            self.assign_logits = nn.Parameter(logits)
        else:
            self.register_parameter("assign_logits", None)
        P = self.n_prior + n_learned
        self.n_tokens = P
        self.token_id = nn.Parameter(torch.randn(P, hidden) * 0.02)
        self.unpool_proj = nn.Linear(hidden, hidden)
        self.readout = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 1))
        nn.init.zeros_(self.unpool_proj.weight)  # zero-init: unpooling adds nothing at init
        nn.init.zeros_(self.unpool_proj.bias)

    def assignment(self) -> torch.Tensor:
        """Gene-to-module assignment ``S`` (G, P), prior columns first then learned columns."""
        parts = []
        if self.membership is not None:
            parts.append(self.membership)
        if self.assign_logits is not None:
            parts.append(torch.softmax(self.assign_logits, dim=-1))
        return torch.cat(parts, dim=1)  # (G, P)

    def pool_weights(self, S: torch.Tensor | None = None) -> torch.Tensor:
        """Column-normalised ``S``: each token is the weighted mean of its genes → (G, P)."""
        S = self.assignment() if S is None else S
        return S / S.sum(0, keepdim=True).clamp_min(1e-6)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (B, G, D) → tokens (B, P, D)."""
        W = self.pool_weights().to(h.dtype)  # (G, P)
        return torch.einsum("gp,bgd->bpd", W, h) + self.token_id.to(h.dtype)  # (B, P, D)

    def pool_values(self, x: torch.Tensor) -> torch.Tensor:
        """Module means of a per-gene scalar ``x`` (B, G) → (B, P)."""
        return x @ self.pool_weights().to(x.dtype)  # (B, P)

    def unpool(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, P, D) → per-gene update (B, G, D) (zero at init)."""
        U = self.unpool_weights().to(tokens.dtype)  # (G, P)
        return self.unpool_proj(torch.einsum("gp,bpd->bgd", U, tokens))  # (B, G, D)

    def unpool_weights(self) -> torch.Tensor:
        """Row-normalised ``S``: each gene gets the mean of its modules' tokens → (G, P); genes in no module → 0."""
        S = self.assignment()
        return S / S.sum(1, keepdim=True).clamp_min(1e-6)

    def _weights(self, which: str) -> torch.Tensor:
        compute = self.pool_weights if which == "pool" else self.unpool_weights
        return weight_cached(self, which, (self.membership, self.assign_logits), compute)

    def pool_genes(self, h: torch.Tensor) -> torch.Tensor:
        """Gene-major ``h`` (G, B, D) → tokens (B, P, D): one (P, G) × (G, B·D) matmul."""
        G, B, D = h.shape
        W = self._weights("pool").to(h.dtype)  # (G, P)
        tok = (W.T @ h.reshape(G, B * D)).view(-1, B, D)  # (P, B, D)
        return tok.transpose(0, 1) + self.token_id.to(h.dtype)  # (B, P, D)

    def unpool_genes(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, P, D) → gene-major per-gene update (G, B, D) (zero at init)."""
        B, P, D = tokens.shape
        U = self._weights("unpool").to(tokens.dtype)  # (G, P)
        y = U @ tokens.transpose(0, 1).reshape(P, B * D)  # (G, B·D)
        return self.unpool_proj(y.view(-1, B, D))  # (G, B, D)

    def activity(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token scalar activity for interpretation → (B, P)."""
        return self.readout(tokens).squeeze(-1)
