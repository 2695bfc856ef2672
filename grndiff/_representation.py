"""Pathway-token read-outs of a trained :class:`~grndiff.GRNDiff` (what :mod:`grndiff.tl` and
:mod:`grndiff.pl` use): per-cell token activities, a token-level embedding, the pooling and the
graph-attention layers."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import torch


class TokenReadout:
    """Mixed into :class:`~grndiff.GRNDiff`; needs ``module``, ``processor`` and ``graph``."""

    @torch.no_grad()
    def _token_pass(self, adata: ad.AnnData, t: float, use_conditions: bool, batch_size: int):
        net = self.module.sampling_net
        net.eval()
        x = torch.as_tensor(self.processor.scaled_dense(adata))  # (B, G)
        keys = self.processor.conditions.keys
        own = {k: adata.obs[k].to_numpy() for k in keys if use_conditions and k in adata.obs.columns}
        cond, pert, _ = self.processor.conditions.request(own, x.shape[0])
        cond = self.module.net_conditions(cond)  # what the network was trained to see
        acts, toks = [], []
        for s in range(0, x.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            tt = torch.full((x[sl].shape[0],), float(t))
            _, extras = net(x[sl], tt, {k: v[sl] for k, v in cond.items()}, None if pert is None else pert[sl],
                            return_tokens=True)
            if "activity" not in extras:  # no module tokens ({}), or tokens without activities (latent_tokens)
                raise ValueError("this model has no module tokens: build it with modules=... or n_learned_modules > 0")
            acts.append(extras["activity"])
            toks.append(extras["tokens"].mean(1))
        return torch.cat(acts).numpy(), torch.cat(toks).numpy()

    def get_token_activities(self, adata: ad.AnnData, *, t: float = 1.0, use_conditions: bool = True,
                             batch_size: int = 512) -> pd.DataFrame:
        """Per-cell module-token activities (cells × P), columns = module names.

        Cells enter at flow time ``t`` (1 = the observed expression); the activity is the token's
        read-out, trained to estimate the module's mean scaled expression of the clean cell.
        """
        acts, _ = self._token_pass(adata, t, use_conditions, batch_size)
        return pd.DataFrame(acts, index=adata.obs_names, columns=self.token_names)

    def get_latent_representation(self, adata: ad.AnnData, *, t: float = 1.0, batch_size: int = 512) -> np.ndarray:
        """Mean token state per cell (cells × D): a pathway-level embedding for neighbours/UMAP."""
        return self._token_pass(adata, t, True, batch_size)[1]

    @property
    def pooling(self):
        """The network's module pooling (or ``None``)."""
        return getattr(self.module.net, "pooling", None)

    def graph_layers(self) -> list:
        """The network's graph-attention layers (empty for backbones without a graph)."""
        net = self.module.net
        return net.graph_layers() if hasattr(net, "graph_layers") else []

    @property
    def token_names(self) -> list[str]:
        """Names of the module tokens: the prior gene sets, then ``learned_i``."""
        pooling = self.pooling
        if pooling is None:
            return []
        learned = [f"learned_{i}" for i in range(pooling.n_learned)]
        return list(self.graph.module_names or [])[: pooling.n_prior] + learned
