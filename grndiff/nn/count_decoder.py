"""A count decoder: expression ↔ a low-dimensional state, with negative-binomial counts out.

The scVI / CFGen way of getting count realism: an encoder maps a cell's log1p-normalised
expression ``(B, G)`` to a state ``z`` ``(B, d)``; a decoder maps ``z`` to gene proportions ``ρ``
(softmax over ``G``) and, with the cell's library size ``L``, to negative-binomial counts
``k_g ~ NB(mean L·ρ_g, inverse dispersion θ_g)`` (``θ`` one learned value per gene). Trained by the
NB log-likelihood of the observed counts. A flow in ``z`` (:class:`grndiff.train.LatentNBFlow`)
then generates states, and the decoder turns them into counts, whose zeros come from the NB
rather than from the flow.

Cost: two MLPs, ``O(B·G·hidden)`` per pass; no ``G × G`` or graph term.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["nb_log_prob", "NBAutoencoder", "fit_nb_autoencoder"]


def nb_log_prob(k: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Log-probability of counts ``k`` under NB(mean ``mu``, inverse dispersion ``theta``); shapes
    broadcast (``(B, G)``, ``(B, G)``, ``(G,)``). Variance ``mu + mu² / theta``."""
    log_t_mu = torch.log(theta + mu + eps)
    return (theta * (torch.log(theta + eps) - log_t_mu) + k * (torch.log(mu + eps) - log_t_mu)
            + torch.lgamma(k + theta) - torch.lgamma(theta) - torch.lgamma(k + 1.0))


def _mlp(n_in: int, hidden: int, n_out: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class NBAutoencoder(nn.Module):
    """Encoder ``(B, G)`` log1p values → ``(B, latent)``; decoder → NB counts.

    Parameters
    ----------
    n_genes
        ``G``.
    latent
        Width ``d`` of the state the flow runs in.
    hidden, depth
        Width and number of hidden layers of each MLP.
    """

    def __init__(self, n_genes: int, latent: int = 32, hidden: int = 256, depth: int = 2):
        super().__init__()
        self.n_genes, self.latent = n_genes, latent
        self.encoder = _mlp(n_genes, hidden, latent, depth)
        self.decoder = _mlp(latent, hidden, n_genes, depth)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))  # θ = 1 at start

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, G)`` log1p-normalised expression → ``(B, latent)``."""
        return self.encoder(x)

    def proportions(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent)`` → ``(B, G)`` expected fraction of a cell's counts in each gene."""
        return torch.softmax(self.decoder(z), dim=-1)

    @property
    def theta(self) -> torch.Tensor:
        """``(G,)`` inverse dispersion (large: close to Poisson)."""
        return self.log_theta.exp()

    def loss(self, counts: torch.Tensor, x: torch.Tensor, latent_noise: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean negative NB log-likelihood per value of ``counts`` ``(B, G)``, decoded from
        ``x`` ``(B, G)`` (log1p CP10k of the same cells) at each cell's own library size.
        ``latent_noise``: Gaussian noise added to ``z`` (a smoother state for the flow)."""
        z = self.encode(x)
        if latent_noise > 0:
            z = z + latent_noise * torch.randn(z.shape, generator=generator, dtype=z.dtype)
        mu = self.proportions(z) * counts.sum(1, keepdim=True)
        return -nb_log_prob(counts, mu, self.theta).mean()

    @torch.no_grad()
    def sample_counts(self, z: torch.Tensor, library: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Counts ``(B, G)`` for states ``z`` ``(B, latent)`` at library sizes ``library`` ``(B,)``:
        a Gamma–Poisson draw (the NB), reproducible with ``generator``."""
        mu = self.proportions(z) * library.reshape(-1, 1)
        theta = self.theta.expand_as(mu)
        with torch.random.fork_rng(devices=[]):  # torch's gamma sampler reads the global generator
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            rate = torch._standard_gamma(theta) * (mu / theta)
            return torch.poisson(rate)


def fit_nb_autoencoder(counts: torch.Tensor, x: torch.Tensor, *, latent: int = 32, hidden: int = 256,
                       depth: int = 2, steps: int = 2000, batch_size: int = 128, lr: float = 1e-3,
                       latent_noise: float = 0.1, seed: int = 0) -> NBAutoencoder:
    """Train an :class:`NBAutoencoder` on ``counts`` ``(N, G)`` with ``x`` ``(N, G)`` = their
    log1p CP10k values (AdamW, cosine decay to 5 %); returns it in eval mode."""
    if counts.shape != x.shape:
        raise ValueError(f"counts {tuple(counts.shape)} and x {tuple(x.shape)} must have the same shape")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NBAutoencoder(counts.shape[1], latent, hidden, depth)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.475 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, counts.shape[0], (min(batch_size, counts.shape[0]),), generator=gen)
        loss = model.loss(counts[idx], x[idx], latent_noise=latent_noise, generator=gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()
