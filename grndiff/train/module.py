"""LightningModule for rectified-flow training of a velocity network on expression batches.

A batch is the dict built by :mod:`grndiff.data` — ``x`` (B, G) scaled expression (the flow's
``x₁``), ``cond`` {name: tensor}, optional ``pert`` (B, S) and ``x0`` (B, G) paired control cells.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from .. import flow
from ..nn import GRNTransformer, MLPVelocity, gene_token_transformer, modules_only
from .ema import EMA

BACKBONES = ("grn", "mlp", "gene_tokens", "modules_only")


def build_backbone(backbone: str, inputs: dict, **hparams) -> nn.Module:
    """Build a velocity network from data-derived ``inputs`` and architecture ``hparams``.

    ``inputs`` holds ``n_genes``, ``condition_specs`` (list of dicts), ``perturbation`` (bool) and,
    for graph models, ``edge_index``/``edge_sign``/``edge_weight``/``edge_type`` and ``membership``.
    """
    n, specs, pert = inputs["n_genes"], inputs.get("condition_specs", []), bool(inputs.get("perturbation", False))
    membership = inputs.get("membership")
    if backbone == "grn":
        return GRNTransformer(n, inputs.get("edge_index"), inputs.get("edge_sign"), inputs.get("edge_weight"),
                              inputs.get("edge_type"), condition_specs=specs, membership=membership,
                              perturbation=pert, **hparams)
    if backbone == "mlp":
        keep = {k: v for k, v in hparams.items() if k in ("hidden", "depth", "cond_dropout")}
        return MLPVelocity(n, specs, perturbation=pert, **keep)
    if backbone == "gene_tokens":
        return gene_token_transformer(n, specs, perturbation=pert, **hparams)
    if backbone == "modules_only":
        if membership is None and not hparams.get("n_learned_modules"):
            raise ValueError("backbone='modules_only' needs gene sets (modules=...) or n_learned_modules > 0")
        return modules_only(n, membership, specs, perturbation=pert, **hparams)
    raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")


class FlowModule(L.LightningModule):
    """Rectified flow (Liu et al. 2022) with AdamW, linear warm-up + cosine decay and EMA weights.

    Parameters
    ----------
    inputs
        Data-derived sizes and graph (see :func:`build_backbone`); linked from the data module.
    backbone
        ``"grn"`` (graph transformer), ``"mlp"``, ``"gene_tokens"`` or ``"modules_only"``.
    net_kwargs
        Architecture options passed to the backbone (hidden, heads, depth, mode, ...).
    source
        ``"noise"`` (x₀ ~ N(0, I)), ``"gaussian"`` (x₀ from a per-condition-group Gaussian fitted
        to the training cells at the start of fitting: :class:`grndiff.flow.GaussianSource`;
        groups = combinations of the categorical conditions) or ``"control"`` (x₀ = paired
        control cells, batch["x0"]).
    source_comps, source_residual
        ``k`` principal axes and the residual-noise scale of the Gaussian source (defaults 100
        and 0.5; measured choices in ``benchmarks/results/generation_source_v2.md``).
    source_space
        Where the Gaussian source finds its ``k`` principal axes: ``"log"`` (default; in log1p
        units, i.e. the scaled data times ``inputs["gene_scale"]``, the scaler's per-gene std: the
        usual PCA of expression) or ``"scaled"`` (in per-gene standardised units, where every gene
        weighs the same). Without ``inputs["gene_scale"]`` both are the same. Untrained (v ≡ 0),
        seed-0 split, held-out cells, 30-PC energy distance: log 0.139 vs scaled 0.181 on
        kang2018, 0.077 vs 0.213 on kang2018_ctrl (``benchmarks/results/generation.md``).
    source_coupling
        How training pairs source and data points under ``source="gaussian"``: ``"lowrank"``
        (default; ``x₀`` keeps ``x₁``'s top-``k`` coordinates, :meth:`GaussianSource.couple`, and
        the velocity is projected off those ``k`` axes: a generated cell's low-rank state is the
        Gaussian's draw and the network learns only the gene-level residual given it) or
        ``"independent"`` (``x₀`` drawn afresh from the group's Gaussian; the network must also
        keep the low-rank state, and its errors there add spread and group drift; see
        ``benchmarks/results/generation.md``, row ``grndiff_independent``).
    time_schedule
        ``"logit_normal"`` (Esser et al. 2024) or ``"uniform"``.
    ot_pairing
        Re-pair x₀ and x₁ within each condition group by exact minibatch OT (Tong et al. 2023).
    lr, weight_decay, warmup_steps, max_steps
        Optimiser; ``max_steps`` is the cosine horizon (taken from the trainer when ``None``).
    ema_decay
        EMA decay for the sampling weights (0 disables EMA).
    prediction
        What the network outputs: ``"velocity"`` (``v`` directly) or ``"data"`` (the clean cell
        ``x̂₁``, turned into ``v = (x̂₁ − x_t)/(1 − t)``; :func:`grndiff.flow.velocity_from_data`).
        ``None`` = ``"velocity"``: ``v ≡ 0`` at init, so the flow starts as the identity map of
        its source (the fitted Gaussian, or the control cells). On kang2018 x-prediction did not
        help at our budgets (1,000 steps: energy distance 7.5 vs 5.3 with the N(0, I) source).
    token_aux_weight
        Weight of an auxiliary loss that makes each module token's scalar ``activity`` predict
        the module's mean (scaled) expression in the clean cell ``x₁`` from ``x_t``; this is what
        makes token activities interpretable (0 disables it).
    """

    def __init__(self, inputs: dict | None = None, backbone: str = "grn", net_kwargs: dict | None = None,
                 source: str = "gaussian", time_schedule: str = "logit_normal", ot_pairing: bool = False,
                 sigma: float = 0.0, lr: float = 1e-3, weight_decay: float = 1e-4, warmup_steps: int = 100,
                 max_steps: int | None = None, ema_decay: float = 0.999, token_aux_weight: float = 0.1,
                 prediction: str | None = None, source_comps: int = 100, source_residual: float = 0.5,
                 source_coupling: str = "lowrank", source_space: str = "log"):
        super().__init__()
        if prediction is None:
            prediction = "velocity"
        if prediction not in ("velocity", "data"):
            raise ValueError(f"prediction must be 'velocity' or 'data', got {prediction!r}")
        if inputs is None:
            raise ValueError("FlowModule needs `inputs` (sizes and graph from the data); the CLI links them "
                             "from the data module, the Python API builds them for you.")
        if source_coupling not in ("lowrank", "independent"):
            raise ValueError(f"source_coupling must be 'lowrank' or 'independent', got {source_coupling!r}")
        if source_space not in ("log", "scaled"):
            raise ValueError(f"source_space must be 'log' or 'scaled', got {source_space!r}")
        if source not in ("noise", "control", "gaussian"):
            raise ValueError(f"source must be 'noise', 'gaussian' or 'control', got {source!r}")
        if ot_pairing and source == "gaussian" and source_coupling == "lowrank":
            raise ValueError("ot_pairing re-pairs x₀ with other cells' x₁, but source_coupling='lowrank' builds "
                             "each x₀ from its own x₁: pass source_coupling='independent' to use OT pairing")
        self.save_hyperparameters(ignore=["inputs"])
        self.hparams.prediction = prediction
        self.inputs = inputs
        self.net = build_backbone(backbone, inputs, **(net_kwargs or {}))
        self.ema = EMA(self.net, ema_decay) if ema_decay > 0 else None
        self.source_dist, self._radix = None, []
        if source == "gaussian":
            self._radix = _group_radix(inputs.get("condition_specs", []),
                                       max_groups=min(100_000, max(50_000_000 // source_comps ** 2, 1)))
            n_groups = int(torch.prod(torch.tensor([r for _, r in self._radix] or [1]))) + 1
            self.source_dist = flow.GaussianSource(inputs["n_genes"], n_groups, source_comps, source_residual)

    # ------------------------------------------------------------- the source
    def source_groups(self, cond: dict | None) -> torch.Tensor | None:
        """Group id (B,) of each cell's categorical conditions for the Gaussian source: a mixed-radix
        number over the condition codes, + 1 (0 = a cell with a null/unknown code → pooled group)."""
        if not self._radix:
            return None
        key, null = 0, None
        for name, r in self._radix:
            code = cond[name].long()
            key = key * r + (code - 1).clamp_min(0)
            null = (code <= 0) if null is None else (null | (code <= 0))
        return torch.where(null, torch.zeros_like(key), key + 1)

    def draw_source(self, cond: dict | None, n: int, *, seed: int | None = None,
                    generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """``x₀`` (n, G) for generation: the fitted Gaussian of each cell's group, or N(0, I)."""
        if self.source_dist is None:
            if seed is not None:
                return flow.seeded_noise((n, self.inputs["n_genes"]), seed, device=device, dtype=dtype)
            return torch.randn(n, self.inputs["n_genes"], generator=generator, device=device, dtype=dtype)
        groups = self.source_groups(cond) if cond else None
        if groups is None:
            groups = torch.zeros(n, dtype=torch.long)
        return self.source_dist.sample(groups, seed=seed, generator=generator, device=device, dtype=dtype)

    @torch.no_grad()
    def fit_source(self, batches) -> None:
        """Fit the Gaussian source on an iterable of training batches (the first 20,000 cells)."""
        xs, gs, n = [], [], 0
        for b in batches:
            xs.append(b["x"].float().cpu())
            g = self.source_groups({k: v.cpu() for k, v in b.get("cond", {}).items()})
            gs.append(torch.zeros(b["x"].shape[0], dtype=torch.long) if g is None else g)
            n += b["x"].shape[0]
            if n >= 20_000:
                break
        if not xs:
            raise ValueError("source='gaussian' needs training cells to fit the source, but the training loader is empty")
        scale = None
        if self.hparams.get("source_space", "scaled") == "log" and self.inputs.get("gene_scale") is not None:
            scale = torch.as_tensor(self.inputs["gene_scale"], dtype=torch.float32)  # scaled → log1p units
        self.source_dist.fit(torch.cat(xs), torch.cat(gs), scale=scale)
        self.source_dist.to(self.device)

    def on_fit_start(self) -> None:
        if self.source_dist is not None and not bool(self.source_dist.fitted):
            dm = self.trainer.datamodule
            self.fit_source(dm.train_dataloader() if dm is not None else self.trainer.train_dataloader)

    # -------------------------------------------------------- checkpointing
    export_state: dict | None = None  # processor/graph/setup states, set by the CLI data module

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # everything needed to rebuild a GRNDiff from this file alone (plain types and tensors)
        if self.export_state is not None:
            checkpoint["grndiff"] = self.export_state
        # Lightning does not save RNG states: without them a resumed run draws other noise/times
        # than the uninterrupted one (tensors only: loadable with weights_only=True)
        checkpoint["grndiff_rng"] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "grndiff_rng" in checkpoint:
            _set_rng_state(checkpoint["grndiff_rng"])

    # ------------------------------------------------------------------ loss
    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        x1 = batch["x"]
        B = x1.shape[0]
        if self.hparams.source == "control":
            if "x0" not in batch:
                raise KeyError("source='control' needs paired control cells (batch['x0']); set it up in the data module")
            x0 = batch["x0"]
        elif self.source_dist is not None:
            groups = self.source_groups(batch.get("cond", {}))
            groups = torch.zeros(B, dtype=torch.long, device=x1.device) if groups is None else groups
            if self.hparams.get("source_coupling", "independent") == "lowrank":
                x0 = self.source_dist.couple(x1, groups, generator=generator)
            else:
                x0 = self.source_dist.sample(groups, generator=generator, device=x1.device, dtype=x1.dtype)
        else:
            x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        cond, pert = batch.get("cond", {}), batch.get("pert")
        if self.hparams.ot_pairing:
            groups = _condition_groups(cond, pert, B, x1.device)
            x0, x1, cond, pert = _ot_repair(x0, x1, cond, pert, groups)
        t = flow.sample_time(B, schedule=self.hparams.time_schedule, generator=generator, device=x1.device)
        xt = flow.interpolate(x0, x1, t, sigma=self.hparams.sigma)
        pooling = getattr(self.net, "pooling", None)
        if pooling is not None and self.hparams.token_aux_weight > 0:
            out, extras = self.net(xt, t, cond, pert, return_tokens=True)
            aux = (extras["activity"] - pooling.pool_values(x1).detach()).square().mean()
            self._last_aux = aux.detach()
            v = self._as_velocity(out, xt, t)
            return flow.flow_loss(v, flow.target_velocity(x0, x1)) + self.hparams.token_aux_weight * aux
        v = self._as_velocity(self.net(xt, t, cond, pert), xt, t)
        return flow.flow_loss(v, flow.target_velocity(x0, x1))

    def _as_velocity(self, out: torch.Tensor, xt: torch.Tensor, t) -> torch.Tensor:
        if self.hparams.get("prediction", "velocity") == "data":
            out = flow.velocity_from_data(out, xt, t)
        return self._constrain(out)

    def _constrain(self, v: torch.Tensor) -> torch.Tensor:
        """Under the low-rank coupling the velocity (B, G) is kept off the source's ``k`` axes:
        the low-rank state drawn from the Gaussian is carried unchanged to t = 1."""
        if self.source_dist is not None and self.hparams.get("source_coupling", "independent") == "lowrank":
            return self.source_dist.project_off(v)
        return v

    def velocity(self, net: nn.Module, x: torch.Tensor, t, cond=None, pert=None, guidance: float = 1.0) -> torch.Tensor:
        """The flow's velocity (B, G) from ``net`` at ``x`` (B, G), ``t``, with CFG weight ``guidance``.

        Guidance mixes the network outputs; under x-prediction ``v`` is affine in ``x̂₁`` at fixed
        ``(x, t)``, so that equals guidance on velocities.
        """
        out = net.forward_with_cfg(x, t, cond, pert, guidance=guidance)
        tt = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        return self._as_velocity(out, x, tt.expand(x.shape[0]) if tt.dim() == 0 else tt)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {self.global_step}: stopping before a broken "
                "checkpoint is written. Lower the learning rate, check the input for extreme values, or "
                "train in float32.")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["x"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        g = torch.Generator(device=batch["x"].device).manual_seed(1234 + batch_idx)  # fixed noise: comparable curves
        net = self.net
        if self.ema is not None:
            self.net = self.ema.shadow
        try:
            loss = self._loss(batch, generator=g)
        finally:
            self.net = net
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=batch["x"].shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs):
        # EMA right after the weights change: in on_train_batch_end it would run after
        # ModelCheckpoint's hook, so every step checkpoint (and a run resumed from it) missed one update
        out = super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net)
        return out

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.hparams.max_steps
        if total is None:
            est = getattr(self.trainer, "estimated_stepping_batches", None) if self._trainer is not None else None
            total = int(est) if est and math.isfinite(est) else 10_000
        warm = min(self.hparams.warmup_steps, max(total // 10, 1))

        def lr_lambda(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine to 5% of peak

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -------------------------------------------------------------- sampling
    @property
    def sampling_net(self) -> nn.Module:
        return self.ema.shadow if self.ema is not None else self.net

    @torch.no_grad()
    def generate(self, x0: torch.Tensor, cond: dict | None = None, pert: torch.Tensor | None = None, *,
                 n_steps: int = 50, method: str = "euler", guidance: float = 1.0, use_ema: bool = True,
                 progress: bool = False) -> torch.Tensor:
        """Integrate the learned ODE from ``x0`` (B, G) at t=0 to t=1 → (B, G) (scaled space)."""
        net = self.sampling_net if use_ema else self.net
        was_training = net.training
        net.eval()
        try:
            def f(x, t):
                return self.velocity(net, x, t, cond, pert, guidance=guidance)
            return flow.sample_ode(f, x0, method=method, n_steps=n_steps, progress=progress)
        finally:
            net.train(was_training)


def _group_radix(specs, max_groups: int = 100_000) -> list[tuple[str, int]]:
    """(name, number of categories) of the categorical conditions, for the source's group ids;
    empty (one pooled group) when their combinations would exceed ``max_groups`` (the per-group
    (k, k) covariance factors are held for every combination: 50M floats at most)."""
    def get(s, key):
        return s[key] if isinstance(s, dict) else getattr(s, key)
    out = [(get(s, "name"), int(get(s, "n_categories"))) for s in (specs or []) if get(s, "kind") == "categorical"]
    total = 1
    for _, r in out:
        total *= max(r, 1)
    return out if total <= max_groups else []


def _rng_state() -> dict:
    """Global torch RNG states (CPU and every CUDA device) as tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _condition_groups(cond: dict, pert, B: int, device) -> torch.Tensor:
    """Integer id per cell of its full condition tuple (B,), for OT pairing within groups."""
    cols = [v.reshape(B, -1).float() for v in cond.values()]
    if pert is not None:
        cols.append(pert.reshape(B, -1).float())
    if not cols:
        return torch.zeros(B, dtype=torch.long, device=device)
    key = torch.nan_to_num(torch.cat(cols, dim=1), nan=-7.0)
    return torch.unique(key, dim=0, return_inverse=True)[1]


def _ot_repair(x0, x1, cond, pert, groups):
    """Permute x₀ within condition groups so (x₀, x₁) follow the minibatch OT plan."""
    perm = flow.ot_pair_indices(x0, x1, groups=groups)
    return x0[perm], x1, cond, pert
