#!/usr/bin/env python
"""Speed at real data sizes (issue 17): a training step and sampling of the default model.

For each gene count ``G`` an AnnData is built from the shipped data and the shipped CollecTRI:
cells of ``kang2018_ctrl`` (raw counts, ``cell_type`` as the condition) over its own genes
(gene symbols; those in CollecTRI first), padded with further real CollecTRI genes (their
columns filled with counts of real genes from other cells) and, past CollecTRI's ~7,000 genes,
with placeholder genes that have no edges (self-loops only). The model is the default
``grndiff.GRNDiff(adata, prior="collectri", modules="hallmark")``. Every (revision, G) is measured
in its own fresh process (clean peak RSS), with the same number of torch threads.

Metrics (method ``grndiff``, or ``grndiff@<rev>`` for ``--compare REV``; group ``G<genes>_B<batch>``):

``train_step_s``
    Median wall time of one training step inside ``GRNDiff.train`` (Lightning: forward, backward,
    gradient clipping, AdamW step, EMA update; a callback times each batch), at batch ``B``, after
    warm-up steps.
``system_frac``
    System CPU time / (user + system) over the timed training steps (``resource.getrusage``).
``peak_rss_mb``
    Peak resident memory (VmHWM) of the process after model building and training.
``gflops``
    FLOPs of one training step (``torch.utils.flop_counter`` with sparse products re-counted at
    their true ``2·nnz·n``: ``benchmarks/performance.py``'s ``SparseAwareFlops``) / ``train_step_s``.
``matmul_peak_gflops``
    float32 matmul throughput measured in the same process with the same threads.
``sample_s_per_cell_step``
    ``GRNDiff.sample`` wall time / (cells × Euler steps), after a warm-up call.
``sample_1000x20_s``
    Wall time of ``GRNDiff.sample(1000, n_steps=20)`` at G = 7,000 (the issue's goal), working tree
    only, in its own process at the end of the run (an untrained model: the cost is the same).
``speedup_<metric>_vs_<rev>``
    ``<rev>``'s value / this tree's, for ``train_step_s`` and ``sample_s_per_cell_step``.

``raw`` in the JSON keeps every process's details (step times, CPU seconds per step, minor page
faults per step, peak RSS with sampling, threads seen inside ``GRNDiff.train``).

::

    python benchmarks/speed.py --compare 85ae009     # full run → benchmarks/results/speed.{json,md}
    python benchmarks/speed.py --quick --out DIR      # seconds, for CI (never writes benchmarks/results)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

from _harness import peak_rss_mb  # noqa: E402
from _results import RESULTS_DIR, command_string, record, records_to_markdown, write_results  # noqa: E402

NAME = "speed"
TAG = "SPEED_RESULT "
METRICS = ("train_step_s", "sample_s_per_cell_step", "system_frac", "peak_rss_mb", "gflops", "matmul_peak_gflops")
# sample_steps: the first Euler step of a call also pays for first-touch memory; a few steps amortise it
FULL = dict(genes=(2000, 7000, 20000), batch=64, cells=512, warmup=2, repeats=3, sample_cells=64,
            sample_steps=4, matmul_n=2048, goal_sample=(1000, 20))
QUICK = dict(genes=(200,), batch=8, cells=48, warmup=1, repeats=1, sample_cells=4, sample_steps=2,
             matmul_n=256, goal_sample=None)
# --modes: the speed switches of GRNDiff.train / sample (issue 33); "fp32" is the package default
MODES = {"fp32": {"precision": None, "compile": False}, "bf16": {"precision": "bf16", "compile": False},
         "compile": {"precision": None, "compile": True}, "bf16+compile": {"precision": "bf16", "compile": True}}


# ==================================================================== data (parent process)
def speed_adata(n_genes: int, n_cells: int, seed: int = 0):
    """Shipped PBMC cells over ``n_genes`` real genes (padded as the module docstring says)."""
    import anndata as ad  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415
    import scipy.sparse as sp  # noqa: PLC0415

    from grndiff import datasets, priors  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    src = datasets.kang2018_ctrl()
    src = src[np.sort(rng.choice(src.n_obs, min(n_cells, src.n_obs), replace=False))]
    symbols = pd.Index(src.var["feature"].astype(str))
    keep = ~symbols.duplicated()
    # not src.layers.get("counts", src.X): that would copy src.X (src is a view) even when counts exist
    raw = src.layers["counts"] if "counts" in src.layers else src.X  # noqa: SIM401
    X = sp.csc_matrix(raw)[:, np.flatnonzero(keep)]
    symbols = symbols[keep]
    df = priors.load("collectri")
    universe = set(df["source"]) | set(df["target"])
    in_prior = symbols.isin(list(universe))
    order = np.concatenate([np.flatnonzero(in_prior), np.flatnonzero(~in_prior)])  # connected genes first
    cols, names = [X[:, order]], list(symbols[order])
    n_pad = n_genes - len(names)
    if n_pad < 0:
        cols, names = [X[:, order[:n_genes]]], names[:n_genes]
    elif n_pad > 0:
        extra = sorted(universe - set(names))
        extra = [extra[i] for i in rng.permutation(len(extra))] + [f"PAD{i}" for i in range(max(n_pad - len(extra), 0))]
        extra = extra[:n_pad]
        # each padded gene: the counts of a random real gene, over a random permutation of the cells
        donor = rng.integers(0, X.shape[1], n_pad)
        perm = np.argsort(rng.random((n_pad, X.shape[0])), axis=1)
        dense = X.toarray()
        pad = dense[perm, donor[:, None]].T  # (N, n_pad)
        cols.append(sp.csc_matrix(pad))
        names += extra
    counts = sp.csr_matrix(sp.hstack(cols), dtype=np.float32)
    adata = ad.AnnData(counts, obs=pd.DataFrame({"cell_type": src.obs["cell_type"].astype(str).values},
                                                index=src.obs_names.astype(str)),
                       var=pd.DataFrame(index=pd.Index(names, dtype=str)))
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    adata.layers["counts"] = adata.X.copy()
    return adata


# ==================================================================== measurement (child process)
def _matmul_gflops(n: int) -> float:
    import torch  # noqa: PLC0415

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _step_timer(skip: int):
    """A Lightning callback timing each training batch after the first ``skip`` (and rusage over them)."""
    import lightning as L  # noqa: PLC0415
    import torch  # noqa: PLC0415

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self.usage, self.threads, self._n = [], [None, None], None, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self._n == skip:
                self.usage[0] = resource.getrusage(resource.RUSAGE_SELF)
            self.threads = torch.get_num_threads()
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self._n >= skip:
                self.times.append(time.perf_counter() - self._t0)
                self.usage[1] = resource.getrusage(resource.RUSAGE_SELF)
            self._n += 1

    return StepTimer()


def child(cfg: dict) -> dict:
    """Build the default model on ``cfg['path']`` and time training and sampling (this process only)."""
    import anndata as ad  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from performance import SparseAwareFlops  # noqa: PLC0415

    import grndiff  # noqa: PLC0415
    import grndiff.model  # noqa: F401, PLC0415  (a package that manages threads sees torch's default first)

    torch.set_num_threads(cfg["threads"])  # the same for every revision (a user's choice the package keeps)

    out: dict = {"grndiff_file": _portable_module(grndiff.__file__), "threads": torch.get_num_threads()}
    adata = ad.read_h5ad(cfg["path"])
    grndiff.GRNDiff.setup_anndata(adata, layer="counts", condition_keys=["cell_type"])
    t0 = time.perf_counter()
    model = grndiff.GRNDiff(adata, prior="collectri", modules="hallmark")
    if hasattr(model, "_ensure_source"):
        model._ensure_source(adata)
    out["build_s"] = time.perf_counter() - t0
    out["genes"], out["edges"] = int(model.graph.n_genes), int(model.graph.n_edges)
    if cfg.get("goal_sample"):  # the sampling goal alone (an untrained model costs the same)
        model.sample(4, n_steps=1, seed=0)  # warm-up
        n, s = cfg["goal_sample"]
        t0 = time.perf_counter()
        model.sample(n, n_steps=s, seed=2)
        out["sample_1000x20_s"] = time.perf_counter() - t0
        out["peak_rss_mb_goal_sample"] = peak_rss_mb()
        return out

    # the training step as GRNDiff.train runs it (Lightning: forward, backward, clipping, AdamW, EMA)
    timer = _step_timer(cfg["warmup"])
    mode = MODES[cfg.get("mode", "fp32")]  # speed switches (only passed when set: older revisions lack them)
    fast = {"precision": mode["precision"]} if mode["precision"] else {}
    t_train = time.perf_counter()
    model.train(max_steps=cfg["warmup"] + cfg["repeats"], batch_size=cfg["batch"], val_fraction=0.0,
                progress_bar=False, accelerator="cpu", callbacks=[timer],
                **(dict(fast, compile=True) if mode["compile"] else fast))
    out["train_call_s"] = time.perf_counter() - t_train  # with the warm-up steps (and a compile, if any)
    times, (r0, r1) = timer.times, timer.usage
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    out.update(train_step_s=statistics.median(times), train_times=times, system_frac=system / max(user + system, 1e-9),
               cpu_s_per_step=(user + system) / len(times), user_s=user, system_s=system,
               minor_faults_per_step=(r1.ru_minflt - r0.ru_minflt) / len(times), peak_rss_mb=peak_rss_mb(),
               threads_in_training=timer.threads)

    # FLOPs of the same step, counted on a direct forward + backward + AdamW step
    dm = model.datamodule(adata, batch_size=cfg["batch"], val_fraction=0.0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = model.module
    module.train()
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-3, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = module._loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.net.parameters(), 1.0)
        opt.step()
        if getattr(module, "ema", None) is not None:
            module.ema.update(module.net)
        return loss

    with SparseAwareFlops() as fc:
        step()
    out["flops"] = fc.total()
    out["gflops"] = out["flops"] / out["train_step_s"] / 1e9
    out["matmul_peak_gflops"] = _matmul_gflops(cfg["matmul_n"])

    model.sample(4, n_steps=1, seed=0, **fast)  # warm-up
    n, s = cfg["sample_cells"], cfg["sample_steps"]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    model.sample(n, n_steps=s, seed=1, **fast)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out.update(sample_s_per_cell_step=dt / (n * s), sample_cpu_s_per_cell_step=cpu / (n * s),
               sample_system_frac=(r1.ru_stime - r0.ru_stime) / max(cpu, 1e-9))
    out["peak_rss_mb_with_sampling"] = peak_rss_mb()
    return out


def _portable_module(path: str) -> str:
    p = Path(path).resolve()
    return "/".join(p.parts[-2:])


# ==================================================================== orchestration (parent)
def _log(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run_child(cfg: dict, pythonpath: Path, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(pythonpath))
    for line in res.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    raise RuntimeError(f"child failed (rc {res.returncode}): {res.stderr[-3000:]}")


def _worktree(rev: str, into: Path) -> Path:
    path = into / f"rev_{rev}"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes for CI (seconds)")
    ap.add_argument("--compare", action="append", default=[], metavar="REV",
                    help="also measure this git revision (a worktree in a temp folder), same run")
    ap.add_argument("--genes", default=None, help="comma-separated gene counts (default 2000,7000,20000)")
    ap.add_argument("--compare-max-genes", type=int, default=None,
                    help="measure --compare revisions only up to this many genes (slow old code)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--modes", default="fp32",
                    help=f"comma-separated speed switches of this tree, each its own process: {list(MODES)}; "
                    "--compare revisions run fp32 only")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every measuring process (default 2)")
    ap.add_argument("--no-goal-sample", action="store_true", help="skip the 1,000 cells × 20 steps timing")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per measuring process")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results; --quick: print only)")
    ap.add_argument("--name", default=NAME, help="results file name (default speed)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(TAG + json.dumps(child(json.loads(args.child))), flush=True)
        return 0

    p = dict(QUICK if args.quick else FULL)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: choose from {list(MODES)}, got {args.modes!r}")
    if args.genes:
        p["genes"] = tuple(int(g) for g in args.genes.split(","))
    genes = list(p["genes"])
    for k in ("batch", "repeats"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    if args.no_goal_sample:
        p["goal_sample"] = None
    out_dir = Path(args.out) if args.out else (None if args.quick else RESULTS_DIR)
    if args.quick and out_dir is not None and out_dir.resolve() == RESULTS_DIR.resolve():
        ap.error("--quick never overwrites the committed results in benchmarks/results")
    command = command_string([str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])

    recs: list[dict] = []
    extra: dict = {"threads": args.threads, "config": {k: v for k, v in p.items()}, "raw": {}, "errors": {},
                   "load_average_start": list(os.getloadavg())}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grndiff_speed_") as tmp:
        tmp = Path(tmp)
        revs: list[tuple[str, Path, str]] = [(_method(m), ROOT, m) for m in modes]
        trees = []
        try:
            for rev in args.compare:
                trees.append(_worktree(rev, tmp))
                revs.append((f"grndiff@{rev}", trees[-1], "fp32"))
            for G in genes:
                path = tmp / f"speed_G{G}.h5ad"
                speed_adata(G, p["cells"]).write_h5ad(path)
                group = f"G{G}_B{p['batch']}"
                for method, tree, mode in revs:
                    if "@" in method and args.compare_max_genes and G > args.compare_max_genes:
                        extra["errors"][f"{method}/{group}"] = (
                            f"skipped: above --compare-max-genes {args.compare_max_genes}")
                        continue
                    cfg = dict(path=str(path), threads=args.threads, batch=p["batch"], warmup=p["warmup"],
                               repeats=p["repeats"], sample_cells=p["sample_cells"], sample_steps=p["sample_steps"],
                               matmul_n=p["matmul_n"], mode=mode)
                    t0 = time.perf_counter()
                    try:
                        r = _run_child(cfg, tree, args.timeout)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        extra["errors"][f"{method}/{group}"] = str(e)[-500:]
                        _log(f"{method} {group}: FAILED {str(e)[-300:]}")
                        continue
                    for m in METRICS + ("sample_1000x20_s",):
                        if m in r:
                            recs.append(record(NAME, method, m, r[m], group=group))
                    extra["raw"][f"{method}/{group}"] = r
                    _log(f"{method} {group}: step {r['train_step_s']:.3f} s, sys {r['system_frac']:.0%}, "
                         f"sample {r['sample_s_per_cell_step'] * 1e3:.2f} ms/cell/step, RSS {r['peak_rss_mb']:.0f} MB, "
                         f"{r['gflops']:.1f}/{r['matmul_peak_gflops']:.0f} GFLOP/s ({time.perf_counter() - t0:.0f} s)")
                    _add_ratios(recs, group)
                    if out_dir is not None:  # after every measurement: a stopped run keeps what it measured
                        _write(recs, extra, command, out_dir, t_all, args.name)
            goal = tmp / "speed_G7000.h5ad"
            if p["goal_sample"] and goal.exists():  # last: the longest measurement
                cfg = dict(path=str(goal), threads=args.threads, goal_sample=p["goal_sample"])
                try:
                    r = _run_child(cfg, ROOT, args.timeout)
                    recs.append(record(NAME, "grndiff", "sample_1000x20_s", r["sample_1000x20_s"], group="G7000_B64"))
                    extra["raw"]["grndiff/goal_sample"] = r
                    _log(f"grndiff 1000 cells × 20 steps at G=7000: {r['sample_1000x20_s']:.0f} s")
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    extra["errors"]["grndiff/goal_sample"] = str(e)[-500:]
        finally:
            for t in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(t)], cwd=ROOT, capture_output=True)
    if out_dir is not None:
        _write(recs, extra, command, out_dir, t_all, args.name)
    else:
        print(f"command: {command}\n")
    print(records_to_markdown(recs))
    return 1 if extra["errors"] and not any("skipped" in v for v in extra["errors"].values()) else 0


def _method(mode: str) -> str:
    return "grndiff" if mode == "fp32" else f"grndiff[{mode}]"


def _add_ratios(recs: list[dict], group: str) -> None:
    """``speedup_*`` rows: old revision / this tree (each mode), and fp32 / each other mode of this tree,
    in the same group, once both exist."""
    timed = ("train_step_s", "sample_s_per_cell_step")
    rows = [r for r in recs if r["group"] == group and r["metric"] in timed and r["value"]]
    value = {(r["method"], r["metric"]): r["value"] for r in rows}
    for r in rows:
        if r["method"].startswith("grndiff@"):  # an older revision: against every mode of this tree
            pairs = [(m, r["method"].split("@", 1)[1]) for (m, k) in value if k == r["metric"] and "@" not in m]
        elif r["method"] == "grndiff":  # fp32 of this tree: against the other modes
            pairs = [(m, "fp32") for (m, k) in value if k == r["metric"] and m.startswith("grndiff[")]
        else:
            continue
        for method, ref in pairs:
            name = f"speedup_{r['metric']}_vs_{ref}"
            if not any(x["metric"] == name and x["group"] == group and x["method"] == method for x in recs):
                recs.append(record(NAME, method, name, r["value"] / value[(method, r["metric"])], group=group))


def _write(recs, extra, command, out_dir, t_all, name: str = NAME) -> None:
    ex = dict(extra, load_average_end=list(os.getloadavg()), wall_seconds=time.perf_counter() - t_all, notes=NOTES)
    if not ex["errors"]:
        del ex["errors"]
    write_results(name, recs, command, extra=ex, out_dir=out_dir)


NOTES = [
    "The 2-core machine was shared with other jobs (load averages above): read the grndiff@<rev> rows "
    "against the grndiff rows of the same run, as ratios (speedup_* rows = old / new).",
    "Both revisions run in fresh processes with the same torch threads; the old one is a git worktree "
    "imported through PYTHONPATH. The input AnnData (h5ad) is the same file for both.",
    "train_step_s: median over the timed batches of GRNDiff.train after warm-up (Lightning step: fwd + bwd + "
    "clip + AdamW + EMA), raw cpu_s_per_step = (user + system) / steps, less sensitive to the shared machine; "
    "system_frac over the same steps; peak_rss_mb after building and training (raw: with sampling too).",
    "gflops: FlowModule step FLOPs (FlopCounterMode, sparse products at 2·nnz·n; element-wise work not "
    "counted, so a lower bound) / train_step_s; matmul_peak_gflops: best of 5 float32 matmuls in the same "
    "process.",
]

if __name__ == "__main__":
    sys.exit(main())
