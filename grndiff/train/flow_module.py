"""LightningModule for rectified-flow training of a velocity network on expression batches.

A batch is the dict built by :mod:`grndiff.data` — ``x`` (B, G) scaled expression (the flow's
``x₁``), ``cond`` {name: tensor}, optional ``pert`` (B, S) and ``x0`` (B, G) paired control cells.
Where the flow starts, how training pairs ``x₀`` with ``x₁`` and which velocities are allowed is the
source's business (:mod:`grndiff.flow.sources`); this module only trains and integrates.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from .. import flow
from ..nn import fused
from ..nn.backbones import BACKBONES, build_backbone, register_backbone  # noqa: F401  (re-exported)
from ..nn.conditions import NULL_CODES
from .ema import EMA


class FlowModule(L.LightningModule):
    """Rectified flow (Liu et al. 2022) with AdamW, linear warm-up + cosine decay and EMA weights.

    This signature is the one place where the flow and optimiser options are written: the Python
    API passes its extra keyword options here, the CLI's YAML ``model:`` section names them.

    Parameters
    ----------
    inputs
        Data-derived sizes and graph (see :func:`build_backbone`); linked from the data module.
    backbone
        ``"grn"`` (graph transformer), ``"mlp"``, ``"gene_tokens"``, ``"modules_only"``, ``"latent_tokens"``
        or ``"ssm"`` (any name registered with :func:`register_backbone`).
    net_kwargs
        Architecture options passed to the backbone (hidden, heads, depth, mode, ...).
    source
        Where the flow starts: a name (``"noise"``, ``"gaussian"``, ``"control"``,
        ``"shifted_control"``), a config dict (``{"name": "gaussian", "k": 50}``) or a
        :class:`grndiff.flow.Source`. Data-dependent sources are fitted on the training cells at the
        start of fitting.
    time_schedule
        ``"logit_normal"`` (Esser et al. 2024) or ``"uniform"``.
    ot_pairing
        Re-pair x₀ and x₁ within each condition group by exact minibatch OT (Tong et al. 2023);
        only for sources that draw x₀ independently of x₁.
    lr, weight_decay, warmup_steps, max_steps
        Optimiser; ``max_steps`` is the cosine horizon (taken from the trainer when ``None``).
    ema_decay
        EMA decay for the sampling weights (0 disables EMA).
    token_aux_weight
        Weight of an auxiliary loss that makes each module token's scalar ``activity`` predict
        the module's mean (scaled) expression in the clean cell ``x₁`` from ``x_t``; this is what
        makes token activities interpretable (0 disables it).
    context_conditioning
        Whether the network sees the *context* keys (the source's ``match_keys``, e.g. the cell
        type) among its conditions. ``False`` nulls them for the network (the source still uses
        them): a held-out context is then no unseen combination of tokens, and the network reads
        the context from the cell's own state (the cell token) instead.
    prediction
        What the network outputs: ``"velocity"`` (``v`` directly; ``v ≡ 0`` at init, so the flow
        starts as the identity map of its source) or ``"data"`` (the clean cell ``x̂₁``, turned
        into ``v = (x̂₁ − x_t)/(1 − t)``). On kang2018 x-prediction did not help at our budgets.
    compile
        Run the blocks' element-wise passes compiled (:mod:`grndiff.nn.fused`, ``torch.compile``)
        in training and sampling. Off by default: the first step pays the compile (tens of seconds
        on a CPU) and the gain is measured in ``benchmarks/results/speed_precision.md``.
    """

    def __init__(self, inputs: dict | None = None, backbone: str = "grn", net_kwargs: dict | None = None,
                 source: str | dict | flow.Source = "gaussian", time_schedule: str = "logit_normal",
                 ot_pairing: bool = False, lr: float = 1e-3, weight_decay: float = 1e-4, warmup_steps: int = 100,
                 max_steps: int | None = None, ema_decay: float = 0.999, token_aux_weight: float = 0.1,
                 context_conditioning: bool = True, prediction: str = "velocity", compile: bool = False):
        super().__init__()
        if prediction not in ("velocity", "data"):
            raise ValueError(f"prediction must be 'velocity' or 'data', got {prediction!r}")
        if inputs is None:
            raise ValueError("FlowModule needs `inputs` (sizes and graph from the data); the CLI links them "
                             "from the data module, the Python API builds them for you.")
        src = flow.make_source(source)
        if ot_pairing and not src.allows_ot_pairing:
            raise ValueError(f"ot_pairing re-pairs x₀ with other cells' x₁, but the {src.name!r} source builds each "
                             "x₀ from its own x₁ (or its control cell): use source={'name': 'gaussian', "
                             "'coupling': 'independent'} or 'noise' to use OT pairing")
        self.save_hyperparameters(ignore=["inputs", "source"])
        self.hparams["source"] = src.config()  # plain types: checkpoints load with weights_only=True
        self.inputs = inputs
        self.net = build_backbone(backbone, inputs, **(net_kwargs or {}))
        self.ema = EMA(self.net, ema_decay) if ema_decay > 0 else None
        self.source = src.build(inputs["n_genes"], inputs.get("condition_specs", []), inputs.get("gene_scale"),
                                inputs.get("match_keys") or ())
        self._hidden_context = {} if context_conditioning else {
            _spec_get(s, "name"): NULL_CODES[_spec_get(s, "kind")] for s in inputs.get("condition_specs", [])
            if _spec_get(s, "name") in set(inputs.get("match_keys") or ())}

    def net_conditions(self, cond: dict | None) -> dict | None:
        """The conditions the network sees: the context keys nulled unless ``context_conditioning``."""
        if not cond or not self._hidden_context:
            return cond
        return {k: (torch.full_like(v, self._hidden_context[k]) if k in self._hidden_context else v)
                for k, v in cond.items()}

    # ------------------------------------------------------------- the source
    @torch.no_grad()
    def fit_source(self, data) -> None:
        """Fit a data-dependent source on the training cells (at most 20,000, seeded subset).

        ``data`` is a data module with ``dataset``/``train_indices`` (and ``pairing`` for the
        control cells), one that wraps such a module as ``inner``, or an iterable of training batches.
        """
        if not hasattr(data, "dataset") and getattr(data, "inner", None) is not None:
            data = data.inner  # a wrapping data module (the CLI's) exposes the one it wraps
        if hasattr(data, "dataset") and hasattr(data, "train_indices"):
            idx = np.asarray(data.train_indices)
            if idx.size > 20_000:
                idx = np.sort(np.random.default_rng(0).choice(idx, 20_000, replace=False))
            if idx.size == 0:
                raise ValueError("the source needs training cells to be fitted, but the training split is empty")
            b = data.dataset.batch(idx)
            pairing = getattr(data, "pairing", None)
            control = None if pairing is None else torch.from_numpy(np.isin(idx, pairing.controls))
        else:
            if hasattr(data, "train_dataloader"):
                data = data.train_dataloader()
            parts, n = [], 0
            for b in data:
                parts.append(b)
                n += b["x"].shape[0]
                if n >= 20_000:
                    break
            if not parts:
                raise ValueError("the source needs training cells to be fitted, but the training loader is empty")
            b = {"x": torch.cat([p["x"] for p in parts]),
                 "cond": {k: torch.cat([p["cond"][k] for p in parts]) for k in parts[0].get("cond", {})},
                 "pert": torch.cat([p["pert"] for p in parts]) if parts[0].get("pert") is not None else None}
            control = None
        self.source.fit(b["x"].float().cpu(), {k: v.cpu() for k, v in b.get("cond", {}).items()},
                        None if b.get("pert") is None else b["pert"].cpu(), control)
        self.source.to(self.device)

    def on_fit_start(self) -> None:
        if self.source.needs_fit:
            dm = self.trainer.datamodule
            self.fit_source(dm if dm is not None else self.trainer.train_dataloader)

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
        cond, pert = batch.get("cond", {}), batch.get("pert")
        x0 = self.source.pair(x1, cond, pert, batch.get("x0"), generator=generator)
        if self.hparams.ot_pairing:
            x0 = x0[flow.ot_pair_indices(x0, x1, groups=flow.group_index(cond, pert, B, x1.device))]
        t = flow.sample_time(B, schedule=self.hparams.time_schedule, generator=generator, device=x1.device)
        xt = flow.interpolate(x0, x1, t)
        target = flow.target_velocity(x0, x1)
        pooling = getattr(self.net, "pooling", None)
        seen = self.net_conditions(cond)
        if pooling is not None and self.hparams.token_aux_weight > 0:
            out, extras = self.net(xt, t, seen, pert, return_tokens=True)
            aux = (extras["activity"] - pooling.pool_values(x1).detach()).square().mean()
            return (flow.flow_loss(self._as_velocity(out, xt, t, cond, pert), target)
                    + self.hparams.token_aux_weight * aux)
        return flow.flow_loss(self._as_velocity(self.net(xt, t, seen, pert), xt, t, cond, pert), target)

    def _as_velocity(self, out: torch.Tensor, xt: torch.Tensor, t, cond=None, pert=None) -> torch.Tensor:
        if self.hparams.prediction == "data":
            out = flow.velocity_from_data(out, xt, t)
        return self.source.constrain(out, cond=cond, pert=pert)

    def velocity(self, net: nn.Module, x: torch.Tensor, t, cond=None, pert=None, guidance: float = 1.0) -> torch.Tensor:
        """The flow's velocity (B, G) from ``net`` at ``x`` (B, G), ``t``, with CFG weight ``guidance``.

        Guidance mixes the network outputs; under x-prediction ``v`` is affine in ``x̂₁`` at fixed
        ``(x, t)``, so that equals guidance on velocities.
        """
        out = net.forward_with_cfg(x, t, self.net_conditions(cond), pert, guidance=guidance)
        tt = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        return self._as_velocity(out, x, tt.expand(x.shape[0]) if tt.dim() == 0 else tt, cond, pert)

    @property
    def compiled(self) -> bool:
        """Whether training and sampling run the compiled element-wise passes (``compile``)."""
        return bool(self.hparams.get("compile", False))

    def training_step(self, batch, batch_idx):
        with fused.compiled(self.compiled):
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
            with fused.compiled(self.compiled):
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
                 batch_size: int = 1024, t_span: tuple[float, float] = (0.0, 1.0),
                 progress: bool = False, precision: str | None = None) -> torch.Tensor:
        """Integrate the learned ODE from ``x0`` (B, G) over ``t_span`` → (B, G) (scaled space),
        ``batch_size`` cells at a time (``cond`` {name: (B,)}, ``pert`` (B, S) sliced alongside).

        ``precision="bf16"`` evaluates the network under bfloat16 autocast (matrix products in
        bfloat16, the state and the solver in float32); ``None``/``"32"``: float32 throughout.
        """
        bf16 = check_precision(precision)
        net = self.sampling_net if use_ema else self.net
        was_training = net.training
        net.eval()
        batch_size = min(batch_size, getattr(net, "max_sampling_cells", batch_size))  # per-gene nets: cap memory
        out = []
        try:
            for s in range(0, x0.shape[0], batch_size):
                sl = slice(s, s + batch_size)
                c = {k: v[sl] for k, v in (cond or {}).items()}
                p = None if pert is None else pert[sl]

                def f(x, t, c=c, p=p):
                    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                        return self.velocity(net, x, t, c, p, guidance=guidance).float()
                with fused.compiled(self.compiled):
                    out.append(flow.sample_ode(f, x0[sl], method=method, n_steps=n_steps, t0=t_span[0],
                                               t1=t_span[1], progress=progress and s == 0))
        finally:
            net.train(was_training)
        return torch.cat(out) if out else x0.clone()


PRECISIONS = (None, "32", "32-true", "bf16", "bf16-mixed")


def check_precision(precision: str | None) -> bool:
    """Whether ``precision`` (one of :data:`PRECISIONS`) asks for bfloat16 autocast."""
    if precision is not None:
        precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision in ("bf16", "bf16-mixed")


def _spec_get(spec, key):
    return spec[key] if isinstance(spec, dict) else getattr(spec, key)


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


