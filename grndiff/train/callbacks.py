"""Training callbacks: loss history for plots."""
from __future__ import annotations

import lightning as L


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
