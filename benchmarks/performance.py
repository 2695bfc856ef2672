#!/usr/bin/env python
"""Performance and scale benchmark (issue 9): kernel, scaling in genes, sampling, utilisation,
DDP and out-of-core training. Every section runs in its own fresh subprocess (clean peak RSS).

Methods (the names are a contract):

``graph_attention`` / ``graph_attention_dynamic`` / ``pyg_batch`` / ``dense_attention``
    One graph-attention layer, fwd + bwd, B cells on one shared graph (``benchmarks/kernel.py``'s
    measurement, reused). Metrics ``seconds``, ``peak_mb``.
``train_step_G{n}``
    One training step (forward + backward + AdamW step) of the full default ``GRNTransformer``
    (hidden 32, depth 2, token_depth 2, cell token, hallmark modules) at B=16 on the real
    CollecTRI topology over ``n`` genes (CollecTRI's gene universe, subsampled below its size or
    padded with isolated genes above it; self-loops). Metrics ``seconds``, ``peak_mb`` (above the
    process baseline), ``peak_rss_mb`` (absolute), ``edges``, ``gflops`` (FlopCounterMode count /
    seconds). ``loglog_slope`` (method ``scaling``): slope of log seconds vs log (G + E).
``matmul_fp32``
    Measured float32 matmul throughput (``gflops``), the utilisation reference.
``sample_{euler,heun}_{10,20,50}``, ``sample_dopri5_adaptive``
    Cells/s of sampling from a small model trained briefly on Kang, and ``energy_distance`` of the
    samples to real cells (30-PC space fitted on the real cells).
``ddp``
    Wall time of ``grndiff fit --config configs/tiny.yaml`` with 2 CPU DDP processes (gloo), 5 steps.
``backed`` / ``in_memory``
    Out-of-core: a synthetic 1,000,000 × 2,000 counts h5ad (~5 % dense) generated in a temporary
    folder in row chunks; streaming scaler, a loader pass (``loader_cells_per_s``) and Lightning
    training (``train_cells_per_s``) from the file (``backed``) vs the same subset of cells loaded
    in memory (``in_memory``); ``peak_rss_mb`` absolute.

    python benchmarks/performance.py           # full run → benchmarks/results/performance.{json,md}
    python benchmarks/performance.py --quick   # tiny sizes for CI: prints the table, writes nothing
    python benchmarks/performance.py --quick --out DIR
    python benchmarks/performance.py --sections scaling,sampling   # a subset (still writes all it ran)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

from _harness import chosen, output_dir, peak_rss_mb  # noqa: E402
from _results import RESULTS_DIR, command_string, record, records_to_markdown, write_results  # noqa: E402

NAME = "performance"
SECTIONS = ("scaling", "backed", "sampling", "ddp", "kernel")
TAG = "PERF_RESULT "
KERNEL_NAMES = {"graph_attention_shared": "graph_attention"}  # kernel.py name → contract name
FULL = dict(genes=(1000, 2000, 5000, 10000, 20000), cells=16, repeats=3, n_cells=1_000_000, n_vars=2000,
            subset=50_000, train_steps=20, kang="kang2018_tiny", kang_steps=100, n_sample=64)
QUICK = dict(genes=(300, 600), cells=4, repeats=2, n_cells=20_000, n_vars=200, subset=5000, train_steps=8,
             kang="kang2018_tiny", kang_steps=20, n_sample=64)
NET = dict(hidden=32, heads=4, depth=2, token_depth=2, cell_token=True)  # the default model


# ==================================================================== scaling + utilisation
def collectri_graph(n_genes: int, seed: int = 0):
    """The CollecTRI topology over ``n_genes``: its gene universe (random subset if larger than
    ``n_genes``), padded with isolated genes; self-loops; hallmark modules."""
    import numpy as np  # noqa: PLC0415

    from grndiff import priors  # noqa: PLC0415
    from grndiff.graph import GeneGraph  # noqa: PLC0415

    df = priors.load("collectri")
    universe = sorted(set(df["source"]) | set(df["target"]))
    rng = np.random.default_rng(seed)
    if n_genes <= len(universe):
        genes = sorted(rng.choice(universe, n_genes, replace=False).tolist())
    else:
        genes = universe + [f"PAD{i}" for i in range(n_genes - len(universe))]
    return GeneGraph.from_prior(df, genes, modules="hallmark", isolated="self_loop")


def _train_setup(graph, B: int, seed: int = 0):
    import torch  # noqa: PLC0415

    from grndiff.train import FlowModule  # noqa: PLC0415

    torch.manual_seed(seed)
    inputs = {"n_genes": graph.n_genes, "edge_index": graph.edge_index, "edge_sign": graph.edge_sign,
              "edge_weight": graph.edge_weight, "edge_type": graph.edge_type, "membership": graph.membership,
              "condition_specs": [{"name": "cell_type", "kind": "categorical", "n_categories": 8}],
              "perturbation": False}
    module = FlowModule(inputs, net_kwargs=dict(NET), ema_decay=0.0)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-4)
    batch = {"x": torch.randn(B, graph.n_genes), "cond": {"cell_type": torch.randint(1, 9, (B,))}}
    module.fit_source([batch])  # the default Gaussian source, fitted on the one batch (cost: negligible)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = module._loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        return loss

    return module, step


class SparseAwareFlops:
    """FLOPs of a step: ``FlopCounterMode``'s count with every product that has a sparse operand
    re-counted at its true cost ``2·nnz·n`` (FlopCounterMode counts a (G, G) CSR matrix times a
    dense (G, n) one as a dense ``2·G·G·n``, which at G = 20,000 exceeds the machine's peak)."""

    def __init__(self):
        import torch  # noqa: PLC0415
        from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC0415

        outer = self
        self.dense_counted, self.true_cost = 0, 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", str(func))
                mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 2]
                if name.startswith(("mm", "addmm")) and len(mats) >= 2:
                    a, b = mats[-2], mats[-1]
                    if a.layout != torch.strided or b.layout != torch.strided:
                        sp, de = (a, b) if a.layout != torch.strided else (b, a)
                        n = de.shape[1] if sp is a else de.shape[0]
                        outer.dense_counted += 2 * a.shape[0] * a.shape[1] * b.shape[1]
                        outer.true_cost += 2 * sp._nnz() * n
                elif name.startswith("sparse_sampled_addmm") and len(mats) >= 3:
                    pattern, a = mats[0], mats[1]
                    outer.true_cost += 2 * pattern._nnz() * a.shape[1]  # only the sampled dot products
                return func(*args, **kwargs)

        self._mode = _Mode()

    def __enter__(self):
        from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415
        self._fc = FlopCounterMode(display=False)
        self._fc.__enter__()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self._fc.__exit__(*exc)

    def total(self) -> int:
        return int(self._fc.get_total_flops() - self.dense_counted + self.true_cost)


