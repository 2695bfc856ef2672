"""Flows in a low-dimensional state: a rectified flow over vectors, and a latent flow with a
negative-binomial count decoder (the CFGen / scVI way of getting count realism).

:func:`train_vector_flow` is the small flow both use (and ``benchmarks/generation.py``'s
``pca_flow`` row): an :class:`~grndiff.nn.MLPVelocity` from N(0, I) to standardised states
``(N, K)``, conditioned on categorical keys, trained with the package's flow objective
(logit-normal times, AdamW, linear warm-up + cosine to 5 %, an EMA of the weights).

:class:`LatentNBFlow`: counts → :class:`~grndiff.nn.count_decoder.NBAutoencoder` state ``z``
(``latent`` wide) → a flow over ``z`` → decoded NB counts at a library size drawn from the
training cells of the same condition → log1p CP10k. Cost: the autoencoder's two MLPs
(``O(N·G·hidden)`` per epoch) and a flow over ``latent`` values per cell: no term in ``G²``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import flow
from ..data.normalize import log1p_cp10k
from ..nn import MLPVelocity
from ..nn.count_decoder import fit_nb_autoencoder
from .ema import EMA

__all__ = ["train_vector_flow", "LatentNBFlow"]


def _codes(df: pd.DataFrame, cats: dict) -> dict:
    """Condition columns → ``{key: (N,) long}`` with 0 = the null token and 1..K the categories."""
    return {k: torch.as_tensor(pd.Categorical(df[k].astype(str), categories=c).codes + 1, dtype=torch.long)
            for k, c in cats.items()}


def train_vector_flow(Z: torch.Tensor, labels: pd.DataFrame, *, steps: int, seed: int = 0, batch_size: int = 64,
                      lr: float = 1e-3, ema_decay: float = 0.995, hidden: int = 512, depth: int = 3):
    """Train a conditional rectified flow from N(0, I) to the states ``Z`` ``(N, K)`` (standardise
    them first). ``labels``: one categorical column per condition key, ``N`` rows.

    Returns
    -------
    ``sample(cond_df, seed, n_steps) -> (B, K)`` numpy states for the conditions in ``cond_df``
    (Euler, EMA weights; a seed gives the same states).
    """
    if Z.shape[0] != len(labels):
        raise ValueError(f"{Z.shape[0]} states but {len(labels)} label rows")
    torch.manual_seed(seed)
    cats = {k: pd.Categorical(labels[k].astype(str)).categories for k in labels.columns}
    specs = [{"name": k, "kind": "categorical", "n_categories": len(c)} for k, c in cats.items()]
    cond_all = _codes(labels, cats)
    net = MLPVelocity(Z.shape[1], specs, hidden=hidden, depth=depth)
    ema = EMA(net, ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warm = min(100, max(steps // 10, 1))  # the FlowModule schedule: linear warm-up, cosine to 5 %
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else
        0.05 + 0.475 * (1 + math.cos(math.pi * min((s - warm) / max(steps - warm, 1), 1))))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, Z.shape[0], (batch_size,), generator=gen)
        x1 = Z[idx]
        x0 = torch.randn(x1.shape, generator=gen)
        t = flow.sample_time(batch_size, schedule="logit_normal", generator=gen)
        v = net(flow.interpolate(x0, x1, t), t, {k: c[idx] for k, c in cond_all.items()})
        loss = flow.flow_loss(v, flow.target_velocity(x0, x1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(net)
    shadow = ema.shadow.eval()

    def sample(cond_df: pd.DataFrame, sample_seed: int, n_steps: int) -> np.ndarray:
        c = _codes(cond_df, cats)
        x0 = flow.seeded_noise((len(cond_df), Z.shape[1]), sample_seed)
        with torch.no_grad():
            return flow.sample_ode(lambda x, t: shadow(x, t, c), x0, method="euler", n_steps=n_steps).numpy()
    return sample


class LatentNBFlow:
    """A conditional flow in an NB autoencoder's state, decoded to counts.

    Parameters
    ----------
    latent
        Width of the state (32).
    ae_steps, flow_steps
        Optimiser steps of the autoencoder and of the flow.
    hidden, depth
        The flow's MLP.
    seed
        Weights, batches and noise.

    Examples
    --------
    >>> model = LatentNBFlow(flow_steps=1000).fit(counts, adata.obs[["cell_type"]])  # doctest: +SKIP
    >>> X_log, counts = model.sample(pd.DataFrame({"cell_type": ["B"] * 100}), seed=0)  # doctest: +SKIP
    """

    def __init__(self, latent: int = 32, *, ae_steps: int = 2000, flow_steps: int = 1000, hidden: int = 512,
                 depth: int = 3, batch_size: int = 64, lr: float = 1e-3, ema_decay: float = 0.995, seed: int = 0):
        self.latent, self.ae_steps, self.flow_steps = latent, ae_steps, flow_steps
        self.hidden, self.depth, self.batch_size, self.lr, self.ema_decay = hidden, depth, batch_size, lr, ema_decay
        self.seed = seed
        self.autoencoder = None

    def fit(self, counts, labels: pd.DataFrame) -> LatentNBFlow:
        """``counts`` ``(N, G)`` raw counts (dense or sparse); ``labels`` ``N`` rows, one column per
        condition key. Returns ``self``."""
        C = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
        if C.shape[0] != len(labels):
            raise ValueError(f"{C.shape[0]} cells of counts but {len(labels)} label rows")
        if (C < 0).any() or not np.array_equal(C, np.round(C)):
            raise ValueError("LatentNBFlow.fit needs raw counts (non-negative integers)")
        Ct = torch.as_tensor(C, dtype=torch.float32)
        Xt = torch.as_tensor(log1p_cp10k(C), dtype=torch.float32)
        self.autoencoder = fit_nb_autoencoder(Ct, Xt, latent=self.latent, steps=self.ae_steps, seed=self.seed)
        with torch.no_grad():
            Z = self.autoencoder.encode(Xt)
        self._mu, self._sd = Z.mean(0), Z.std(0) + 1e-6
        self._sample = train_vector_flow((Z - self._mu) / self._sd, labels, steps=self.flow_steps, seed=self.seed,
                                         batch_size=self.batch_size, lr=self.lr, ema_decay=self.ema_decay,
                                         hidden=self.hidden, depth=self.depth)
        self._keys = list(labels.columns)
        key = labels.astype(str).agg(" | ".join, axis=1).to_numpy()
        tot = C.sum(1)
        self._library = {k: tot[key == k] for k in np.unique(key)}  # counts per cell, per condition
        self._all_library = tot
        return self

    def sample(self, cond_df: pd.DataFrame, *, seed: int = 0, n_steps: int = 30):
        """Cells for the conditions in ``cond_df`` (one row per cell).

        Returns
        -------
        X, counts
            ``(B, G)`` log1p CP10k of the counts, and the ``(B, G)`` NB counts.
        """
        if self.autoencoder is None:
            raise RuntimeError("LatentNBFlow: call fit() first")
        missing = [k for k in self._keys if k not in cond_df.columns]
        if missing:
            raise KeyError(f"cond_df lacks the condition column(s) {missing} the model was fitted with")
        cond_df = cond_df[self._keys]
        z = torch.as_tensor(self._sample(cond_df, seed, n_steps), dtype=torch.float32) * self._sd + self._mu
        rng = np.random.default_rng(seed)
        key = cond_df.astype(str).agg(" | ".join, axis=1).to_numpy()
        lib = np.array([rng.choice(self._library.get(k, self._all_library)) for k in key], dtype=np.float32)
        counts = self.autoencoder.sample_counts(z, torch.as_tensor(lib), torch.Generator().manual_seed(seed))
        counts = counts.numpy().astype(np.float32)
        return log1p_cp10k(counts), counts
