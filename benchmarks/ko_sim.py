"""A knock-out simulator whose interventions propagate along the GRN (benchmark helper).

Our own numpy implementation of the SERGIO kinetics (Dibaeinia & Sinha 2020, Cell Systems
11:252–271): every gene ``j`` is produced at rate

    P_j(x) = b_j                                                (master regulator, per cell type)
    P_j(x) = Σ_i∈act K_ij · x_i^n / (h_ij^n + x_i^n)  +  Σ_i∈rep |K_ij| · h_ij^n / (h_ij^n + x_i^n)

and decays at rate ``λ x_j``; intrinsic noise follows the chemical Langevin equation

    dx_j = (P_j(x) − λ x_j) dt + q (√P_j dW₁ − √(λ x_j) dW₂).

The half-responses ``h_ij`` are set, as in SERGIO, to the regulator's steady-state expression
averaged over cell types — **of the wild-type cell** — and then kept: a knock-out is an
intervention on one gene (its production set to zero; ``"G3^"`` over-expresses it instead), not a
new network. (A simulator that rebuilds the network without the gene recomputes the remaining
half-responses, which largely cancels the knock-out downstream; benchmarks/results/sergio_signal.md.)

The noise-free steady state is found level by level in topological order, as SERGIO does; cells
are then simulated by Euler–Maruyama from that state for ``t_end`` time units (several decay
times), all cells × genes at once. Technical noise is simple and optional: a log-normal library
size per cell, Poisson counts, and a SERGIO-like logistic dropout.

Functions
---------
- :class:`Network` — a SERGIO GRN (``from_sergio("ds1")``), its levels and half-responses.
- :meth:`Network.mean` — the noise-free steady state of a perturbation, per cell type ``(T, G)``.
- :func:`simulate` — an AnnData of control and perturbed cells (``layers["counts"]``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sergio import N_GENES, gene_name, read_network  # (network files and their parser)

__all__ = ["Network", "parse_perturbation", "simulate"]


def parse_perturbation(label: str, control: str = "control", sep: str = "+") -> list[tuple[str, bool]]:
    """``"G3+G7^"`` → ``[("G3", False), ("G7", True)]`` (``^``: over-expression); control → ``[]``."""
    if label == control:
        return []
    return [(p.rstrip("^"), p.endswith("^")) for p in label.split(sep) if p]


@dataclass
class Network:
    """A SERGIO GRN as edge arrays.

    ``reg, tar`` gene indices ``(E,)``, ``k`` signed strength, ``n`` Hill coefficient;
    ``basal`` ``(T, G)`` production rate of master regulators per cell type (0 elsewhere).
    """

    genes: list[str]
    reg: np.ndarray
    tar: np.ndarray
    k: np.ndarray
    n: np.ndarray
    basal: np.ndarray
    decay: float = 0.8
    h: np.ndarray | None = None  # (E,) half-responses, fixed from the wild type by __post_init__

    def __post_init__(self):
        G, E = len(self.genes), len(self.reg)
        self.index = {g: i for i, g in enumerate(self.genes)}
        self.levels = self._levels()
        self.mr = np.setdiff1d(np.arange(G), self.tar)  # genes without regulators
        # (G, E) sum-over-incoming-edges operator: production of each target
        # activation K·hill, repression |K|·(1 − hill) = |K| + K·hill: P = basal + c0 + W · hill
        self._W = sp.csr_matrix((self.k, (self.tar, np.arange(E))), shape=(G, E))  # (G, E)
        self._c0 = np.bincount(self.tar, weights=np.where(self.k < 0, -self.k, 0.0), minlength=G)  # (G,)
        self._n2 = bool(np.all(self.n == 2))  # x·x is much faster than a float power
        if self.h is None:
            self.h = self._wild_type_half_responses()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_sergio(cls, name: str, n_types: int = 3, seed: int = 0, rate_range=(0.5, 3.0), decay: float = 0.8):
        """DS1/DS2/DS3 edges; master-regulator rates drawn per cell type, log-uniform in ``rate_range``.

        (The shipped files do not include SERGIO's ``Regs_cID`` rates; each cell type draws its own.)
        """
        e = read_network(name)
        genes = [gene_name(i) for i in range(N_GENES[name])]
        return cls.from_edges(e, genes, n_types=n_types, seed=seed, rate_range=rate_range, decay=decay)

    @classmethod
    def from_edges(cls, edges: pd.DataFrame, genes: Sequence[str], n_types: int = 3, seed: int = 0,
                   rate_range=(0.5, 3.0), decay: float = 0.8):
        """From a table ``reg, target, k, n`` over ``genes``."""
        genes = list(genes)
        idx = {g: i for i, g in enumerate(genes)}
        reg = edges["reg"].map(idx).to_numpy(np.int64)
        tar = edges["target"].map(idx).to_numpy(np.int64)
        rng = np.random.default_rng(seed)
        lo, hi = np.log(rate_range[0]), np.log(rate_range[1])
        basal = np.zeros((n_types, len(genes)))
        mr = np.setdiff1d(np.arange(len(genes)), tar)
        basal[:, mr] = np.exp(rng.uniform(lo, hi, size=(n_types, mr.size)))
        return cls(genes, reg, tar, edges["k"].to_numpy(float), edges["n"].to_numpy(float), basal, decay)

    def _levels(self) -> list[np.ndarray]:
        """Genes grouped by topological level (level 0: master regulators); raises on a cycle."""
        G = len(self.genes)
        indeg = np.bincount(self.tar, minlength=G)
        children = [[] for _ in range(G)]
        for r, t in zip(self.reg.tolist(), self.tar.tolist()):
            children[r].append(t)
        level, out = np.flatnonzero(indeg == 0), []
        indeg = indeg.copy()
        while level.size:
            out.append(level)
            nxt = []
            for g in level.tolist():
                for c in children[g]:
                    indeg[c] -= 1
                    if indeg[c] == 0:
                        nxt.append(c)
            level = np.asarray(sorted(set(nxt)), dtype=np.int64)
        if sum(len(v) for v in out) != G:
            raise ValueError("the network has a cycle: SERGIO's steady-state rule needs a DAG")
        return out

    # ---------------------------------------------------------------- kinetics
    def _rates(self, label: str, control: str = "control") -> tuple[np.ndarray, np.ndarray]:
        """(G,) production multiplier (0: knocked out) and (G,) over-expression flag."""
        G = len(self.genes)
        mult, over = np.ones(G), np.zeros(G, dtype=bool)
        for g, up in parse_perturbation(label, control):
            if g not in self.index:
                raise KeyError(f"perturbed gene {g!r} is not in the network")
            i = self.index[g]
            mult[i], over[i] = (2.0, True) if up else (0.0, False)
        return mult, over

    def production(self, x: np.ndarray, basal: np.ndarray, mult: np.ndarray) -> np.ndarray:
        """P(x) for cells ``x`` (B, G) with per-cell basal rates (B, G). Returns (B, G)."""
        xr = np.maximum(x[:, self.reg], 0.0)  # (B, E)
        xn = xr * xr if self._n2 else xr ** self.n
        hill = xn / (self.h ** self.n + xn)  # (B, E)
        p = basal + self._c0 + (self._W @ hill.T).T  # (B, G)
        return p * mult

    def mean(self, label: str = "control", control: str = "control") -> np.ndarray:
        """Noise-free steady state ``x = P(x) / λ``, level by level. Returns (T, G)."""
        mult, _ = self._rates(label, control)
        x = np.zeros(self.basal.shape)
        for lv in self.levels:  # a level's regulators are all in earlier levels: already final
            x[:, lv] = self.production(x, self.basal, mult)[:, lv] / self.decay
        return x

    def _wild_type_half_responses(self) -> np.ndarray:
        """SERGIO's rule: h_ij = the wild-type steady state of regulator i, averaged over cell types. (E,)"""
        self.h = np.ones(len(self.reg))  # placeholder for edges whose regulator is not solved yet
        h = np.ones(len(self.reg))
        x = np.zeros(self.basal.shape)
        mult = np.ones(len(self.genes))
        for lv in self.levels:
            x[:, lv] = self.production(x, self.basal, mult)[:, lv] / self.decay
            out = np.isin(self.reg, lv)
            h[out] = np.maximum(x[:, self.reg[out]].mean(0), 1e-3)
            self.h = h.copy()
        return h

    # ---------------------------------------------------------------- cells
    def simulate_cells(self, label: str, n_cells: int, rng: np.random.Generator, *, noise: float = 0.5,
                       t_end: float = 5.0, dt: float = 0.05, control: str = "control") -> tuple[np.ndarray, np.ndarray]:
        """CLE cells of one perturbation, ``n_cells`` per cell type. Returns expression (T·n, G) and types (T·n,)."""
        mult, _ = self._rates(label, control)
        T = self.basal.shape[0]
        types = np.repeat(np.arange(T), n_cells)
        x = self.mean(label, control)[types].copy()  # (B, G) start at the deterministic steady state
        basal = self.basal[types]
        sq = np.sqrt(dt)
        for _ in range(int(round(t_end / dt))):
            p = self.production(x, basal, mult)
            d = self.decay * x
            x = x + (p - d) * dt + noise * sq * (np.sqrt(p) * rng.standard_normal(x.shape)
                                                 - np.sqrt(d) * rng.standard_normal(x.shape))
            x = np.maximum(x, 0.0)
        x[:, mult == 0] = 0.0  # a knocked-out gene is not expressed
        return x, types


def simulate(net: Network, perturbations: Sequence[str], *, n_cells: int = 100, seed: int = 0,
             noise: float = 0.5, scale: float = 3.0, library_sd: float = 0.2, dropout: float | None = None,
             t_end: float = 5.0, dt: float = 0.05, control: str = "control"):
    """Control and perturbed cells of one network as an AnnData of counts.

    Parameters
    ----------
    perturbations
        Labels: ``control``, a gene (``"G30"``: knock-out), ``"G30^"`` (over-expression ×2) or a
        combination (``"G30+G41"``).
    n_cells
        Cells per cell type and perturbation.
    noise
        Intrinsic noise scale ``q`` of the chemical Langevin equation (0: deterministic).
    scale, library_sd
        Counts are ``Poisson(scale · x · L)`` with a per-cell library factor ``L ~ LogNormal(0, library_sd)``.
    dropout
        ``None``: no dropout; else SERGIO's logistic dropout with midpoint at this percentile of
        the expression (shape 8).

    Returns
    -------
    anndata.AnnData
        ``layers["counts"]`` and ``X`` (counts, float32), ``layers["clean"]`` (the CLE
        expression before technical noise), ``obs["perturbation"]``, ``obs["cell_type"]``;
        ``uns["ko_sim"]`` holds the parameters.
    """
    import anndata as ad
    rng = np.random.default_rng(seed)
    xs, types, labs = [], [], []
    for p in perturbations:
        x, t = net.simulate_cells(p, n_cells, rng, noise=noise, t_end=t_end, dt=dt, control=control)
        xs.append(x)
        types.append(t)
        labs += [p] * len(t)
    x = np.concatenate(xs)  # (N, G)
    lam = scale * x * rng.lognormal(0.0, library_sd, size=(x.shape[0], 1))
    if dropout is not None:  # logistic dropout on log expression, as SERGIO's technical noise
        lx = np.log1p(lam)
        mid = np.percentile(lx, dropout)
        keep = rng.random(lx.shape) > 1.0 / (1.0 + np.exp(-8.0 * (mid - lx)))
        lam = lam * keep
    counts = rng.poisson(lam).astype(np.float32)
    obs = pd.DataFrame({"perturbation": pd.Categorical(labs),
                        "cell_type": pd.Categorical([f"type{t}" for t in np.concatenate(types)])},
                       index=[f"c{i}" for i in range(len(labs))])
    a = ad.AnnData(X=counts.copy(), obs=obs, var=pd.DataFrame(index=list(net.genes)))
    a.layers["counts"] = counts
    a.layers["clean"] = x.astype(np.float32)
    a.uns["ko_sim"] = {"noise": noise, "scale": scale, "library_sd": library_sd, "t_end": t_end, "dt": dt,
                       "dropout": -1 if dropout is None else dropout, "seed": seed, "decay": net.decay}
    return a
