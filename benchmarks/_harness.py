"""What several benchmark scripts do the same way, written once: worker pools with a wall budget,
peak memory, output folders. (The evaluation protocol is ``_protocol.py``, results files ``_results.py``.)"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path


def run_jobs(run_job: Callable[[dict], list[dict]], jobs: list[dict], n_workers: int, max_minutes: float | None,
             records: list[dict], skipped: list[str], save: Callable) -> None:
    """Run ``run_job(job) -> records`` over ``jobs`` on ``n_workers`` spawned processes, in order.

    A job not started ``max_minutes`` after the call returns ``[{"skipped": label}]`` (each job
    receives the ``deadline``, a ``time.time()`` value or ``None``); its label goes to ``skipped``,
    every other record to ``records``, and ``save()`` writes the results after each job."""
    deadline = time.time() + 60 * max_minutes if max_minutes is not None else None
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn")) as pool:
        for recs in pool.map(run_job, [{**j, "deadline": deadline} for j in jobs]):
            skipped += [r["skipped"] for r in recs if "skipped" in r]
            records += [r for r in recs if "skipped" not in r]
            save()


def peak_rss_mb() -> float:
    """Peak resident memory (VmHWM) of this process in MB; NaN where /proc is not there."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def chosen(names: list[str], allowed, parser, what: str) -> list[str]:
    """``names`` if every one is in ``allowed``; else ``parser.error`` naming the unknown ones."""
    bad = set(names) - set(allowed)
    if bad:
        parser.error(f"unknown {what} {sorted(bad)}; choose from {list(allowed)}")
    return names


def output_dir(args, parser, results_dir: Path) -> Path | None:
    """``--out`` or the committed results folder (``None`` for ``--quick`` without ``--out``: print
    only); ``--quick`` never writes into the committed results."""
    out_dir = Path(args.out) if args.out else (None if args.quick else results_dir)
    if args.quick and out_dir is not None and out_dir.resolve() == results_dir.resolve():
        parser.error("--quick never overwrites the committed results in benchmarks/results")
    return out_dir
