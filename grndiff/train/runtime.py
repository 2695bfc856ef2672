"""CPU settings for a training or sampling run: every usable core, and memory that stays mapped.

``with cpu_runtime(): ...`` (what ``GRNDiff.train``/``sample``/``predict`` run under):

- **Threads.** torch uses ``n`` intra-op threads; this sets them to the cores the process may run
  on (``os.sched_getaffinity``) for the duration of the block, then restores them. Where OpenMP's
  threads wait passively (``grndiff/_openmp.py``: the default when grndiff is imported before
  torch) that is every core; where they spin, the cores other processes are not busy on (busy:
  threads of other processes runnable right now, state ``R`` under ``/proc``, sampled three times
  over ~20 ms). Spinning threads beyond the free cores wait on descheduled ones (the demo's
  training beside two busy single-thread jobs on 2 cores: ``benchmarks/results/shared_cpu.md``).
  It leaves the threads alone when ``OMP_NUM_THREADS`` is set or when the user has called
  ``torch.set_num_threads`` (the count differs from the one torch started with): their choice wins.
- **Memory.** At G = 7,000 genes and 64 cells every node-state tensor ``(G, B, D)`` is 57 MB. glibc
  serves allocations above ``M_MMAP_THRESHOLD`` (at most 32 MB) with a fresh ``mmap`` and unmaps them
  on free, so each of the ~100 such tensors of a training step came back as new pages from the
  kernel: 1.4 M minor page faults and 30–60 % system time per step. Inside the block (glibc only)
  large allocations come from the heap instead (``M_MMAP_MAX = 0``) and freed memory is kept for the
  next step (``M_TRIM_THRESHOLD``); on exit the defaults come back and the heap is trimmed.
  ``GRNDIFF_MALLOC=0`` turns this off. The same effect for any program:
  ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 python ...``.
  The heap fragments, though: at G = 20,000 (node-state tensors of 164 MB, blocks checkpointed) one
  training step peaked at 8.0 GB from the heap against 3.9 GB with glibc's default. So
  :func:`model_runtime` keeps freed memory only while a 64-cell node-state tensor stays at or below
  :data:`KEEP_FREED_MAX_VALUES` (64 MB, the size above which the blocks are checkpointed: G ≤ 8,192
  at hidden 32); larger models keep glibc's default: memory bounded, at the cost of the page
  faults (a G = 20,000 step took ~2× the time on one thread, a third of it system time; the figures
  are in ``benchmarks/results/speed_memory.md``). ``GRNDIFF_MALLOC=heap`` keeps freed memory at
  every size (speed over memory), ``GRNDIFF_MALLOC=0`` never.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import glob
import os
import time
from collections.abc import Iterator

import torch

from .._openmp import PASSIVE_WAIT

_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # what torch chose at start-up (before any user call)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_FREED_MAX_VALUES = 2**24  # node-state values of a 64-cell batch above which the heap policy is skipped


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _running_elsewhere() -> int | None:
    """Threads of other processes that are runnable now (state ``R`` in ``/proc/*/task/*/stat``);
    ``None`` without ``/proc``. This process's own threads (OpenMP workers still spinning after the
    last parallel region) are left out."""
    me, n, seen = os.getpid(), 0, False
    for stat in glob.glob("/proc/[0-9]*/task/[0-9]*/stat"):
        seen = True
        if int(stat.split("/")[2]) == me:
            continue
        try:
            with open(stat) as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
        n += state == "R"
    return n if seen else None


def busy_elsewhere(samples: int = 3, interval: float = 0.01) -> float:
    """Runnable threads of other processes, averaged over ``samples`` reads ``interval`` s apart
    (0 where there is no ``/proc``)."""
    counts = []
    for i in range(samples):
        n = _running_elsewhere()
        if n is None:
            return 0.0
        counts.append(n)
        if i + 1 < samples:
            time.sleep(interval)
    return sum(counts) / len(counts)


def default_threads() -> int | None:
    """The thread count a run should use (the usable cores no other process is busy on, at least 1),
    or ``None`` to leave torch's setting as it is (the user's choice)."""
    if os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() != _TORCH_DEFAULT_THREADS:
        return None
    cores = max(usable_cores(), 1)
    if PASSIVE_WAIT:  # waiting threads sleep: every core, whatever else runs (grndiff/_openmp.py)
        return cores
    return max(cores - int(round(busy_elsewhere())), 1)


def _libc():
    if os.environ.get("GRNDIFF_MALLOC", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


_DEPTH = 0  # open cpu_runtime blocks: only the outermost sets and restores


@contextlib.contextmanager
def cpu_runtime(keep_freed: bool = True) -> Iterator[None]:
    """Use every usable core and, with ``keep_freed``, keep freed memory mapped inside the block (see
    the module docstring).

    Re-entrant: a block opened inside another (``train`` scoring its validation gate with
    ``predict``) changes nothing, so the outer block's settings hold until it closes — restoring
    glibc's defaults at an inner exit put every later training step back on fresh pages."""
    global _DEPTH
    if _DEPTH:
        _DEPTH += 1
        try:
            yield
        finally:
            _DEPTH -= 1
        return
    _DEPTH = 1
    try:
        with _cpu_runtime(keep_freed):
            yield
    finally:
        _DEPTH = 0


@contextlib.contextmanager
def _cpu_runtime(keep_freed: bool) -> Iterator[None]:
    before, n = torch.get_num_threads(), default_threads()
    libc = _libc() if keep_freed else None
    if n is not None and n != before:
        torch.set_num_threads(n)
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # an int: at most 2 GB of free heap top kept
    try:
        yield
    finally:
        if n is not None and n != before:
            torch.set_num_threads(before)
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
            libc.malloc_trim(0)


def node_state_values(net, batch: int = 64) -> int:
    """Values in one node-state tensor ``(G + latent, batch, hidden)`` of ``net``; 0 for a network
    without gene tokens (an MLP)."""
    genes = int(getattr(net, "n_genes", 0) or 0) + int(getattr(net, "n_latent", 0) or 0)
    return genes * int(getattr(net, "hidden", 0) or 0) * batch


def keep_freed_memory(net) -> bool:
    """Whether :func:`model_runtime` keeps freed memory for ``net``: while its node-state tensors are
    at most :data:`KEEP_FREED_MAX_VALUES`, or always with ``GRNDIFF_MALLOC=heap`` (speed over
    memory on a large model)."""
    if os.environ.get("GRNDIFF_MALLOC") == "heap":
        return True
    return node_state_values(net) <= KEEP_FREED_MAX_VALUES


def model_runtime(fn):
    """Decorator for a model method: :func:`cpu_runtime`, keeping freed memory where
    :func:`keep_freed_memory` says so (``self.module.net``)."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        net = getattr(getattr(self, "module", None), "net", None)
        with cpu_runtime(keep_freed=keep_freed_memory(net)):
            return fn(self, *args, **kwargs)
    return wrapper
