"""The per-group Gaussian behind :class:`~grndiff.flow.sources.GaussianSource` (pure torch)."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def seeded_noise(shape: Sequence[int], seed: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) noise drawn from a private CPU generator, then moved.

    Drawing on the CPU makes the numbers depend on ``seed`` and ``shape`` only: bitwise identical
    across runs, and the same cells on CPU and GPU (CUDA's generator is a different stream).
    Noise is always drawn in float32 and then cast, so float32 and float64 runs start from the
    same points. The global RNG is left untouched.

    Parameters
    ----------
    shape
        Usually ``(B, G)``.
    seed
        Integer seed.
    device, dtype
        Where and how the result is returned.

    Returns
    -------
    x0 : ``shape``
    """
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(device=device, dtype=dtype)



class PerGroupGaussian(torch.nn.Module):
    r"""A data-dependent source: one Gaussian per condition group, fitted to the training cells.

    ``x₀ = μ_c + S⁻¹ W L_c z + (I − P)(r·ψ ⊙ ε)`` with ``z ~ N(0, I_k)``, ``ε ~ N(0, I_G)``:
    ``μ_c`` the group's mean (G,); ``S = diag(s)`` a per-gene scale (``s`` = 1 by default; the
    model passes the scaler's per-gene std, so ``S(x − μ)`` is the cell in log1p units); ``W``
    (G, k) the top-``k`` principal axes of ``S(x − μ)`` over all training cells; ``L_c`` the
    Cholesky factor of the group's covariance of those PC scores (shrunk towards the pooled
    within-group one when the group is small); ``P = S⁻¹ W Wᵀ S`` the projection on the ``k``
    axes (orthogonal in the ``S``-scaled space); ``ψ`` the per-gene within-group std left
    outside the ``k`` axes; ``r`` the ``residual`` scale. The residual noise is kept off the
    ``k`` axes, so a cell's PC scores are exactly its group's Gaussian draw. With a velocity
    network that outputs 0 at init the flow starts as this per-group Gaussian — the strong
    low-rank baseline — and training only has to learn what the Gaussian misses. A
    condition-dependent prior for diffusion is PriorGrad (Lee et al. 2022, ICLR,
    arXiv:2106.06406); non-Gaussian sources coupled to the data are the stochastic
    interpolants of Albergo et al. (2023, arXiv:2310.03725).

    Why a scale: in per-gene standardised units thousands of barely-expressed genes weigh as
    much as the informative ones, and the top axes spend themselves on them; in log1p units the
    axes are the usual PCA of expression; untrained, log1p axes gave the lower energy distance of
    held-out cells (``benchmarks/results/generation_source_v2.md`` keeps the standardised-axes rows,
    ``generation.md`` the log1p ones).

    Group ``0`` is every training cell (used for condition combinations never seen in training).

    Parameters
    ----------
    n_genes
        ``G``.
    n_groups
        Number of groups including group 0.
    n_comps
        ``k`` (capped by the number of cells − 1 and ``G`` at fit time).
    residual
        ``r``: 1 keeps each gene's variance; smaller values put less independent noise per gene.
    """

    def __init__(self, n_genes: int, n_groups: int = 1, n_comps: int = 30, residual: float = 0.5):
        super().__init__()
        self.n_genes, self.n_groups = int(n_genes), int(n_groups)
        self.n_comps, self.residual = int(n_comps), float(residual)
        k = self.n_comps
        self.register_buffer("mean", torch.zeros(n_groups, n_genes))  # (K, G)
        self.register_buffer("basis", torch.zeros(n_genes, k))  # (G, k)
        self.register_buffer("chol", torch.eye(k).repeat(n_groups, 1, 1))  # (K, k, k)
        self.register_buffer("resid_std", torch.ones(n_genes))  # (G,)
        self.register_buffer("scale", torch.ones(n_genes))  # (G,) s: the axes are principal in s ⊙ (x − μ)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, group: torch.Tensor, scale: torch.Tensor | None = None) -> PerGroupGaussian:
        """Fit on training cells ``x`` (N, G) with group ids ``group`` (N,) in ``[1, n_groups)``
        (0 or negative = no group; such cells count for group 0 only). ``scale`` (G,), positive:
        the principal axes are those of ``scale ⊙ (x − μ)`` (default: all ones). Returns ``self``."""
        N, G = x.shape
        x = x.double() if N * G <= 50_000_000 else x.float()  # float64 where it is cheap
        if G != self.n_genes:
            raise ValueError(f"x has {G} genes, the source was built for {self.n_genes}")
        if N < 2:
            raise ValueError("the source needs at least 2 training cells")
        if scale is None:
            s = torch.ones(G, dtype=x.dtype)
        else:
            s = torch.as_tensor(scale).to(dtype=x.dtype).reshape(-1)
            if s.shape[0] != G or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
                raise ValueError(f"scale must be {G} finite positive numbers (one per gene)")
        k = min(self.n_comps, N - 1, G)
        mu = x.mean(0)
        if min(N, G) > 4 * k + 100:  # randomised SVD (Halko et al. 2011): only k axes are needed
            with torch.random.fork_rng(devices=[]):  # its random probes must not move the global stream
                torch.manual_seed(0)
                _, _, V = torch.svd_lowrank((x - mu) * s, q=k + 10, niter=4)
            W = V[:, :k]  # (G, k)
        else:
            _, _, Vh = torch.linalg.svd((x - mu) * s, full_matrices=False)
            W = Vh[:k].T  # (G, k)
        S = ((x - mu) * s) @ W  # (N, k)
        pooled = torch.cov(S.T).reshape(k, k) + 1e-6 * torch.eye(k, dtype=x.dtype)  # all cells: group 0
        means = mu.repeat(self.n_groups, 1)
        centred = x - mu  # each cell minus its own group's mean (its group's, once known)
        stats = {}
        for gid in range(1, self.n_groups):
            sel = group == gid
            n = int(sel.sum())
            if n == 0:
                continue
            m = x[sel].mean(0)
            means[gid] = m
            centred[sel] = x[sel] - m
            Sg = (centred[sel] * s) @ W
            stats[gid] = (n, Sg.T @ Sg / max(n - 1, 1))
        if stats:  # pooled WITHIN-group covariance: the shrinkage target (the all-cell one adds the
            n_tot = sum(n for n, _ in stats.values())  # spread between groups to every group)
            within = sum((n - 1) * c for n, c in stats.values()) / max(n_tot - len(stats), 1)
        else:
            within = pooled
        chols = torch.zeros(self.n_groups, self.n_comps, self.n_comps, dtype=x.dtype)
        chols[0, :k, :k] = torch.linalg.cholesky(pooled)
        for gid in range(1, self.n_groups):
            if gid not in stats:
                chols[gid] = chols[0]
                continue
            n, emp = stats[gid]
            shrunk = (n * emp + k * within) / (n + k)  # small groups lean on the pooled within-group covariance
            chols[gid, :k, :k] = torch.linalg.cholesky(shrunk + 1e-6 * torch.eye(k, dtype=x.dtype))
        # residual noise: what the k axes leave of each cell around its group's mean
        resid = centred - ((centred * s) @ W) @ W.T / s
        self.mean.copy_(means.float())
        self.scale.copy_(s.float())
        self.basis.zero_()
        self.basis[:, :k] = W.float()
        self.chol.copy_(chols.float())
        self.resid_std.copy_(resid.std(0).float())
        self.fitted.fill_(True)
        return self

    def _groups(self, group) -> torch.Tensor:
        """Group ids (B,) on the source's device; out-of-range or negative → 0 (pooled)."""
        if not bool(self.fitted):
            raise RuntimeError("PerGroupGaussian is not fitted: call .fit(x, group) on the training cells first")
        group = torch.as_tensor(group, dtype=torch.long, device=self.mean.device)
        return torch.where((group > 0) & (group < self.n_groups), group, torch.zeros_like(group))

    def couple(self, x1: torch.Tensor, group: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Source points paired with data cells ``x1`` (B, G) for training ("low-rank coupling").

        ``x₀ = μ_c + P(x₁ − μ_c) + (I − P)(r·ψ ⊙ ε)``: ``x₀`` keeps ``x₁``'s coordinates on the
        ``k`` principal axes and replaces the rest by the source's residual noise, so the flow
        only learns the gene-level residual of each cell given its low-rank state, which stays
        fixed along the path. At generation the low-rank coordinates come from the group's
        Gaussian (:meth:`sample`), whose law they follow to second order: the generated cells
        are the Gaussian baseline's low-rank cells with a learnt gene-level residual. The
        pairing is a coupling with the right ``x₁`` marginal; ``x₀``'s law is the source's
        exactly when the PC scores are Gaussian.
        """
        group = self._groups(group)
        mu = self.mean[group].to(x1.dtype)  # (B, G)
        low = self._lift(self._scores(x1 - mu))  # (B, G)
        eps = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        # the residual noise lives off the k axes too, so x₁ − x₀ has no component on them
        return mu + low + self.project_off(self.residual * self.resid_std.to(x1.dtype) * eps)

    def _scores(self, d: torch.Tensor) -> torch.Tensor:
        """Coordinates (B, k) of deviations ``d`` (B, G) on the ``k`` axes: ``Wᵀ S d``."""
        return (d * self.scale.to(d.dtype)) @ self.basis.to(d.dtype)  # zero columns beyond the fitted k

    def _lift(self, scores: torch.Tensor) -> torch.Tensor:
        """Deviations (B, G) with coordinates ``scores`` (B, k) on the axes: ``S⁻¹ W scores``."""
        return (scores @ self.basis.T.to(scores.dtype)) / self.scale.to(scores.dtype)

    def project_off(self, v: torch.Tensor) -> torch.Tensor:
        """``(I − P) v``: ``v`` (B, G) with its component on the source's ``k`` axes removed."""
        return v - self._lift(self._scores(v))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "scale", torch.ones(self.n_genes))  # saved before the scale existed
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sample(self, group: torch.Tensor, seed: int | None = None, generator: torch.Generator | None = None,
               device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw ``x₀`` (B, G) for group ids ``group`` (B,) (out-of-range or negative → group 0).

        ``seed`` draws from a private CPU generator (bitwise reproducible, as
        :func:`seeded_noise`); otherwise ``generator`` (or the global stream) is used.
        """
        group = self._groups(group)
        B, k = group.shape[0], self.n_comps
        if seed is not None:
            z = seeded_noise((B, k + self.n_genes), seed, device=self.mean.device)
        else:
            z = torch.randn(B, k + self.n_genes, generator=generator, device=self.mean.device)
        scores = torch.einsum("bij,bj->bi", self.chol[group], z[:, :k])  # (B, k)
        noise = self.project_off(self.residual * self.resid_std * z[:, k:])  # off the k axes, as in couple()
        x0 = self.mean[group] + self._lift(scores) + noise  # (B, G)
        return x0.to(device=device or self.mean.device, dtype=dtype)
