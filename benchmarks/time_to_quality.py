#!/usr/bin/env python
"""Time to quality on Kang held-out cell types (issue 33): how long each method takes to reach its
score, grndiff and the peers back to back on the same machine.

For each held-out cell type T in turn, every method runs in a fresh process with one thread
(``OMP_NUM_THREADS=1``), learns from every cell but T's stimulated ones and predicts those from T's
control cells — the protocol of ``benchmarks/perturbation.py``:

``grndiff_transport``
    ``GRNDiff`` with the package defaults (prior ``collectri``, modules ``hallmark``, source
    ``auto`` = the shifted control), untrained: ``predict(flow=False)``, the source's estimate.
``grndiff``
    The same model trained ``--steps`` steps (perturbation.py's Kang budget), ``predict()`` as a
    user calls it: the validation gate's share of the flow (the gate's training split and its
    validation predictions are part of the time).
``scgen``, ``cpa``, ``cellflow``
    ``benchmarks/peers/run_<peer>.py`` in its own environment (``benchmarks/peers/setup.sh``) with
    the settings of ``perturbation_peers.md`` (CPA capped at ``--cpa-minutes``).

Per (method, T): ``fit_seconds`` (the method's own clock around building, training and predicting;
a peer's ``run_info.json``), ``wall_seconds`` and ``cpu_seconds`` of the whole process (interpreter,
imports and data loading included), ``pearson_delta_top20`` and ``energy_distance`` (the scorer of
perturbation.py, applied here to every method's prediction file). Group ``all`` = the mean over
the types run (seconds: per type). Methods of one type run one after another, so they share the
machine's load; read seconds as ratios within one run.

::

    python benchmarks/time_to_quality.py                     # → benchmarks/results/time_to_quality.{json,md}
    python benchmarks/time_to_quality.py --quick --peers ''  # CI smoke run: grndiff only, 200 genes
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _protocol as proto
import numpy as np
from _results import command_string, record, write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = ("scgen", "cpa", "cellflow")
GRNDIFF = ("grndiff_transport", "grndiff")
NAME = "time_to_quality"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(name))


# ------------------------------------------------------------------------------ grndiff worker (a child)
def worker(args) -> None:
    """Fit and predict one held-out type in this process; write the prediction and its seconds."""
    import torch
    torch.set_num_threads(1)
    from perturbation import _model, kang_data
    proto.quiet()
    t0 = time.perf_counter()
    adata = kang_data(args.quick)
    ct, cond = adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["condition"].astype(str).to_numpy()
    held = (ct == args.group) & (cond == "stim")
    is_ctrl = (ct == args.group) & (cond == "ctrl")
    t_fit = time.perf_counter()
    model = _model(adata[~held].copy(), "auto", args.seed, {})
    if args.worker == "grndiff":
        model.train(max_steps=args.steps, max_epochs=10_000, batch_size=64, val_fraction=0.02, progress_bar=False)
        pred = model.predict(adata[is_ctrl].copy(), {"condition": "stim"}, n_steps=args.n_steps, clip=False)
    else:
        pred = model.predict(adata[is_ctrl].copy(), {"condition": "stim"}, n_steps=1, clip=False, flow=False)
    fit_s = time.perf_counter() - t_fit
    out = Path(args.out)
    pred.write_h5ad(out / f"pred_{args.worker}_{_safe(args.group)}.h5ad")
    info = {"seconds": fit_s, "load_seconds": t_fit - t0,
            "gate_alpha": (model.gate_ or {}).get("alpha") if args.worker == "grndiff" else None}
    (out / f"info_{args.worker}_{_safe(args.group)}.json").write_text(json.dumps(info))


# ------------------------------------------------------------------------------ parent
def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _env() -> dict:
    env = {**os.environ, **{k: "1" for k in THREAD_VARS}}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _command(method: str, T: str, args, out: Path) -> list[str]:
    if method in GRNDIFF:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--group", T, "--out", str(out),
               "--seed", str(args.seed), "--steps", str(args.steps), "--n-steps", str(args.n_steps)]
        return cmd + (["--quick"] if args.quick else [])
    py = Path(args.venvs) / method / "bin" / "python"
    cmd = [str(py), str(HERE / "peers" / f"run_{method}.py"), "--out", str(out), "--seed", str(args.seed),
           "--groups", T]
    return cmd + (["--max-minutes", str(args.cpa_minutes)] if method == "cpa" else [])


def _fit_seconds(method: str, T: str, out: Path) -> tuple[float | None, float | None]:
    """(fit seconds, gate alpha) the method recorded for T."""
    if method in GRNDIFF:
        info = json.loads((out / f"info_{method}_{_safe(T)}.json").read_text())
        return info["seconds"], info.get("gate_alpha")
    info = json.loads((out / "run_info.json").read_text())
    return info[method]["groups"][T]["seconds"], None


def run_method(method: str, T: str, args, out: Path, data: dict, records: list) -> str:
    cpu0, t0 = _child_cpu(), time.perf_counter()
    res = subprocess.run(_command(method, T, args, out), env=_env(), cwd=str(ROOT), capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if res.returncode != 0:
        tail = (res.stdout + res.stderr)[-3000:]
        raise RuntimeError(f"{method} on {T!r} failed (exit {res.returncode}):\n{tail}")
    import anndata as ad
    pred = proto.dense(ad.read_h5ad(out / f"pred_{method}_{_safe(T)}.h5ad").X)
    X, held, is_ctrl, pca = data["X"], data["held"][T], data["ctrl"][T], data["pca"][T]
    m = proto.score_perturbation(records, "kang2018", method, args.seed, T, pred, X[held], X[is_ctrl], pca)
    fit_s, alpha = _fit_seconds(method, T, out)
    records += [record("kang2018", method, "fit_seconds", fit_s, seed=args.seed, group=T),
                record("kang2018", method, "wall_seconds", wall, seed=args.seed, group=T),
                record("kang2018", method, "cpu_seconds", cpu, seed=args.seed, group=T)]
    if alpha is not None:
        records.append(record("kang2018", method, "gate_alpha", alpha, seed=args.seed, group=T))
    return (f"{method:<18s} {T:<18s} ρΔ20 {m['pearson_delta_top20']:.3f}  fit {fit_s:6.0f}s  "
            f"wall {wall:6.0f}s  cpu {cpu:6.0f}s")


def _data(args):
    """(log1p expression, cell types, conditions) of the Kang data the workers load."""
    from perturbation import kang_data
    adata = kang_data(args.quick)
    return (proto.log_expression(adata), adata.obs["cell_type"].astype(str).to_numpy(),
            adata.obs["condition"].astype(str).to_numpy())


def _splits(X, ct, cond, types) -> dict:
    held = {T: (ct == T) & (cond == "stim") for T in types}
    return {"X": X, "held": held, "ctrl": {T: (ct == T) & (cond == "ctrl") for T in types},
            "pca": {T: proto.reference_pca(X[~held[T]]) for T in types}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run: 200 genes, one type, 20 steps, no peers")
    ap.add_argument("--types", default=None, help="comma-separated Kang cell types (default: all 5)")
    ap.add_argument("--methods", default=",".join(GRNDIFF), help=f"grndiff rows, of {GRNDIFF}")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {PEERS} ('' for none)")
    ap.add_argument("--venvs", default=str(HERE / "peers" / ".venvs"), help="the peers' environments")
    ap.add_argument("--cpa-minutes", type=float, default=8.0, help="CPA's training cap (perturbation_peers.md: 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400, help="grndiff's training steps (perturbation.py: 400)")
    ap.add_argument("--n-steps", type=int, default=10, help="Euler steps of prediction (perturbation.py: 10)")
    ap.add_argument("--name", default=NAME)
    ap.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results; --quick: a temp dir)")
    ap.add_argument("--worker", choices=GRNDIFF, help=argparse.SUPPRESS)
    ap.add_argument("--group", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [m for m in methods if m not in GRNDIFF] + [p for p in peers if p not in PEERS]
    if bad:
        raise SystemExit(f"unknown methods {bad}; grndiff rows {GRNDIFF}, peers {PEERS}")
    if args.quick and peers:
        raise SystemExit("--quick runs grndiff on 200 genes; the peers use every gene: pass --peers ''")
    missing = [p for p in peers if not (Path(args.venvs) / p / "bin" / "python").exists()]
    if missing:
        raise SystemExit(f"no environment for {missing} under {args.venvs}: run benchmarks/peers/setup.sh "
                         "(or leave them out with --peers)")
    if args.quick:
        args.steps = min(args.steps, 20)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    X, ct, cond = _data(args)
    all_types = sorted(set(ct))
    types = [t.strip() for t in args.types.split(",")] if args.types else all_types[: (1 if args.quick else None)]
    unknown = sorted(set(types) - set(all_types))
    if unknown:
        raise SystemExit(f"unknown cell types {unknown}; choose from {all_types}")
    data = _splits(X, ct, cond, types)
    records: list[dict] = []
    failures: list[str] = []
    out_dir = args.out_dir or (tempfile.mkdtemp(prefix="ttq_res_") if args.quick else None)

    def save():
        recs = [dict(r) for r in records]
        for method in methods + peers:
            for metric in ("pearson_delta_top20", "energy_distance", "fit_seconds", "wall_seconds", "cpu_seconds"):
                vals = [r["value"] for r in records if r["method"] == method and r["metric"] == metric
                        and r["value"] is not None]
                if vals:
                    recs.append(record("kang2018", method, metric, float(np.mean(vals)), seed=args.seed, group="all"))
        extra = {"config": {"types": types, "methods": methods, "peers": peers, "seed": args.seed,
                            "steps": args.steps, "n_steps": args.n_steps, "cpa_minutes": args.cpa_minutes,
                            "threads": 1, "quick": args.quick},
                 "load_average_start": list(load0), "load_average_end": list(os.getloadavg()),
                 "wall_seconds": time.perf_counter() - t_start,
                 "notes": ["every method: a fresh process per held-out type, OMP_NUM_THREADS=1; methods of a type "
                           "run back to back (grndiff_transport, grndiff, then the peers), types one after another",
                           "fit_seconds: the method's own clock (grndiff: build + train + predict; peers: their "
                           "fit_predict as run_info.json records it); wall/cpu_seconds: the whole process",
                           "group 'all': mean over the types run; seconds are per type",
                           "grndiff = predict() as a user calls it (the validation gate's flow weight, gate_alpha); "
                           "grndiff_transport = predict(flow=False) of the untrained model",
                           *(f"FAILED: {f}" for f in failures)]}
        return write_results(args.name, recs, command_string(argv), extra=extra, out_dir=out_dir), recs

    with tempfile.TemporaryDirectory(prefix="ttq_") as tmp:
        for T in types:
            for method in methods + peers:
                try:
                    line = run_method(method, T, args, Path(tmp), data, records)
                except RuntimeError as e:  # one failed peer does not end the run; the table says so
                    failures.append(f"{method} on {T}: " + str(e).splitlines()[0])
                    line = str(e)
                print(f"[{time.perf_counter() - t_start:5.0f}s] {line}", flush=True)
                save()
    paths, recs = save()
    print(f"wrote {paths[1]}")
    for r in recs:
        if r["group"] == "all" and r["metric"] in ("pearson_delta_top20", "wall_seconds"):
            print(f"  {r['method']:<18s} {r['metric']:<20s} {r['value']:.3f}")


if __name__ == "__main__":
    main()
