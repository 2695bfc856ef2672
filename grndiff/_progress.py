"""Progress that works where users are, decided in one place (training, sampling, the demo).

* a terminal: a tqdm bar on stderr (appearing after ``delay`` seconds, so short calls stay silent);
* Jupyter: a widget bar when ``ipywidgets`` is installed, else the text bar (never ``tqdm.auto``,
  whose fallback warns ``IProgress not found``);
* a log file or a pipe (``make demo > log``, CI, ``nohup``): :class:`LogLines`, a plain line on
  stderr now and then — ``training: step 120/3000 (4%) loss 0.532 · 1m12s elapsed, ETA 28m40s`` —
  never carriage-return frames.

:func:`where` tells which of the three applies; :func:`bar` returns an object with tqdm's
``update``/``set_postfix``/``close`` for any of them.
"""
from __future__ import annotations

import math
import sys
import time


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (False in a log file, a pipe, CI or Jupyter)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython already imported and running a kernel app)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    except Exception:  # noqa: BLE001 — an odd shell is not a notebook
        return False


def where() -> str:
    """``"terminal"``, ``"notebook"`` or ``"log"`` (a file or pipe)."""
    if in_notebook():
        return "notebook"
    return "terminal" if stderr_is_terminal() else "log"


def tqdm_class():
    """The tqdm class for a bar here: the widget bar in Jupyter with ipywidgets, else the text bar."""
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm
            return tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm
    return tqdm


def format_seconds(s: float) -> str:
    """``75`` → ``1m15s``; ``3725`` → ``1h02m``."""
    if not math.isfinite(s):
        return "?"
    s = int(round(max(s, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LogLines:
    """tqdm's interface as occasional plain lines on stderr, for log files and pipes.

    A line is written when the count crosses a multiple of ``every`` (default: 5 % of ``total``)
    and at least ``min_interval`` seconds passed since the last line, or whenever ``max_interval``
    seconds passed; so a call shorter than ``min_interval`` writes nothing, and a long one is never
    silent for more than ``max_interval``. ``close()`` writes a final line only if one was written.
    """

    def __init__(self, total: float | None = None, desc: str = "progress", unit: str = "step", every: int | None = None,
                 min_interval: float = 10.0, max_interval: float = 60.0, initial: float = 0, file=None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every = every or (max(1, math.ceil(total / 20)) if total and total > 1 else None)
        self.min_interval, self.max_interval = float(min_interval), float(max_interval)
        self.file = file
        self.start = self.last = time.monotonic()
        self.start_n, self.lines, self.postfix, self.disable = initial, 0, "", False

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kw) -> None:
        items = dict(ordered_dict or {}, **kw)
        self.postfix = " ".join(f"{k} {_fmt(v)}" for k, v in items.items())

    def update(self, n: float = 1) -> None:
        self.set_n(self.n + n)

    def set_n(self, n: float) -> None:
        before, self.n = self.n, n
        now = time.monotonic()
        crossed = self.every is not None and int(n // self.every) > int(before // self.every)
        if (crossed and now - self.last >= self.min_interval) or now - self.last >= self.max_interval:
            self.write_line(now)

    def refresh(self) -> None:
        pass

    def write_line(self, now: float | None = None, final: bool = False) -> None:
        now = time.monotonic() if now is None else now
        elapsed = now - self.start
        if self.total and self.unit == "%":
            pos = f"{100 * self.n / self.total:.0f}%"
        elif self.total:
            pos = f"{self.unit} {_fmt(self.n)}/{_fmt(self.total)} ({100 * self.n / self.total:.0f}%)"
        else:
            pos = f"{self.unit} {_fmt(self.n)}"
        timing = f"{format_seconds(elapsed)} elapsed"
        done = self.n - self.start_n
        if not final and self.total and done > 0:
            timing += f", ETA {format_seconds(elapsed / done * (self.total - self.n))}"
        text = f"{self.desc}: {pos}" + (f" {self.postfix}" if self.postfix else "") + f" · {timing}"
        print(text, file=self.file or sys.stderr, flush=True)
        self.last, self.lines = now, self.lines + 1

    def close(self) -> None:
        if self.lines and not self.disable:
            self.write_line(final=True)
            self.disable = True


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if not v.is_integer() or abs(v) >= 1e6 else str(int(v))
    if hasattr(v, "item"):
        return _fmt(v.item())
    return str(v)


def bar(total: float | None, desc: str, *, unit: str = "step", leave: bool = False, delay: float = 2.0, **kw):
    """A progress display for ``total`` units where the user is (see the module doc)."""
    if where() == "log":
        return LogLines(total=total, desc=desc, unit=unit)
    return tqdm_class()(total=total, desc=desc, unit=unit, leave=leave, delay=delay, file=sys.stderr, **kw)
