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


class ScoreStopping(L.Callback):
    """Stop training when a held-out score stops improving; keep the network of the best score.

    Every ``every`` optimiser steps ``score(step)`` (higher is better; the caller computes it on data the
    network never trains on) is compared with the best so far, which starts at ``baseline`` (what
    an unused network scores). A check that beats the best by more than ``min_delta`` saves the
    network's weights (``net`` and its EMA); after ``patience`` checks in a row without one,
    training stops. At the end the saved weights are put back — or, when no check ever beat the
    baseline, the last weights are kept. ``checks`` lists ``{"step", "score"}`` per check.
    """

    def __init__(self, score, every: int = 25, patience: int = 3, baseline: float = float("-inf"),
                 min_delta: float = 1e-3):
        if int(every) < 1 or int(patience) < 1:
            raise ValueError(f"every and patience must be ≥ 1, got {every} and {patience}")
        self.score, self.every, self.patience = score, int(every), int(patience)
        self.best, self.min_delta = float(baseline), float(min_delta)
        self.best_step: int | None = None
        self.stopped_step: int | None = None
        self.checks: list[dict] = []
        self._wait, self._last, self._state = 0, -1, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == 0 or step % self.every or step == self._last:
            return
        self._last = step
        value = float(self.score(step))
        self.checks.append({"step": int(step), "score": value})
        if value > self.best + self.min_delta:
            self.best, self.best_step, self._wait = value, int(step), 0
            self._state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()
                           if k.startswith(("net.", "ema."))}
        else:
            self._wait += 1
            if self._wait >= self.patience:
                self.stopped_step = int(step)
                trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        if self._state is not None:
            pl_module.load_state_dict(self._state, strict=False)