def child_train_step(args) -> dict:
    """One G: time, peak RSS, FLOPs of a full training step."""
    import torch  # noqa: PLC0415
    from kernel import PeakRSS  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    graph = collectri_graph(args.genes)
    mem = PeakRSS()
    base = mem.mark_baseline()
    _, step = _train_setup(graph, args.cells)
    step()  # warm-up (allocates optimizer state)
    mem.reset()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss")
    peak = mem.stop()
    with FlopCounterMode(display=False) as fc:
        step()
    flops_raw = fc.get_total_flops()
    with SparseAwareFlops() as sfc:
        step()
    flops = sfc.total()
    sec = statistics.median(times)
    return {"genes": graph.n_genes, "edges": graph.n_edges, "modules": graph.n_modules, "seconds": sec,
            "times": times, "peak_mb": peak, "baseline_mb": base, "peak_rss_mb": peak_rss_mb(),
            "flops": flops, "flops_dense_counted": flops_raw, "gflops": flops / sec / 1e9,
            "threads": torch.get_num_threads()}


def child_matmul(args) -> dict:
    import torch  # noqa: PLC0415

    n = 2048 if not args.quick else 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    sec = min(times)
    return {"n": n, "seconds": sec, "gflops": 2 * n ** 3 / sec / 1e9}


