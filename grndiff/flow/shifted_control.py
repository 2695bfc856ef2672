"""Perturbation transport: control cells moved by a cell-state-dependent shift, then the flow.

What a stimulus or a knock-out does to a cell depends on the cell's state (IFN-β moves monocytes
much further than T cells), and most of it lies in a few principal axes that are shared across
contexts — the "latent arithmetic" that scGen (Lotfollahi et al. 2019, Nat Methods) does in a VAE
latent. :class:`ShiftedControlSource` estimates that shift without a network:

1. In every training context (a ``match_keys`` group, e.g. a cell type) and for every
   perturbation seen there, the context's control cells are matched to its perturbed cells by
   exact optimal transport on their centred coordinates in the top ``match_dims`` log-PCs; each
   control cell's *displacement* is its barycentric OT target minus itself (G genes).
2. A control cell of a new context gets the mean displacement of its ``neighbours`` nearest
   control cells (in the same log-PC coordinates) among the training contexts that saw the
   perturbation, blended (``blend``) with the mean shift over those contexts. A perturbation
   never seen in training gets the mean shift over the perturbations that were.

The flow then starts from the shifted control cell, and the network learns what the shift
misses. Training pairs are built with the estimate the model would have made had it not seen the
cell's context (leave-one-context-out), or, for a perturbation seen in one context only, its
perturbation (the pooled shift of the others): the network learns to correct exactly the error it
will meet at prediction. With ``coupling="lowrank"`` the source's ``k`` log-PC coordinates are
fixed by the shift and the network only moves the cell off those axes, so an untrained model
predicts exactly the shift and training can only change the gene-level residual; ``"auto"`` (the
default) uses it for perturbations seen in several contexts and ``"residual"`` otherwise.

How this shift alone compares with the mean shift and the peers on Kang 2018 held-out cell types:
``benchmarks/results/perturbation.md`` (the README's table).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .gaussian import PerGroupGaussian
from .groups import condition_keys
from .sources import Source, _checked_control

__all__ = ["ShiftedControlSource"]

_RESIZABLE = ("bank_z", "bank_d", "bank_pair", "pair_label", "pair_ctx", "pair_shift", "pair_err", "label_table",
              "ctx_table", "own_log", "own_genes")
COUPLINGS = ("auto", "lowrank", "residual", "full")


class ShiftedControlSource(Source):
    """Control cells moved by the cell-state-dependent OT shift of the contexts seen in training.

    Parameters
    ----------
    k
        Principal axes (log1p units) of the low-rank state; with ``coupling="lowrank"`` the flow
        keeps a cell's coordinates on them at the shifted control's.
    neighbours
        Control cells of the training contexts whose displacements are averaged for each cell.
    match_dims
        Leading log-PCs used for the OT matching and the neighbour search.
    blend
        Weight of the neighbour (cell-state) estimate; ``1 − blend`` goes to the mean shift over
        the training contexts (0.75 did best among the weights measured on Kang held-out cell
        types, ``grndiff_shift`` vs ``grndiff_shift_knn`` in ``benchmarks/results/perturbation.md``;
        choosing it by leave-one-context-out on the training types picked worse weights).
    coupling
        How training pairs a source point ``x₀`` with a perturbed cell ``x₁``:

        - ``"lowrank"``: ``x₀`` takes ``x₁``'s coordinates on the ``k`` axes and the velocity is
          kept off them, so the network can only change the gene-level residual off the axes;
        - ``"residual"``: as ``"lowrank"``, but on the axes ``x₀`` sits where the held-out estimate
          (leave the context out; for a perturbation seen in one context, leave the perturbation
          out) put the *mean* of ``x₁``'s (perturbation, context) group, and the velocity is free:
          the network learns the estimate's error on the principal axes (a noise-free target per
          group) as well as the residual off them — for an unseen knock-out, the move away from the
          pooled shift that its flag on the graph must explain;
        - ``"full"``: ``x₀`` is the shifted paired control cell, unconstrained;
        - ``"auto"`` (default): ``"lowrank"`` for a perturbation seen in several contexts (and the
          control cells), ``"residual"`` for one seen in a single context or never. Where the
          perturbation was seen elsewhere the transport's estimate is strong and the errors it makes
          on a context left out did not carry to a new one (Kang 2018, ``perturbation_ablation.md``);
          a perturbation seen nowhere else starts from the pooled shift of the others, and the
          network, told which gene is perturbed on the graph, must be free to move the cell on the
          principal axes (``benchmarks/results/graph_claim_auto.md``).
    max_bank
        Control cells kept per (perturbation, context) pair (random subset, seeded).
    own_effect
        For a perturbation not seen in training (and for training pairs that leave the cell's
        perturbation out), add to each of its perturbed *measured* genes the median change the
        training perturbations made to their own genes, in log1p units. Off: the pooled shift alone.
    seed
        Seed of the subsets (private generator: the global RNG is not touched).
    """

    name = "shifted_control"
    options = ("k", "neighbours", "match_dims", "blend", "coupling", "max_bank", "own_effect", "seed")
    needs_control = True
    can_transport = True
    allows_ot_pairing = False

    def __init__(self, k: int = 100, neighbours: int = 15, match_dims: int = 30, blend: float = 0.75,
                 coupling: str = "auto", max_bank: int = 500, own_effect: bool = True, seed: int = 0):
        super().__init__()
        if coupling not in COUPLINGS:
            raise ValueError(f"ShiftedControlSource coupling must be one of {COUPLINGS}, got {coupling!r}")
        if not 0.0 <= float(blend) <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {blend}")
        if min(int(k), int(neighbours), int(match_dims), int(max_bank)) < 1:
            raise ValueError("k, neighbours, match_dims and max_bank must be ≥ 1")
        self.k, self.neighbours, self.match_dims = int(k), int(neighbours), int(match_dims)
        self.blend, self.coupling, self.max_bank, self.seed = float(blend), coupling, int(max_bank), int(seed)
        self.own_effect = bool(own_effect)
        self.axes: PerGroupGaussian | None = None
        self.label_names: list[str] = []
        self.context_names: list[str] = []
        self._scale = None
        self._maps = None

    # ------------------------------------------------------------------ build
    def build(self, n_genes, condition_specs=(), gene_scale=None, context_keys=()):
        super().build(n_genes)
        names = [s["name"] if isinstance(s, dict) else s.name for s in (condition_specs or [])]
        missing = [c for c in context_keys or () if c not in names]
        if missing:
            raise ValueError(f"match_keys {missing} are not condition keys of the model ({names}): register them "
                             "in setup_anndata(condition_keys=...) so the source can tell contexts apart")
        self.context_names = list(context_keys or ())
        self.label_names = [n for n in names if n not in self.context_names]
        self.axes = PerGroupGaussian(self.n_genes, 1, self.k, residual=0.0)
        self._scale = None if gene_scale is None else torch.as_tensor(gene_scale).float()
        G = self.n_genes
        for name, shape, dtype in (("bank_z", (0, self.match_dims), torch.float32), ("bank_d", (0, G), torch.float32),
                                   ("bank_pair", (0,), torch.long), ("pair_label", (0,), torch.long),
                                   ("pair_ctx", (0,), torch.long), ("pair_shift", (0, G), torch.float32),
                                   ("pair_err", (0, G), torch.float32),
                                   ("label_table", (0, 0), torch.float64), ("ctx_table", (0, 0), torch.float64),
                                   ("own_log", (0,), torch.float32), ("own_genes", (0, 0), torch.long)):
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.register_buffer("control_label", torch.tensor(-1))
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "pair_shift" in state_dict and prefix + "pair_err" not in state_dict:  # saved before pair_err
            state_dict[prefix + "pair_err"] = torch.zeros_like(state_dict[prefix + "pair_shift"])
        if prefix + "label_table" in state_dict and prefix + "own_log" not in state_dict:  # saved before own_log
            state_dict[prefix + "own_log"] = torch.full((state_dict[prefix + "label_table"].shape[0],), float("nan"))
            state_dict[prefix + "own_genes"] = torch.full((state_dict[prefix + "label_table"].shape[0], 0), -1)
        for name in _RESIZABLE:  # the bank's size is set by the data it was fitted on
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self._maps = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def needs_fit(self) -> bool:
        return not self.fitted

    # ------------------------------------------------------------------- keys
    def _keys(self, cond, pert, n):
        labels = condition_keys(cond, pert, self.label_names, n, with_pert=True)
        ctxs = condition_keys(cond, None, self.context_names, n, with_pert=False)
        return labels, ctxs

    @staticmethod
    def _table(keys: list[tuple]) -> torch.Tensor:
        width = max((len(k) for k in keys), default=0)
        out = torch.full((len(keys), width), float("nan"), dtype=torch.float64)
        for i, k in enumerate(keys):
            out[i, :len(k)] = torch.tensor(k, dtype=torch.float64)
        return out

    def _lookup(self):
        if self._maps is None:
            def rows(t):
                return {tuple(v for v in r if v == v): i for i, r in enumerate(t.tolist())}  # NaN padding dropped
            pl, pc = self.pair_label.tolist(), self.pair_ctx.tolist()
            n_ctx = {}
            for lab, ctx in zip(pl, pc):
                n_ctx.setdefault(lab, set()).add(ctx)
            self._maps = (rows(self.label_table), rows(self.ctx_table), {k: len(v) for k, v in n_ctx.items()})
        return self._maps

    def _ids(self, cond, pert, n):
        labels, ctxs = self._keys(cond, pert, n)
        lmap, cmap, _ = self._lookup()
        return [lmap.get(k, -1) for k in labels], [cmap.get(k, -1) for k in ctxs]

    def _coords(self, x: torch.Tensor) -> torch.Tensor:
        return self.axes._scores(x.float())[:, :self.match_dims]  # (B, m); an offset does not change distances

    # -------------------------------------------------------------------- fit
    @torch.no_grad()
    def fit(self, x, cond=None, pert=None, control=None):
        import ot  # POT, a grndiff dependency (exact OT between a context's control and perturbed cells)

        if control is None or not bool(torch.as_tensor(control).any()):
            raise ValueError("source='shifted_control' needs control cells among the training cells: register them "
                             "in setup_anndata (perturbation_key=... with control=..., or control_obs=...)")
        x = x.float().cpu()
        N = x.shape[0]
        control = torch.as_tensor(control, dtype=torch.bool).cpu()
        self.axes.fit(x, torch.zeros(N, dtype=torch.long), scale=self._scale)
        labels, ctxs = self._keys(cond, pert, N)
        lab_keys, ctx_keys = sorted(set(labels)), sorted(set(ctxs))
        lmap, cmap = {k: i for i, k in enumerate(lab_keys)}, {k: i for i, k in enumerate(ctx_keys)}
        lab = torch.tensor([lmap[k] for k in labels])
        ctx = torch.tensor([cmap[k] for k in ctxs])
        ctrl_label = int(torch.mode(lab[control]).values)
        Z = self._coords(x)
        gen = torch.Generator().manual_seed(self.seed)
        pairs = [(l_, c) for l_ in range(len(lab_keys)) if l_ != ctrl_label for c in range(len(ctx_keys))]
        per_pair = max(20, min(self.max_bank, 20_000_000 // max(len(pairs) * self.n_genes, 1)))
        bz, bd, bp, pl, pc, ps = [], [], [], [], [], []
        for l_, c in pairs:
            P = torch.nonzero((lab == l_) & (ctx == c)).flatten()
            C = torch.nonzero(control & (ctx == c)).flatten()
            if P.numel() < 2 or C.numel() < 2:
                continue
            Cs = C[torch.randperm(C.numel(), generator=gen)[:per_pair]]
            Ps = P[torch.randperm(P.numel(), generator=gen)[:2000]]
            zc, zp = Z[Cs].double(), Z[Ps].double()
            cost = torch.cdist(zc - zc.mean(0), zp - zp.mean(0)).square().numpy()
            plan = torch.as_tensor(ot.emd(np.full(Cs.numel(), 1.0 / Cs.numel()), np.full(Ps.numel(), 1.0 / Ps.numel()),
                                          cost))
            target = (plan @ x[Ps].double()) / plan.sum(1, keepdim=True).clamp_min(1e-12)
            q = len(pl)
            pl.append(l_)
            pc.append(c)
            ps.append(x[P].mean(0) - x[C].mean(0))
            bz.append(Z[Cs])
            bd.append((target - x[Cs].double()).float())
            bp.append(torch.full((Cs.numel(),), q, dtype=torch.long))
        if not pl:
            raise ValueError("source='shifted_control' found no context with both control and perturbed training "
                             "cells (≥ 2 each): check match_keys and the control definition")
        self.bank_z, self.bank_d, self.bank_pair = torch.cat(bz), torch.cat(bd), torch.cat(bp)
        self.pair_label, self.pair_ctx, self.pair_shift = torch.tensor(pl), torch.tensor(pc), torch.stack(ps)
        self.label_table, self.ctx_table = self._table(lab_keys), self._table(ctx_keys)
        self.control_label.fill_(ctrl_label)
        self.own_log, self.own_genes = self._own_changes(lab, pert, len(lab_keys), ctrl_label)
        self._maps = None
        self._fitted.fill_(True)
        self.pair_err = self._loo_errors()
        return self

    def _own_changes(self, lab: torch.Tensor, pert, n_labels: int, ctrl_label: int):
        """Per training perturbation: its mean shift on its own perturbed measured genes (log1p
        units, averaged over its contexts and genes; NaN where it has none), (labels,), and those
        genes, (labels, S) padded with −1."""
        out = torch.full((n_labels,), float("nan"))
        genes_of: dict = {}
        if pert is not None:
            pert = torch.as_tensor(pert).long().cpu()
            scale = self._scale if self._scale is not None else torch.ones(self.n_genes)
            for l_ in self.pair_label.unique().tolist():
                if l_ == ctrl_label:
                    continue
                idx = pert[lab == l_].flatten()
                genes = idx[(idx >= 0) & (idx < self.n_genes)].unique()
                if genes.numel():
                    shift = self.pair_shift[self.pair_label == l_].mean(0)  # (G,) scaled units
                    out[l_] = float((shift[genes] * scale[genes]).mean())
                    genes_of[l_] = genes
        width = max((g.numel() for g in genes_of.values()), default=0)
        table = torch.full((n_labels, width), -1, dtype=torch.long)
        for l_, genes in genes_of.items():
            table[l_, :genes.numel()] = genes
        return out, table

    def _own_median(self, exclude: int) -> float | None:
        """Median own-gene change (log1p units) of the training perturbations but ``exclude``."""
        keep = torch.isfinite(self.own_log)
        if 0 <= exclude < keep.numel():
            keep[exclude] = False
        return float(self.own_log[keep].median()) if bool(keep.any()) else None

    def _own_shift(self, pert, use: Sequence[bool], exclude: Sequence[int]) -> torch.Tensor | None:
        """(B, G) scaled units: on each perturbed measured gene of the cells in ``use``, the median
        own-gene change of the training perturbations (leaving out the label in ``exclude``);
        ``None`` when there is nothing to add."""
        if not self.own_effect or pert is None or not any(use) or not bool(torch.isfinite(self.own_log).any()):
            return None
        pert = torch.as_tensor(pert).long().cpu()
        out = torch.zeros(pert.shape[0], self.n_genes)
        medians: dict = {}  # one median per excluded label, not one per cell
        for i in [i for i, u in enumerate(use) if u]:
            ex = int(exclude[i])
            if ex not in medians:
                medians[ex] = self._own_median(ex)
            out[i] = self._own_vector(pert[i], medians[ex])
        return out

    def _own_vector(self, genes: torch.Tensor, med: float | None) -> torch.Tensor:
        """(G,) scaled units: ``med`` (log1p units) on the measured ``genes`` (node indices,
        negatives and latent nodes ignored), 0 elsewhere."""
        out = torch.zeros(self.n_genes)
        genes = genes[(genes >= 0) & (genes < self.n_genes)]
        if med is not None and genes.numel():
            scale = self._scale if self._scale is not None else torch.ones(self.n_genes)
            out[genes] = med / scale[genes]
        return out

    def _loo_errors(self) -> torch.Tensor:
        """(pairs, G): for each (perturbation, context) pair of the bank, the estimate training pairs
        start from — leave this context out where the perturbation was seen in another, else leave
        the perturbation out (the pooled shift of the others) — minus the pair's true mean shift
        (its mean over the pair's control cells), on the ``k`` axes (zero elsewhere)."""
        err = torch.zeros_like(self.pair_shift)
        n_ctx = self._lookup()[2]
        for q in range(self.pair_label.numel()):
            l_, c = int(self.pair_label[q]), int(self.pair_ctx[q])
            if n_ctx.get(l_, 0) < 2:  # seen in this context only: the pooled shift of the other perturbations
                est = self._pooled(exclude_label=l_)  # ... and the others' own-gene change on its genes
                if self.own_effect and l_ < self.own_genes.shape[0]:
                    est = est + self._own_vector(self.own_genes[l_], self._own_median(l_))
            else:  # the bank keeps the control cells' log-PC coordinates, enough for the neighbour search
                rows = torch.nonzero(self.bank_pair == q).flatten()
                est = self._shift_from_coords(self.bank_z[rows], [l_] * rows.numel(), [c] * rows.numel()).mean(0)
            d = est - self.pair_shift[q]
            err[q] = d - self.axes.project_off(d[None])[0]
        return err

    # ------------------------------------------------------------------ shift
    def _pooled(self, exclude_label: int = -2, exclude_ctx: int = -2) -> torch.Tensor:
        """Mean over the training perturbations (each its mean over contexts) of the shift (G,)."""
        keep = (self.pair_label != exclude_label) & (self.pair_ctx != exclude_ctx)
        if not bool(keep.any()):
            keep = self.pair_label != exclude_label
        if not bool(keep.any()):
            return torch.zeros(self.n_genes)
        labs = self.pair_label[keep].unique()
        return torch.stack([self.pair_shift[keep & (self.pair_label == l_)].mean(0) for l_ in labs]).mean(0)

    @torch.no_grad()
    def shift(self, x_ctrl: torch.Tensor, label: Sequence[int], exclude_ctx: Sequence[int] | None = None,
              exclude_label: Sequence[bool] | None = None) -> torch.Tensor:
        """The estimated change (B, G) of control cells ``x_ctrl`` (B, G) under perturbation ids
        ``label`` (B,; −1 = not seen in training → the pooled shift), leaving out the context
        ``exclude_ctx`` (B,) and, where ``exclude_label``, the cell's own perturbation."""
        if not self.fitted:
            raise RuntimeError("ShiftedControlSource is not fitted: train the model (or call .fit) first")
        out = self._shift_from_coords(self._coords(x_ctrl.cpu()), label, exclude_ctx, exclude_label)
        return out.to(device=x_ctrl.device, dtype=x_ctrl.dtype)

    def _shift_from_coords(self, z: torch.Tensor, label: Sequence[int], exclude_ctx: Sequence[int] | None = None,
                           exclude_label: Sequence[bool] | None = None) -> torch.Tensor:
        """:meth:`shift` from the cells' leading log-PC coordinates ``z`` (B, match_dims)."""
        B = z.shape[0]
        exclude_ctx = [-2] * B if exclude_ctx is None else list(exclude_ctx)
        exclude_label = [False] * B if exclude_label is None else list(exclude_label)
        out = torch.zeros(B, self.n_genes)
        groups: dict = {}
        for i, key in enumerate(zip(label, exclude_ctx, exclude_label)):
            groups.setdefault(key, []).append(i)
        ctrl = int(self.control_label)
        for (l_, c_ex, l_ex), rows in groups.items():
            if l_ == ctrl:
                continue
            rows_t = torch.tensor(rows)
            q = torch.nonzero((self.pair_label == l_) & (self.pair_ctx != c_ex)).flatten() if l_ >= 0 and not l_ex \
                else torch.zeros(0, dtype=torch.long)
            if q.numel() == 0:
                out[rows_t] = self._pooled(exclude_label=l_ if l_ex else -2, exclude_ctx=-2)
                continue
            sel = torch.nonzero(torch.isin(self.bank_pair, q)).flatten()
            d = torch.cdist(z[rows_t], self.bank_z[sel])
            nn_idx = d.topk(min(self.neighbours, sel.numel()), dim=1, largest=False).indices  # (b, n)
            knn = self.bank_d[sel][nn_idx].mean(1)
            out[rows_t] = self.blend * knn + (1.0 - self.blend) * self.pair_shift[q].mean(0)
        return out

    # ------------------------------------------------------------- the flow
    def pair(self, x1, cond, pert, x_ctrl, generator=None):
        x_ctrl = _checked_control(x1, x_ctrl, self.name)
        B = x1.shape[0]
        lab, ctx = self._ids(cond, pert, B)
        n_ctx = self._lookup()[2]
        # leave the cell's context out where its perturbation was seen elsewhere, else its perturbation
        many = [n_ctx.get(l_, 0) > 1 for l_ in lab]
        x0 = x_ctrl + self.shift(x_ctrl, lab, exclude_ctx=[c if m else -2 for c, m in zip(ctx, many)],
                                 exclude_label=[not m for m in many])
        ctrl = int(self.control_label)
        own = self._own_shift(pert, [not m and l_ != ctrl for l_, m in zip(lab, many)], lab)  # as at prediction
        if own is not None:
            x0 = x0 + own.to(device=x0.device, dtype=x0.dtype)
        if self.coupling in ("lowrank", "residual", "auto"):  # x₀ takes x₁'s coordinates on the k axes
            x0 = x1 - self.axes.project_off(x1 - x0)
        if self.coupling in ("residual", "auto"):  # ... moved by the estimate's error on the axes for x₁'s group
            err = self._group_errors(lab, ctx)
            if self.coupling == "auto":
                err[torch.as_tensor(many, dtype=torch.bool)] = 0.0
            x0 = x0 + err.to(device=x1.device, dtype=x1.dtype)
        return x0

    def _group_errors(self, lab: Sequence[int], ctx: Sequence[int]) -> torch.Tensor:
        """(B, G): the stored on-axis error of each cell's (perturbation, context) pair (0 for control
        cells and pairs outside the bank)."""
        index = {(int(a), int(b)): q for q, (a, b) in enumerate(zip(self.pair_label.tolist(), self.pair_ctx.tolist()))}
        qs = torch.tensor([index.get((l_, c), -1) for l_, c in zip(lab, ctx)], dtype=torch.long)
        out = torch.zeros(len(qs), self.n_genes)
        hit = qs >= 0
        if bool(hit.any()):
            out[hit] = self.pair_err[qs[hit]]
        return out

    def transport(self, x_ctrl, cond=None, pert=None):
        lab, _ = self._ids(cond, pert, x_ctrl.shape[0])
        out = x_ctrl + self.shift(x_ctrl, lab)
        own = self._own_shift(pert, [l_ < 0 for l_ in lab], lab)  # perturbations never seen in training
        return out if own is None else out + own.to(device=out.device, dtype=out.dtype)

    def draw(self, n, cond=None, pert=None, **kw):
        raise ValueError("a model with source='shifted_control' transports control cells: use predict(ctrl_cells, "
                         "conditions); to generate cells from nothing build it with source='gaussian'")

    def constrain(self, v, cond=None, pert=None):
        if self.coupling == "lowrank":
            return self.axes.project_off(v)
        if self.coupling != "auto":
            return v
        keep = self._fixed_on_axes(cond, pert, v.shape[0]).to(v.device)  # (B,) bool
        if bool(keep.all()):
            return self.axes.project_off(v)
        if not bool(keep.any()):
            return v
        return torch.where(keep[:, None], self.axes.project_off(v), v)

    def _fixed_on_axes(self, cond, pert, n: int) -> torch.Tensor:
        """(n,) bool, for ``coupling="auto"``: cells whose principal-axis state the flow keeps (the
        control cells and perturbations seen in several contexts); the others move freely."""
        if not self.fitted:
            return torch.ones(n, dtype=torch.bool)
        lab, _ = self._ids(cond, pert, n)
        n_ctx = self._lookup()[2]
        ctrl = int(self.control_label)
        return torch.tensor([l_ == ctrl or n_ctx.get(l_, 0) > 1 for l_ in lab], dtype=torch.bool)
