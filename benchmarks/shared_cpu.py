#!/usr/bin/env python
"""Training on a shared machine (issue 33, item 5): the demo's training beside other busy jobs.

``make demo`` trains the default model on the shipped Kang data. Each setting below trains it for
``--steps`` steps in a fresh process, twice back to back: on the idle machine, then beside
``--busy`` (default 2) single-thread processes that multiply matrices without pause (what two
other users' jobs look like). Settings:

``auto``
    The package default: no thread setting, grndiff imported before torch (so OpenMP's threads
    wait passively, ``grndiff/_openmp.py``, and ``grndiff.train.runtime`` uses every usable core).
``threads<n>``
    ``OMP_NUM_THREADS=n`` (a user's choice: the package keeps it), the package's wait policy.
``active<n>`` / ``passive<n>``
    ``OMP_NUM_THREADS=n`` and ``OMP_WAIT_POLICY=ACTIVE`` (idle OpenMP threads spin: GNU OpenMP's
    default, and grndiff's before ``_openmp.py``) or ``PASSIVE`` (they sleep).

Metrics (group ``idle`` / ``loaded``): ``train_s`` (wall time of ``GRNDiff.train``), ``threads``
(what training ran with), and for ``loaded`` ``vs_idle_auto`` = ``train_s`` / the idle ``auto``
``train_s`` (the issue's goal: at most 3, the fair share of 2 cores among 3 jobs).

::

    python benchmarks/shared_cpu.py                  # → benchmarks/results/shared_cpu.{json,md}
    python benchmarks/shared_cpu.py --quick          # seconds, prints only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _harness import output_dir
from _results import RESULTS_DIR, command_string, record, records_to_markdown, write_results

NAME = "shared_cpu"
TAG = "SHARED_RESULT "
SETTINGS = ("auto", "threads1", "active2", "passive2")
PREFIXES = ("threads", "active", "passive")
BUSY = ("import numpy as np\n"
        "a = np.random.default_rng(0).random((300, 300))\n"
        "while True:\n"
        "    a = a @ a\n"
        "    a /= np.abs(a).max()\n")


def child(cfg: dict) -> dict:
    """Train the demo's grndiff model for ``cfg['steps']`` steps; the thread count as ``cfg`` says."""
    from grndiff import GRNDiff, datasets  # first, as a user's script would: before torch (grndiff/_openmp.py)
    from grndiff.data import split_indices  # isort: skip

    import lightning as L  # noqa: I001
    import numpy as np
    import torch

    adata = datasets.kang2018()
    if cfg["quick"]:
        adata = adata[:, np.argsort(-np.asarray(adata.layers["counts"].mean(0)).ravel())[:200]].copy()
    adata.obs["group"] = (adata.obs["cell_type"].astype(str) + " | " + adata.obs["condition"].astype(str))
    train_idx, _ = split_indices(adata.obs, val_fraction=0.2, seed=0, stratify_key="group")  # as the demo
    train = adata[train_idx].copy()
    GRNDiff.setup_anndata(train, layer="counts", condition_keys=["cell_type", "condition"])
    model = GRNDiff(train, prior="collectri", modules="hallmark")
    seen: list[int] = []

    class Threads(L.Callback):
        def on_train_batch_start(self, *args):
            seen.append(torch.get_num_threads())

    t0 = time.perf_counter()
    model.train(max_steps=cfg["steps"], max_epochs=10_000, batch_size=64, val_fraction=0.0, seed=0,
                progress_bar=False, callbacks=[Threads()])
    return {"train_s": time.perf_counter() - t0, "threads": max(seen) if seen else None,
            "genes": int(model.graph.n_genes)}


def _run(setting: str, steps: int, quick: bool, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    for prefix in PREFIXES:  # the environment: what a user sets, and what OpenMP reads when torch loads
        if setting.startswith(prefix):
            env["OMP_NUM_THREADS"] = setting.removeprefix(prefix)
            if prefix != "threads":
                env["OMP_WAIT_POLICY"] = prefix.upper()
    cfg = {"steps": steps, "quick": quick}
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    for line in res.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    raise RuntimeError(f"child failed (rc {res.returncode}): {res.stderr[-2000:]}")


def _busy(n: int) -> list[subprocess.Popen]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return [subprocess.Popen([sys.executable, "-c", BUSY], env=env) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 genes, 10 steps, two settings (CI)")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run (the demo trains 1,500)")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--busy", type=int, default=2, help="busy single-thread processes in the loaded runs")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(TAG + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if args.quick:
        args.steps, settings = 10, ["auto", "threads1"]
    bad = [s for s in settings if s != "auto" and not (s.startswith(PREFIXES) and s[-1].isdigit())]
    if bad:
        ap.error(f"unknown settings {bad}: auto, threads<n>, active<n>, passive<n>")
    out_dir = output_dir(args, ap, RESULTS_DIR)
    command = command_string([str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])
    recs, raw = [], {}
    for setting in settings:
        for group in ("idle", "loaded"):
            busy = _busy(args.busy) if group == "loaded" else []
            try:
                time.sleep(1.0 if busy else 0.0)  # the busy processes are running before training starts
                r = _run(setting, args.steps, args.quick, args.timeout)
            finally:
                for p in busy:
                    p.kill()
                    p.wait()
            raw[f"{setting}/{group}"] = r
            recs += [record(NAME, setting, "train_s", r["train_s"], group=group),
                     record(NAME, setting, "threads", r["threads"], group=group)]
            print(f"[shared_cpu] {setting:9s} {group:6s}: {r['train_s']:.1f} s, {r['threads']} threads", flush=True)
    idle = raw.get("auto/idle", {}).get("train_s")
    if idle:
        for setting in settings:
            if f"{setting}/loaded" in raw:
                recs.append(record(NAME, setting, "vs_idle_auto", raw[f"{setting}/loaded"]["train_s"] / idle,
                                   group="loaded"))
    extra = {"config": {"steps": args.steps, "busy": args.busy, "settings": settings, "quick": args.quick,
                        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()},
             "raw": raw,
             "notes": ["Each run is a fresh process; idle and loaded runs of a setting are back to back. The busy "
                       "processes multiply 300×300 matrices with one thread each, started 1 s before training.",
                       "train_s is the wall time of GRNDiff.train for the demo's model (its gene count is in raw) "
                       "at --steps steps; the demo itself trains 1,500."]}
    if out_dir is not None:
        write_results(NAME, recs, command, extra=extra, out_dir=out_dir)
    else:
        print(f"command: {command}\n")
    print(records_to_markdown(recs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