# ==================================================================== sampling
def child_sampling(args) -> dict:
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import grndiff  # noqa: PLC0415
    from grndiff import datasets  # noqa: PLC0415
    from grndiff.metrics import energy_distance  # noqa: PLC0415
    from grndiff.metrics.pca import fit_pca  # noqa: PLC0415

    adata = getattr(datasets, args.kang)()
    keys = [k for k in ("cell_type", "condition") if k in adata.obs.columns]
    grndiff.GRNDiff.setup_anndata(adata, layer="counts" if "counts" in adata.layers else None, condition_keys=keys)
    model = grndiff.GRNDiff(adata, prior="collectri", modules="hallmark", ema_decay=0.99, warmup_steps=20, **NET)
    t0 = time.perf_counter()
    model.train(max_steps=args.kang_steps, batch_size=64, progress_bar=False, accelerator="cpu", val_fraction=0.0)
    train_s = time.perf_counter() - t0
    real = model.processor.log_expression(adata).toarray()
    pca = fit_pca(real, n=30, seed=0)
    zr = pca.transform(real)
    rng = np.random.default_rng(0)
    idx = rng.choice(adata.n_obs, min(args.n_sample, adata.n_obs), replace=False)
    conds = adata.obs.iloc[idx][keys].reset_index(drop=True)
    n = len(idx)
    out = {"train_seconds": train_s, "train_steps": args.kang_steps, "dataset": args.kang, "genes": adata.n_vars,
           "n_cells": n, "solvers": {}}
    torch.manual_seed(0)
    model.sample(8, conds.iloc[:8], n_steps=2)  # warm-up
    runs = [(m, s) for m in ("euler", "heun") for s in (10, 20, 50)] + [("dopri5", None)]
    for method, steps in runs:
        t0 = time.perf_counter()
        gen = model.sample(n, conds, n_steps=steps or 50, method=method, seed=1)
        dt = time.perf_counter() - t0
        x = np.asarray(gen.X.toarray() if hasattr(gen.X, "toarray") else gen.X)
        ed = energy_distance(pca.transform(x), zr)
        name = f"sample_{method}_{steps if steps else 'adaptive'}"
        out["solvers"][name] = {"cells_per_s": n / dt, "seconds": dt, "energy_distance": ed}
    return out


