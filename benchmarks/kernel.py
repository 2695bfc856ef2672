#!/usr/bin/env python
"""Kernel benchmark: one graph-attention layer, forward + backward, on ONE gene graph shared by B cells.

Methods (equal total hidden size D = H × d):

``graph_attention_shared``   ``grndiff.nn.GraphAttention(mode="shared")`` on x (B, G, D)
``graph_attention_dynamic``  ``grndiff.nn.GraphAttention(mode="dynamic")`` on x (B, G, D)
``pyg_batch``                ``torch_geometric.nn.TransformerConv(D, d, heads=H)`` on a
                             ``Batch`` of B replicated copies of the graph, x (B·G, D)
``dense_attention``          dense multi-head attention over all G genes (q/k/v/out linears +
                             ``F.scaled_dot_product_attention``) with the edges as a boolean
                             mask, i.e. an additive −inf mask broadcast to (B, H, G, G)

Metrics per method: ``seconds`` (median over the timed repeats, after warm-up, of one
forward + backward of ``out.square().mean()``; the input requires grad, as in a middle layer)
and ``peak_mb`` (peak RSS above the process baseline taken before any input is built; every
method runs in a fresh subprocess). Derived: ``speedup_vs_pyg`` = pyg seconds / method seconds,
``memory_ratio_vs_pyg`` = method peak_mb / pyg peak_mb. Also ``repeats`` and ``threads``.

    python benchmarks/kernel.py            # full sizes → benchmarks/results/kernel.{json,md}
    python benchmarks/kernel.py --quick    # tiny sizes for CI: prints the table, writes nothing
    python benchmarks/kernel.py --quick --out DIR   # … or writes DIR/kernel.{json,md}
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _harness import chosen, output_dir
from _results import RESULTS_DIR, command_string, record, records_to_markdown, write_results

BENCH_DIR = Path(__file__).resolve().parent

NAME = "kernel"
METHODS = ("graph_attention_shared", "graph_attention_dynamic", "pyg_batch", "dense_attention")
BASELINE = "pyg_batch"
FULL = dict(cells=32, genes=2000, edges=20000, heads=4, hidden=64, warmup=3, repeats=7, max_seconds=40.0)
QUICK = dict(cells=4, genes=200, edges=1000, heads=4, hidden=64, warmup=1, repeats=3, max_seconds=5.0)
RESULT_TAG = "KERNEL_RESULT "
MEMORY_STEPS = 2
# glibc: a fixed mmap threshold hands every freed large buffer back to the OS at once, so RSS
# follows the live tensors; with glibc's default (dynamic) threshold freed buffers stay in the
# heap arenas and RSS creeps up with each repeat, making a "peak" depend on the repeat count.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# =============================================================================== child side
class PeakRSS:
    """Peak resident memory of this process in a window, in MiB above a baseline.

    ``mark_baseline()`` (before anything is built), ``reset()`` (window start), ``stop()`` → peak −
    baseline. Linux: reset the kernel's high-water mark (``/proc/self/clear_refs`` ← 5) and read
    ``VmHWM``. Elsewhere (or if the reset is not allowed): a psutil polling thread, combined with
    ``ru_maxrss`` when that rose during the window (then it is exact).
    """

    def __init__(self, interval: float = 0.002):
        import psutil  # noqa: PLC0415

        self._proc = psutil.Process()
        self.interval = interval
        self.how = None
        self.baseline = None

    @staticmethod
    def _status_kb(field: str) -> int | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    @staticmethod
    def _maxrss_mb() -> float | None:
        try:
            import resource  # noqa: PLC0415
        except ImportError:
            return None
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux

    def rss_mb(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def mark_baseline(self) -> float:
        gc.collect()
        self.baseline = self.rss_mb()
        return self.baseline

    def reset(self) -> None:
        """Start the window: the peak is taken over what happens from now to ``stop()``."""
        gc.collect()
        now = self.rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            hwm = self._status_kb("VmHWM")
            if hwm is not None and hwm / 1024 <= now + 1.0:  # the reset really happened
                self.how = "VmHWM (reset via /proc/self/clear_refs)"
                return
        except OSError:
            pass
        self.how = "psutil polling + ru_maxrss"
        self._maxrss0 = self._maxrss_mb()
        self._peak = now
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                self._peak = max(self._peak, self.rss_mb())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """Peak RSS in the window minus the baseline, MiB."""
        if self.how.startswith("VmHWM"):
            peak = self._status_kb("VmHWM") / 1024
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self.rss_mb())
            m1 = self._maxrss_mb()
            if m1 is not None and self._maxrss0 is not None and m1 > self._maxrss0:
                peak = max(peak, m1)  # the lifetime maximum was reached inside the window
        return max(peak - self.baseline, 0.0)


def random_edges(n_genes: int, n_edges: int, seed: int):
    """``(2, E)`` unique random directed edges without self-loops; row 0 source, row 1 target."""
    import torch  # noqa: PLC0415

    n_pairs = n_genes * (n_genes - 1)
    if n_edges > n_pairs:
        raise ValueError(f"{n_edges} edges do not fit in {n_genes} genes")
    g = torch.Generator().manual_seed(seed)
    codes = torch.empty(0, dtype=torch.long)
    while codes.numel() < n_edges:  # draw with replacement, deduplicate, top up
        draw = torch.randint(n_pairs, (n_edges + n_edges // 4 + 16,), generator=g)
        codes = torch.unique(torch.cat([codes, draw]))
    codes = codes[torch.randperm(codes.numel(), generator=g)[:n_edges]]
    src = codes // (n_genes - 1)
    r = codes % (n_genes - 1)
    dst = r + (r >= src).long()  # skip the diagonal
    return torch.stack([src, dst])


def _dense_module(hidden: int, heads: int, allowed):
    import torch.nn.functional as F  # noqa: N812, PLC0415
    from torch import nn  # noqa: PLC0415

    class DenseMaskedAttention(nn.Module):
        """Dense MHA over all G genes; ``allowed`` (G, G) bool, [i, j] = edge j → i."""

        def __init__(self):
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
            self.register_buffer("allowed", allowed)

        def forward(self, x):
            B, G, D = x.shape
            H, d = self.heads, D // self.heads

            def split(t):
                return t.view(B, G, H, d).transpose(1, 2)  # (B, H, G, d)

            y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                               attn_mask=self.allowed)  # mask broadcast to (B, H, G, G)
            return self.o(y.transpose(1, 2).reshape(B, G, D))

    return DenseMaskedAttention()


def build(method: str, cells: int, genes: int, edges: int, heads: int, hidden: int, seed: int):
    """→ (module, input, forward callable) for one method."""
    import torch  # noqa: PLC0415

    torch.manual_seed(seed)
    edge_index = random_edges(genes, edges, seed)
    if method in ("graph_attention_shared", "graph_attention_dynamic"):
        from grndiff.nn import GraphAttention  # noqa: PLC0415

        mode = method.rsplit("_", 1)[1]
        layer = GraphAttention(hidden, heads, genes, edge_index, mode=mode)
        x = torch.randn(cells, genes, hidden, requires_grad=True)
        return layer, x, lambda: layer(x)
    if method == "pyg_batch":
        from torch_geometric.data import Batch, Data  # noqa: PLC0415
        from torch_geometric.nn import TransformerConv  # noqa: PLC0415

        layer = TransformerConv(hidden, hidden // heads, heads=heads)
        batch = Batch.from_data_list([Data(edge_index=edge_index, num_nodes=genes) for _ in range(cells)])
        batch_edges = batch.edge_index  # (2, B·E)
        x = torch.randn(cells * genes, hidden, requires_grad=True)
        return layer, x, lambda: layer(x, batch_edges)
    if method == "dense_attention":
        allowed = torch.zeros(genes, genes, dtype=torch.bool)
        allowed[edge_index[1], edge_index[0]] = True
        empty = ~allowed.any(1)  # a fully masked row would give NaN: let such genes see themselves
        allowed[empty, empty] = True
        layer = _dense_module(hidden, heads, allowed)
        x = torch.randn(cells, genes, hidden, requires_grad=True)
        return layer, x, lambda: layer(x)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_child(args) -> dict:
    """One method in this (fresh) process. ``--phase time``: warm-up + timed repeats.
    ``--phase memory``: RSS baseline → build → warm-up → peak over ``MEMORY_STEPS`` steps.
    ``--phase both``: the timed repeats are the memory window (used by ``--quick``)."""
    import torch  # noqa: PLC0415
    import torch_geometric  # noqa: PLC0415
    import torch_geometric.nn  # noqa: F401, PLC0415

    import grndiff.nn  # noqa: F401, PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    # initialise the method's lazy runtime state (thread pool, kernel dispatch, library buffers)
    # on a tiny graph, so that the baseline below holds it and peak_mb measures the size-dependent part
    tiny_layer, tiny_x, tiny_forward = build(args.method, 2, 16, 40, args.heads, args.hidden, args.seed)
    tiny_forward().square().mean().backward()
    del tiny_layer, tiny_x, tiny_forward
    mem = PeakRSS()
    baseline = mem.mark_baseline()  # everything imported and initialised, nothing built
    layer, x, forward = build(args.method, args.cells, args.genes, args.edges, args.heads, args.hidden, args.seed)
    params = list(layer.parameters())

    def step() -> float:
        for p in params:
            p.grad = None
        x.grad = None
        t0 = time.perf_counter()
        out = forward()
        out.square().mean().backward()
        dt = time.perf_counter() - t0
        if not torch.isfinite(out).all() or not torch.isfinite(x.grad).all():
            raise FloatingPointError(f"{args.method}: non-finite output or gradient")
        del out
        return dt

    res = {"method": args.method, "phase": args.phase, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "torch_geometric": torch_geometric.__version__}
    for _ in range(args.warmup if args.phase != "memory" else min(args.warmup, 1)):
        step()
    if args.phase != "time":
        mem.reset()
    if args.phase == "memory":
        for _ in range(MEMORY_STEPS):
            step()
    else:
        times: list[float] = []
        t_start = time.perf_counter()
        while len(times) < args.repeats:
            times.append(step())
            if len(times) >= 3 and time.perf_counter() - t_start > args.max_seconds:
                break
        res.update(seconds=statistics.median(times), times=times)
    if args.phase != "time":
        res.update(peak_mb=mem.stop(), baseline_mb=baseline, memory_method=mem.how,
                   malloc_env={k: os.environ[k] for k in MALLOC_ENV if k in os.environ})
    return res


# =============================================================================== parent side
def _size_args(args) -> list[str]:
    out = []
    for k in ("cells", "genes", "edges", "heads", "hidden", "warmup", "repeats", "max_seconds", "seed", "threads"):
        v = getattr(args, k)
        if v is not None:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def run_in_subprocess(method: str, phase: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--method", method, "--phase", phase, *_size_args(args)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for k in MALLOC_ENV:
        env.pop(k, None)
    if phase != "time":
        env.update(MALLOC_ENV)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"{phase}: timed out after {args.timeout} s"}
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
    return {"method": method, "error": f"{phase}: exit {res.returncode}: " + " | ".join(tail)}


def run_method(method: str, args) -> dict:
    """Full runs: timing (default allocator) and memory (fixed mmap threshold) in two fresh
    processes; ``--quick``: one process does both."""
    if args.quick:
        return run_in_subprocess(method, "both", args)
    timing = run_in_subprocess(method, "time", args)
    memory = run_in_subprocess(method, "memory", args)
    if "error" in timing or "error" in memory:
        return {"method": method, "error": "; ".join(r["error"] for r in (timing, memory) if "error" in r)}
    return {**timing, **{k: v for k, v in memory.items() if k not in ("phase", "seconds", "times")},
            "phase": "time+memory"}


def make_records(results: list[dict], dataset: str, seed: int) -> list[dict]:
    recs = []
    by = {r["method"]: r for r in results}
    base = by.get(BASELINE, {})
    for r in results:
        m = r["method"]
        recs.append(record(dataset, m, "seconds", r.get("seconds"), seed))
        recs.append(record(dataset, m, "peak_mb", r.get("peak_mb"), seed))
        speed = mem = None
        if "error" not in r and "error" not in base and base:
            speed = base["seconds"] / r["seconds"]
            mem = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else None
        recs.append(record(dataset, m, "speedup_vs_pyg", speed, seed))
        recs.append(record(dataset, m, "memory_ratio_vs_pyg", mem, seed))
        recs.append(record(dataset, m, "repeats", len(r["times"]) if "times" in r else None, seed))
        recs.append(record(dataset, m, "threads", r.get("threads"), seed))
    return recs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test); writes only with --out")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results for full runs)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)  # child: run one method, print JSON
    p.add_argument("--phase", default="both", choices=("time", "memory", "both"), help=argparse.SUPPRESS)
    for k in ("cells", "genes", "edges", "heads", "hidden", "warmup", "repeats"):
        p.add_argument(f"--{k}", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop timing a method after this long once it has 3 repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-method subprocess timeout, s")
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    if args.method is not None:  # ---- child
        print(RESULT_TAG + json.dumps(run_child(args)), flush=True)
        return 0

    methods = chosen([m.strip() for m in args.methods.split(",") if m.strip()], METHODS, p, "methods")
    out_dir = output_dir(args, p, RESULTS_DIR)

    dataset = f"random_G{args.genes}_E{args.edges}"
    print(f"[kernel] {dataset}, B={args.cells}, H={args.heads}×{args.hidden // args.heads}", file=sys.stderr)
    results = []
    for m in methods:
        t0 = time.perf_counter()
        r = run_method(m, args)
        results.append(r)
        msg = r.get("error") or f"{r['seconds']:.4f} s, {r['peak_mb']:.1f} MB, {len(r['times'])} repeats"
        print(f"[kernel] {m:<24} {msg}  ({time.perf_counter() - t0:.1f} s wall)", file=sys.stderr)

    records = make_records(results, dataset, args.seed)
    ok = [r for r in results if "error" not in r]
    first = ok[0] if ok else {}
    extra = {
        "torch": first.get("torch"),
        "torch_geometric": first.get("torch_geometric"),
        "threads": first.get("threads"),
        "config": {"cells": args.cells, "genes": args.genes, "edges": args.edges, "heads": args.heads,
                   "head_dim": args.hidden // args.heads, "hidden": args.hidden, "seed": args.seed,
                   "warmup": args.warmup, "repeats": args.repeats, "max_seconds": args.max_seconds,
                   "loss": "out.square().mean()", "input_requires_grad": True},
        "memory_method": (f"{first.get('memory_method')}, own process per method, glibc env "
                          f"{' '.join(f'{k}={v}' for k, v in first.get('malloc_env', {}).items())}"
                          if first else None),
        "raw_times_s": {r["method"]: [round(t, 6) for t in r["times"]] for r in ok},
        "errors": {r["method"]: r["error"] for r in results if "error" in r},
        "notes": [
            "seconds: median wall time of one forward + backward of out.square().mean() "
            "(input requires grad), after warm-up; raw_times_s lists every timed repeat.",
            "peak_mb: peak RSS during measured forward + backward steps (after one warm-up step) minus "
            "the RSS taken after imports and a tiny (G=16) run of the same method, before building "
            "graph, inputs and layer; so it includes "
            "inputs, parameters, graph/index buffers and the step's activations and gradients (MiB). "
            "Each method's memory is measured in its own fresh process with a fixed glibc mmap "
            "threshold, so RSS follows live tensors; timings come from a separate fresh process "
            "with the default allocator.",
            "speedup_vs_pyg = pyg_batch seconds / method seconds (higher is faster); "
            "memory_ratio_vs_pyg = method peak_mb / pyg_batch peak_mb (lower is leaner).",
            "pyg_batch = TransformerConv on a Batch of B replicated graphs (per-cell replication); "
            "dense_attention = q/k/v/out linears + scaled_dot_product_attention with the edge mask "
            "(genes without in-edges attend to themselves there).",
            "Timings come from a shared CPU; treat differences below ~20 % as noise.",
        ],
    }
    if not extra["errors"]:
        del extra["errors"]
    command = command_string([str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])
    if out_dir is None:
        print(f"command: {command}\n")
        print(records_to_markdown(records))
    else:
        paths = write_results(NAME, records, command, extra=extra, out_dir=out_dir)
        print(records_to_markdown(records))
        print("[kernel] wrote " + ", ".join(_display(p_) for p_ in paths), file=sys.stderr)
    return 1 if len(ok) < len(results) else 0


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(BENCH_DIR.parent).as_posix()
    except ValueError:
        return path.name


if __name__ == "__main__":
    sys.exit(main())
