"""A quiet console for training: what ``GRNDiff.train()`` and the CLI print, decided in one place.

Lightning announces itself on every fit (``GPU available``, ``TPU available``, advertisements for
its cloud loggers, ``Trainer.fit stopped``) and a few dependencies raise warnings that say nothing
about the user's data. :func:`quiet` silences exactly those, for the duration of a ``with`` block
only (no filter is installed at import); ``verbose=True`` lets everything through. Warnings of
grndiff itself (:class:`~grndiff.data.GRNDiffWarning`) are never silenced.

:class:`FitProgressBar` is one bar for the whole fit (steps, not epochs; no validation or sanity
bars), written to stderr on a terminal or in Jupyter; in a log file or a pipe
:func:`progress_callbacks` uses :class:`LogProgress` instead (a plain line every 5 % of the steps
with the loss and the ETA), so a log never fills with carriage-return frames and never stays silent.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Any

from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

# Lightning's own loggers: their INFO records are the banners and tips
_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

# (message regex, why it is harmless)
HARMLESS_WARNINGS = (
    (r"(?s).*isinstance\(treespec, LeafSpec\)", "a torch._pytree deprecation inside Lightning, not our code"),
    (r"(?s).*module\(s\) in eval mode", "the EMA copy of the network is kept in eval mode on purpose"),
    (r"(?s).*Unable to serialize instance", "jsonargparse cannot write the checkpoint plugin into config.yaml"),
    (r"(?s).*does not have many workers", "batches are sliced from an in-memory CSR: workers do not help"),
    (r"(?s).*smaller than the logging interval", "short runs log less often than log_every_n_steps"),
    (r"(?s).*IProgress not found", "notebooks without ipywidgets fall back to a text progress bar"),
    (r"(?s).*IterableDataset. has .__len__. defined", "streamed batches use one worker unless asked otherwise"),
    (r"(?s).*Total length of .* across ranks is zero", "val_fraction=0 means no validation loader, on purpose"),
    (r"(?s).*Detected pickle protocol", "torch notes the protocol of a file that grndiff then refuses anyway"),
    (r"(?s).*LightningCLI's args parameter", "grndiff.cli.main(argv) passes arguments from Python on purpose"),
)


@contextlib.contextmanager
def quiet(verbose: bool = False):
    """Silence Lightning's banners and the known-harmless warnings inside the block.

    Parameters
    ----------
    verbose
        ``True``: change nothing (every banner and warning is shown).
    """
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in _LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern, _why in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        with contextlib.suppress(ImportError):
            from tqdm import TqdmWarning
            warnings.filterwarnings("ignore", category=TqdmWarning)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (False in a log file, a pipe or CI)."""
    from .._progress import stderr_is_terminal as is_tty
    return is_tty()


class FitProgressBar(TQDMProgressBar):
    """One progress bar per fit: optimiser steps out of the fit's total, the loss as postfix,
    on stderr; no sanity-check or validation bars."""

    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def on_train_start(self, trainer, *_: Any) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        total = int(total) if total != float("inf") else None
        from .._progress import tqdm_class
        cls = tqdm_class()  # Jupyter with ipywidgets: the widget bar; else the text bar
        cls = Tqdm if cls.__module__ == "tqdm.std" else cls
        self.train_progress_bar = cls(desc="training", total=total, initial=trainer.global_step, leave=True,
                                      dynamic_ncols=True, file=sys.stderr, smoothing=0, disable=self.is_disabled,
                                      bar_format=self.BAR_FORMAT, unit="step")

    def on_train_epoch_start(self, trainer, *_: Any) -> None:  # one bar for the fit: never reset per epoch
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total or 0):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar is not None:
            bar.n = trainer.global_step
            bar.refresh()
            bar.close()


class LogProgress(Callback):
    """Training progress for a log file or a pipe (``make demo > log``, CI): a plain line on stderr
    every 5 % of the steps (at most one per ``min_interval`` seconds, at least one per
    ``max_interval``), with the loss and the ETA — ``training: step 300/3000 (10%) loss 0.61 ·
    3m05s elapsed, ETA 27m45s``. A fit shorter than ``min_interval`` writes nothing."""

    def __init__(self, min_interval: float = 10.0, max_interval: float = 60.0, every: int | None = None):
        self.min_interval, self.max_interval, self.every = min_interval, max_interval, every
        self.lines = None

    def on_train_start(self, trainer, pl_module) -> None:
        from .._progress import LogLines
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        total = int(total) if total not in (None, float("inf")) else None
        self.lines = LogLines(total=total, desc="training", unit="step", every=self.every, initial=trainer.global_step,
                              min_interval=self.min_interval, max_interval=self.max_interval)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.lines is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs if hasattr(outputs, "item") else None
        for key in ("train_loss_step", "train_loss"):
            if loss is None:
                loss = trainer.callback_metrics.get(key)
        if loss is not None:
            self.lines.set_postfix(loss=float(loss))
        self.lines.set_n(trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.lines is not None:
            self.lines.n = trainer.global_step
            self.lines.close()
            self.lines = None


def progress_callbacks(progress_bar: bool) -> tuple[bool, list]:
    """``(enable_progress_bar, callbacks)`` for a Trainer: on a terminal or in Jupyter one
    :class:`FitProgressBar`; in a log file or a pipe :class:`LogProgress` lines; nothing when
    ``progress_bar`` is false."""
    if not progress_bar:
        return False, []
    from .._progress import where
    if where() == "log":
        return False, [LogProgress()]
    return True, [FitProgressBar()]


def console_kwargs(progress_bar: bool, callbacks: list) -> dict:
    """``enable_progress_bar`` and ``callbacks`` for a Trainer: ``callbacks`` plus the progress
    display of :func:`progress_callbacks`."""
    on, bars = progress_callbacks(progress_bar)
    return {"enable_progress_bar": on, "callbacks": list(callbacks) + bars}


def one_progress_bar(trainer) -> None:
    """In a built Trainer (the CLI's), replace Lightning's default bar by :class:`FitProgressBar`
    (terminal, Jupyter) or by :class:`LogProgress` lines (a log file or a pipe)."""
    from .._progress import where
    for i, cb in enumerate(list(trainer.callbacks)):
        if type(cb) is TQDMProgressBar:
            if where() == "log":
                trainer.callbacks.remove(cb)
                trainer.callbacks.append(LogProgress())
            else:
                trainer.callbacks[i] = FitProgressBar()