# ==================================================================== DDP
def run_ddp(timeout: float = 300.0) -> dict:
    """``grndiff fit`` on configs/tiny.yaml with 2 CPU DDP processes (gloo); wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ddp_command(tmp)
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ddp_env())
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        dt = time.perf_counter() - t0
    if res.returncode != 0:
        return {"error": f"exit {res.returncode}: " + " | ".join(res.stderr.strip().splitlines()[-3:])}
    return {"seconds": dt}


def ddp_command(root_dir: str, strategy: str = "ddp") -> list[str]:
    return [sys.executable, "-m", "grndiff.cli", "fit", "--config", "configs/tiny.yaml",
            "--trainer.strategy", strategy, "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.max_steps", "5", "--trainer.default_root_dir", root_dir]


def ddp_env() -> dict:
    # one torch thread per rank (2 ranks share the cores); loopback rendezvous, no network
    return dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", PYTHONWARNINGS="ignore",
                GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))


# ==================================================================== out-of-core
def write_synthetic_h5ad(path, n_cells: int, n_vars: int, density: float = 0.05, chunk: int = 25_000,
                         seed: int = 0) -> dict:
    """Counts (n_cells × n_vars) CSR h5ad written in row chunks (memory ~ one chunk).

    Non-zeros: each entry is present with probability ``density``; a present value is
    1 + NegBinom(r=2, p_g) with a per-gene mean spread over two orders of magnitude.
    """
    import anndata as ad  # noqa: PLC0415
    import h5py  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_vars)])
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.integers(0, 8, n_cells).astype(str))},
                       index=pd.RangeIndex(n_cells).astype(str))
    ad.AnnData(obs=obs, var=var).write_h5ad(path)  # obs/var in anndata's layout; X added below
    gene_mean = np.exp(rng.uniform(np.log(0.3), np.log(30.0), n_vars))
    p = (2.0 / (2.0 + gene_mean)).astype(np.float64)
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_vars)})
        dd = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 18,))
        di = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 18,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        nnz = 0
        for s in range(0, n_cells, chunk):
            n = min(chunk, n_cells - s)
            mask = rng.random((n, n_vars), dtype=np.float32) < density  # (n, G)
            rows, cols = np.nonzero(mask)
            del mask
            vals = (1 + rng.negative_binomial(2, p[cols])).astype(np.float32)
            dd.resize((nnz + vals.size,))
            di.resize((nnz + vals.size,))
            dd[nnz:] = vals
            di[nnz:] = cols.astype(np.int32)
            indptr[s + 1:s + n + 1] = nnz + np.cumsum(np.bincount(rows, minlength=n))
            nnz += vals.size
        g.create_dataset("indptr", data=indptr)
    return {"n_cells": n_cells, "n_vars": n_vars, "nnz": int(nnz), "bytes": os.path.getsize(path)}


def _random_graph(n_vars: int, seed: int = 0):
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    from grndiff.graph import GeneGraph  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    E = 10 * n_vars
    src, dst = rng.integers(0, n_vars, E), rng.integers(0, n_vars, E)
    keep = src != dst
    genes = [f"g{i}" for i in range(n_vars)]
    df = pd.DataFrame({"source": np.array(genes)[src[keep]], "target": np.array(genes)[dst[keep]],
                       "weight": rng.choice([-1.0, 1.0], keep.sum())}).drop_duplicates(["source", "target"])
    return GeneGraph.from_prior(df, genes)


class _Throughput:
    """Lightning callback: wall time from the start of batch ``warm`` to the end of training."""

    def __new__(cls, warm: int):
        import lightning as L  # noqa: PLC0415

        class CB(L.Callback):
            def __init__(self):
                self.t0, self.t1, self.n = None, None, 0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warm and self.t0 is None:
                    self.t0 = time.perf_counter()
                if self.t0 is not None:
                    self.n += batch["x"].shape[0]

            def on_train_end(self, trainer, pl_module):
                self.t1 = time.perf_counter()

        return CB()


def child_backed(args) -> dict:
    """``--mode backed|in_memory`` on ``--path``: loader pass + Lightning training; peak RSS."""
    import lightning as L  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from grndiff.data import (  # noqa: PLC0415
        BackedCSR,
        BackedDataModule,
        CellData,
        GRNDataModule,
        log1p_cp10k,
        streaming_scaler,
    )
    from grndiff.train import FlowModule  # noqa: PLC0415

    reader = BackedCSR(args.path)
    out = {"mode": args.mode, "file_cells": reader.n_obs}
    t0 = time.perf_counter()
    scaler = streaming_scaler(args.path, value_kind="counts", block_size=20_000,
                              rows=None if args.mode == "backed" else (0, args.subset))
    out["scaler_seconds"] = time.perf_counter() - t0
    out["scaler_cells"] = reader.n_obs if args.mode == "backed" else args.subset
    B = 64
    if args.mode == "backed":
        import pandas as pd  # noqa: PLC0415

        out["full_pass"] = {}
        dm = BackedDataModule(args.path, scaler, value_kind="counts", batch_size=B, block_size=1024,
                              blocks_per_fetch=16)
        t0, n = time.perf_counter(), 0
        for b in dm.train_dataloader():  # the whole file once: memory must not grow with N
            n += b["x"].shape[0]
        out["full_pass"] = {"cells": n, "cells_per_s": n / (time.perf_counter() - t0)}
        del pd
        sub = BackedDataModule(args.path, scaler, value_kind="counts", batch_size=B, block_size=1024,
                               blocks_per_fetch=16)
        sub.train_set.rows = (0, args.subset)  # the same cells as in_memory
        train_loader = sub.train_dataloader
    else:
        X = log1p_cp10k(reader.read_rows(0, args.subset))  # the subset, loaded whole
        cell_data = CellData(X=X, cond={}, pert=None, obs_names=np.arange(args.subset).astype(str))
        import pandas as pd  # noqa: PLC0415

        dm_mem = GRNDataModule(cell_data, scaler, pd.DataFrame(index=cell_data.obs_names), batch_size=B,
                               val_fraction=0.0)
        train_loader = dm_mem.train_dataloader
    t0, n = time.perf_counter(), 0
    for b in train_loader():
        n += b["x"].shape[0]
    out["loader_cells"], out["loader_cells_per_s"] = n, n / (time.perf_counter() - t0)

    graph = _random_graph(reader.n_vars)
    inputs = {"n_genes": graph.n_genes, "edge_index": graph.edge_index, "edge_sign": graph.edge_sign,
              "edge_weight": graph.edge_weight, "edge_type": graph.edge_type, "membership": None,
              "condition_specs": [], "perturbation": False}
    torch.manual_seed(0)
    module = FlowModule(inputs, net_kwargs=dict(NET), ema_decay=0.0, warmup_steps=5)
    warm = 3
    cb = _Throughput(warm)
    trainer = L.Trainer(max_steps=args.train_steps + warm, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[cb], num_sanity_val_steps=0, limit_val_batches=0)

    class _DM(L.LightningDataModule):
        def train_dataloader(self):
            return train_loader()

    trainer.fit(module, datamodule=_DM())
    out["train_cells_per_s"] = cb.n / (cb.t1 - cb.t0)
    out["peak_rss_mb"] = peak_rss_mb()
    out["genes"], out["edges"] = graph.n_genes, graph.n_edges
    return out


# ==================================================================== parent
def _child(section: str, args, extra: list[str], timeout: float = 3000.0) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", section, *extra]
    if args.quick:
        cmd.append("--quick")
    # torch threads per child: on a shared, oversubscribed CPU, spinning OpenMP threads waste cycles
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(args.threads))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"{section}: timed out after {timeout} s"}
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    return {"error": f"{section}: exit {res.returncode}: " + " | ".join(res.stderr.strip().splitlines()[-4:])}


def _log(msg: str) -> None:
    print(f"[performance] {msg}", file=sys.stderr, flush=True)


def section_kernel(args, recs, extra):
    import kernel  # noqa: PLC0415

    sizes = dict(kernel.QUICK if args.quick else kernel.FULL, repeats=3 if not args.quick else 2, max_seconds=15.0)
    kargs = argparse.Namespace(quick=args.quick, threads=args.threads, seed=0, timeout=600.0, **sizes)
    ds = f"kernel_G{kargs.genes}_E{kargs.edges}_B{kargs.cells}"
    for m in kernel.METHODS:
        r = kernel.run_method(m, kargs)
        name = KERNEL_NAMES.get(m, m)
        if "error" in r:
            extra["errors"][name] = r["error"]
        recs.append(record(ds, name, "seconds", r.get("seconds")))
        recs.append(record(ds, name, "peak_mb", r.get("peak_mb")))
        _log(f"{name}: {r.get('seconds')} s, {r.get('peak_mb')} MB")


def section_scaling(args, recs, extra):
    import numpy as np  # noqa: PLC0415

    p = QUICK if args.quick else FULL
    mm = _child("matmul", args, [])
    ds = f"train_step_B{p['cells']}"
    pts = []
    for G in p["genes"]:
        r = _child("train_step", args, ["--genes", str(G), "--cells", str(p["cells"]), "--repeats", str(p["repeats"])])
        m = f"train_step_G{G}"
        if "error" in r:
            extra["errors"][m] = r["error"]
            _log(f"{m}: {r['error']}")
            continue
        pts.append((r["genes"] + r["edges"], r["seconds"]))
        for k in ("seconds", "peak_mb", "peak_rss_mb", "edges", "gflops"):
            recs.append(record(ds, m, k, r[k]))
        recs.append(record(ds, m, "utilisation", r["gflops"] / mm["gflops"] if "gflops" in mm else None))
        extra["raw"][m] = {k: r[k] for k in ("times", "flops", "flops_dense_counted", "modules", "baseline_mb",
                                             "threads") if k in r}
        _log(f"{m}: E={r['edges']} {r['seconds']:.3f} s, {r['peak_mb']:.0f} MB (+base), "
             f"RSS {r['peak_rss_mb']:.0f} MB, {r['gflops']:.2f} GFLOP/s")
    recs.append(record(ds, "matmul_fp32", "gflops", mm.get("gflops")))
    if len(pts) >= 2:
        x, y = np.log([a for a, _ in pts]), np.log([b for _, b in pts])
        slope = float(np.polyfit(x, y, 1)[0])
        recs.append(record(ds, "scaling", "loglog_slope", slope))
        big = [pts[i] for i in range(len(pts)) if x[i] >= np.median(x)]
        if len(big) >= 2:
            xb, yb = np.log([a for a, _ in big]), np.log([b for _, b in big])
            recs.append(record(ds, "scaling", "loglog_slope_upper_half", float(np.polyfit(xb, yb, 1)[0])))
        _log(f"log-log slope of time vs G+E: {slope:.3f}")


def section_sampling(args, recs, extra):
    r = _child("sampling", args, [])
    if "error" in r:
        extra["errors"]["sampling"] = r["error"]
        _log(r["error"])
        return
    ds = f"sampling_{r['dataset']}"
    for m, v in r["solvers"].items():
        for k in ("cells_per_s", "energy_distance"):
            recs.append(record(ds, m, k, v[k]))
    ref = r["solvers"]["sample_dopri5_adaptive"]["energy_distance"]
    e20 = r["solvers"]["sample_euler_20"]["energy_distance"]
    recs.append(record(ds, "sample_euler_20", "ed_ratio_vs_dopri5", e20 / ref if ref else None))
    extra["sampling"] = {k: r[k] for k in ("dataset", "genes", "n_cells", "train_steps", "train_seconds")}
    _log(f"sampling: euler20 ED {e20:.4f} vs dopri5 {ref:.4f}")


def section_ddp(args, recs, extra):
    r = run_ddp()
    if "error" in r:
        extra["errors"]["ddp"] = r["error"]
    recs.append(record("ddp_tiny_2x_cpu", "ddp", "seconds", r.get("seconds")))
    _log(f"ddp: {r}")


def section_backed(args, recs, extra):
    p = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synthetic.h5ad")
        gen = _child("generate", args, ["--path", path, "--n-cells", str(p["n_cells"]), "--n-vars", str(p["n_vars"])])
        if "error" in gen:
            extra["errors"]["backed"] = gen["error"]
            _log(gen["error"])
            return
        _log(f"generated {gen}")
        extra["backed_file"] = {k: gen[k] for k in ("n_cells", "n_vars", "nnz", "bytes", "seconds", "peak_rss_mb")}
        ds = f"synthetic_{gen['n_cells']}x{gen['n_vars']}"
        res = {}
        for mode in ("backed", "in_memory"):
            r = _child("backed", args, ["--path", path, "--mode", mode, "--subset", str(p["subset"]),
                                        "--train-steps", str(p["train_steps"])])
            res[mode] = r
            if "error" in r:
                extra["errors"][mode] = r["error"]
                _log(f"{mode}: {r['error']}")
                continue
            _log(f"{mode}: {r}")
            for k in ("peak_rss_mb", "loader_cells_per_s", "train_cells_per_s", "scaler_seconds"):
                recs.append(record(ds, mode, k, r[k]))
            if mode == "backed":
                recs.append(record(ds, mode, "full_pass_cells_per_s", r["full_pass"]["cells_per_s"]))
        if all("error" not in r for r in res.values()):
            b, m = res["backed"], res["in_memory"]
            recs.append(record(ds, "backed", "train_slowdown_vs_in_memory",
                               m["train_cells_per_s"] / b["train_cells_per_s"]))
            recs.append(record(ds, "backed", "loader_slowdown_vs_in_memory",
                               m["loader_cells_per_s"] / b["loader_cells_per_s"]))
            extra["backed_detail"] = {"subset_cells": p["subset"], "full_pass_cells": b["full_pass"]["cells"],
                                      "train_steps": p["train_steps"],
                                      "graph": {"genes": b["genes"], "edges": b["edges"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    for k in ("genes", "cells", "repeats", "n-cells", "n-vars", "subset", "train-steps"):
        ap.add_argument(f"--{k}", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each measuring process (default 1)")
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL
    args.kang, args.kang_steps, args.n_sample = p["kang"], p["kang_steps"], p["n_sample"]

    if args.child:  # ---- one measurement in this fresh process
        if args.child == "generate":
            t0 = time.perf_counter()
            r = write_synthetic_h5ad(args.path, args.n_cells, args.n_vars)
            r.update(seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
        else:
            r = {"train_step": child_train_step, "matmul": child_matmul, "sampling": child_sampling,
                 "backed": child_backed}[args.child](args)
        print(TAG + json.dumps(r), flush=True)
        return 0

    sections = chosen([s.strip() for s in args.sections.split(",") if s.strip()], SECTIONS, ap, "sections")
    out_dir = output_dir(args, ap, RESULTS_DIR)
    recs: list[dict] = []
    extra: dict = {"threads": args.threads, "errors": {}, "raw": {}, "load_average_start": list(os.getloadavg())}
    t_all = time.perf_counter()
    command = command_string([str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])
    for s in sections:
        t0 = time.perf_counter()
        globals()[f"section_{s}"](args, recs, extra)
        _log(f"section {s}: {time.perf_counter() - t0:.0f} s")
        if out_dir is not None:  # after every section: a long run that is stopped keeps what it measured
            _write(recs, extra, command, out_dir, args, sections[:sections.index(s) + 1], t_all)
    if out_dir is None:
        print(f"command: {command}\n")
    print(records_to_markdown(recs))
    return 1 if extra.get("errors") else 0


def _write(recs, extra, command, out_dir, args, done, t_all):
    ex = dict(extra, sections_done=done, load_average_end=list(os.getloadavg()),
              wall_seconds=time.perf_counter() - t_all, notes=NOTES,
              gpu=("not measured: no GPU in this session (bf16-mixed / torch.compile GPU figures missing); "
                   "bf16-mixed on CPU is checked for finiteness in tests/test_performance.py"))
    if not ex["errors"]:
        del ex["errors"]
    paths = write_results(NAME, recs, command, extra=ex, out_dir=out_dir)
    _log("wrote " + ", ".join(x.name for x in paths))


NOTES = [
    "Timings come from a 2-core CPU shared with other jobs (load averages above); compare methods "
    "measured in the same run, as ratios; differences below ~20 % are noise.",
    "kernel rows: benchmarks/kernel.py's measurement (one layer fwd+bwd, own process per method); "
    "graph_attention = GraphAttention(mode='shared').",
    "train_step_G{n}: forward + backward + grad clipping + AdamW step of the default GRNTransformer "
    "(hidden 32, heads 4, depth 2, token_depth 2, cell token, hallmark modules, one 8-category condition), "
    "B=16, CollecTRI edges among the genes (random gene subset below CollecTRI's universe, isolated PAD "
    "genes above it) plus self-loops; seconds = median of the timed repeats after one warm-up; "
    "peak_mb = peak RSS above the RSS after building the graph; peak_rss_mb = absolute VmHWM of the process.",
    "gflops = FLOPs of one step / median step seconds. FLOPs: torch.utils.flop_counter.FlopCounterMode's "
    "count, with every product that has a sparse operand re-counted at its true 2·nnz·n (FlopCounterMode "
    "alone counts the (G, G) CSR graph times (G, B·D) as dense; raw['flops_dense_counted'] keeps that "
    "figure); element-wise work, gathers and index_add are not counted, so this is a lower bound. "
    "utilisation = gflops / matmul_fp32 gflops (2048² float32 matmul measured in the same run).",
    "loglog_slope: least-squares slope of log(seconds) vs log(G + E) over the train_step rows (goal <= 1.1).",
    "sampling: a default-size GRNDiff trained briefly on the named Kang set (counts layer, CollecTRI + "
    "hallmark), then cells generated with each solver for the conditions of randomly drawn real cells; "
    "energy_distance between generated and all real cells in a 30-PC space fitted on the real log1p "
    "values; ed_ratio_vs_dopri5 = Euler-20 ED / dopri5 ED (goal <= 1.1).",
    "ddp: wall time of the whole `grndiff fit --config configs/tiny.yaml --trainer.strategy ddp "
    "--trainer.devices 2 --trainer.accelerator cpu --trainer.max_steps 5` subprocess (start-up included).",
    "backed/in_memory: a synthetic counts file generated in a temporary folder (deleted afterwards) in "
    "row chunks; streaming_scaler over the whole file (backed) or the subset (in_memory); "
    "loader_cells_per_s = one pass of the training loader over the subset (first rows of the file) with "
    "no model; train_cells_per_s = Lightning training of the default model (no modules, random 10·G-edge "
    "graph) at B=64 after 3 warm-up steps; full_pass_cells_per_s = backed loader over ALL cells; "
    "peak_rss_mb = absolute peak RSS of the process (includes torch, the scaler pass, the full pass and "
    "training). Backed reads blocks of 1024 contiguous rows, 16 blocks per fetch, shuffled among themselves.",
]

if __name__ == "__main__":
    sys.exit(main())
