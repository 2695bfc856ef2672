"""Training callbacks: loss history for plots, and periodic sample-based validation."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch


class LossHistory(L.Callback):
    """Records epoch-level ``train_loss`` / ``val_loss`` into ``self.records`` (list of dicts)."""

    def __init__(self):
        self.records: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module):
        m = trainer.callback_metrics
        rec = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for k in ("train_loss_epoch", "val_loss"):
            if k in m:
                rec[k.replace("_epoch", "")] = float(m[k])
        self.records.append(rec)


class SampleValidation(L.Callback):
    """Every ``every_n_epochs``: generate as many cells as the held-out batch for its conditions,
    and log the energy distance to those real cells in a fixed PCA (``val_energy``).

    Parameters
    ----------
    x_val
        Held-out real cells (N, G) in the model's scaled space.
    cond_val, pert_val
        Their encoded conditions.
    components, mean
        A fixed projection (G, k) and centre (G,) (PCA of all real cells).
    """

    def __init__(self, x_val: torch.Tensor, cond_val: dict, pert_val=None, components=None, mean=None,
                 every_n_epochs: int = 5, n_steps: int = 20, max_cells: int = 512, seed: int = 0):
        self.x_val, self.cond_val, self.pert_val = x_val[:max_cells], {k: v[:max_cells] for k, v in cond_val.items()}, None
        if pert_val is not None:
            self.pert_val = pert_val[:max_cells]
        self.components, self.mean = components, mean
        self.every, self.n_steps, self.seed = every_n_epochs, n_steps, seed

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every:
            return
        from ..metrics import energy_distance

        dev = pl_module.device
        g = torch.Generator().manual_seed(self.seed)
        x0 = torch.randn(self.x_val.shape, generator=g).to(dev)
        cond = {k: v.to(dev) for k, v in self.cond_val.items()}
        pert = None if self.pert_val is None else self.pert_val.to(dev)
        gen = pl_module.generate(x0, cond, pert, n_steps=self.n_steps).cpu().numpy()
        real = self.x_val.numpy()
        if self.components is not None:
            real, gen = (real - self.mean) @ self.components, (gen - self.mean) @ self.components
        ed = float(energy_distance(np.asarray(real), np.asarray(gen)))
        pl_module.log("val_energy", ed, prog_bar=True)
