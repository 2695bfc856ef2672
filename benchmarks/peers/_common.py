"""What every peer script shares: the data, the held-out splits and the prediction files.

The peer environments (``benchmarks/peers/.venvs/<name>``) do not have grndiff installed, so this
module reads the data files shipped in ``grndiff/_data/`` directly with anndata and repeats the
few lines of ``grndiff.datasets`` that the protocol depends on (obs columns; counts in ``X``).
It needs only numpy, pandas, scipy and anndata, which every peer environment has.

The protocol is the one of ``benchmarks/perturbation.py``:

- **kang2018** — for each of the 5 cell types T, T's stimulated cells are held out; a model is
  trained on every other cell and predicts T's stimulated cells from T's control cells.
- **papalexi2021** — control + the knock-outs of measured genes; 5 seeded folds of held-out
  knock-outs (``papalexi_folds``), predicted from 300 control cells.

Each prediction is written as ``pred_<method>_<group>.h5ad`` (``group`` with non-alphanumerics
replaced by ``_``) with ``X`` = predicted expression in log1p CP10k, ``var_names`` = the data's
genes and ``obs`` = the obs of the control cells that were transported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "grndiff" / "_data"
KANG_FILE = "kang2018_pbmc_ifnb_1556.h5ad"
PAPALEXI_FILE = "papalexi2021_thp1_crisprko_299genes.h5ad"
DEFAULT_OUT = HERE / "_out"
CTRL, STIM = "ctrl", "stim"


def limit_threads(n: int = 1) -> None:
    """One BLAS/OpenMP thread (call before numpy-heavy work; the scripts also set the env vars first)."""
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ.setdefault(k, str(n))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:
        pass


def _category(values) -> pd.Categorical:
    return pd.Categorical(pd.Series(values).astype(str))


def load_kang():
    """kang2018 as ``grndiff.datasets.kang2018()`` returns it: counts (float32 CSR) in X and
    ``layers["counts"]``; ``obs`` gains ``cell_type``, ``condition`` (ctrl/stim) and ``donor``."""
    import anndata as ad
    a = ad.read_h5ad(DATA / KANG_FILE)
    a.X = a.X.astype(np.float32)
    a.layers["counts"] = a.X.copy()
    a.obs["cell_type"] = _category(a.obs["cluster_id"])
    a.obs["condition"] = _category(a.obs["group_id"])
    a.obs["donor"] = _category(a.obs["sample_id"].astype(str).str.replace(r"^(ctrl|stim)", "", regex=True))
    return a


def load_papalexi():
    """papalexi2021 restricted as ``benchmarks/perturbation.py::papalexi_data`` does: assigned cells,
    control + knock-outs whose target gene is measured; counts in X and ``layers["counts"]``."""
    import anndata as ad
    a = ad.read_h5ad(DATA / PAPALEXI_FILE)
    lab = a.obs["perturbation"].astype(str)
    a = a[(lab != "unassigned").to_numpy()].copy()
    a.X = sp.csr_matrix(a.layers["counts"]).astype(np.float32)
    a.layers["counts"] = a.X.copy()
    lab = a.obs["perturbation"].astype(str)
    keep = (lab == "control") | lab.isin(set(a.var_names))
    a = a[keep.to_numpy()].copy()
    a.obs["perturbation"] = _category(a.obs["perturbation"])
    return a


def papalexi_folds(kos, n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """The seeded folds of ``benchmarks/perturbation.py::papalexi_folds`` (same rule, same result)."""
    order = np.random.default_rng(seed).permutation(sorted(kos))
    return [sorted(order[i::n_folds].tolist()) for i in range(n_folds)]


def papalexi_control_subset(lab: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of the control cells transported in fold ``seed`` (as ``_control_subset`` there)."""
    rows = np.flatnonzero(lab == "control")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, min(n, rows.size), replace=False))


def log1p_cp10k(X, target_sum: float = 1e4) -> np.ndarray:
    """(N, G) float64 dense log1p of counts normalised to ``target_sum`` per cell (cells without
    counts stay 0) — the space every score uses (``grndiff.data.log1p_cp10k``)."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = np.asarray(X, dtype=np.float64)
    total = X.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, total, out=np.zeros_like(total), where=total > 0)
    return np.log1p(X * scale)


def dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


def safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(name))


def kang_masks(adata, T: str):
    """(held, is_ctrl): T's stimulated cells (held out) and T's control cells (the input)."""
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    cond = adata.obs["condition"].astype(str).to_numpy()
    return (ct == T) & (cond == STIM), (ct == T) & (cond == CTRL)


def kang_types(adata) -> list[str]:
    return sorted(set(adata.obs["cell_type"].astype(str)))


def pred_path(out_dir, method: str, group: str) -> Path:
    return Path(out_dir) / f"pred_{method}_{safe(group)}.h5ad"


def write_pred(out_dir, method: str, group: str, X, obs: pd.DataFrame, var_names) -> Path:
    """Write one prediction (log1p CP10k, float32) with the control cells' obs."""
    import anndata as ad
    X = np.asarray(dense(X), dtype=np.float32)
    if X.shape != (len(obs), len(var_names)):
        raise ValueError(f"prediction has shape {X.shape}, expected {(len(obs), len(var_names))}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{method}/{group}: prediction has non-finite values")
    obs = obs.copy()
    for c in obs.columns:  # h5ad-friendly obs
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str)
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index([str(g) for g in var_names])))
    path = pred_path(out_dir, method, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path


def update_run_info(out_dir, method: str, info: dict) -> None:
    """Merge ``info`` into ``run_info.json[method]`` next to the predictions (settings, caps, times)."""
    path = Path(out_dir) / "run_info.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    entry = data.get(method, {})
    groups = {**entry.get("groups", {}), **info.pop("groups", {})}
    entry.update(info)
    entry["groups"] = groups
    data[method] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def base_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="folder of the prediction files (default: benchmarks/peers/_out)")
    ap.add_argument("--dataset", default="kang2018", choices=["kang2018", "papalexi2021"])
    ap.add_argument("--groups", default=None,
                    help="comma-separated subset: Kang cell types (e.g. 'B cells') or Papalexi fold indices")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-existing", action="store_true", help="skip groups whose prediction file exists")
    return ap


def selected(all_groups, arg):
    if not arg:
        return list(all_groups)
    want = [g.strip() for g in arg.split(",") if g.strip()]
    bad = [g for g in want if g not in set(map(str, all_groups))]
    if bad:
        raise SystemExit(f"unknown groups {bad}; choose from {list(all_groups)}")
    return [g for g in all_groups if str(g) in want]


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def kang_todo(adata, args, method: str):
    """Yield ``(T, held, is_ctrl)`` for every Kang cell type ``--groups`` selects — ``held`` (N,) the
    cells no model may see (T's stimulated ones), ``is_ctrl`` (N,) T's control cells — skipping a type
    whose prediction file exists under ``--skip-existing``."""
    for T in selected(kang_types(adata), args.groups):
        if args.skip_existing and pred_path(args.out, method, T).exists():
            print(f"skip {T}: exists", flush=True)
            continue
        held, is_ctrl = kang_masks(adata, T)
        yield T, held, is_ctrl


def kang_main(doc: str, script: str, why: str, run, options=None, argv=None) -> None:
    """A Kang-only peer's ``main``: the common flags (+ ``options(parser)``), :func:`kang_only`, ``run(args)``."""
    ap = base_parser(doc.split("\n\n")[0])
    if options is not None:
        options(ap)
    args = ap.parse_args(argv)
    kang_only(args, script, why)
    run(args)


def kang_only(args, script: str, why: str) -> None:
    """Stop with a one-line reason unless ``--dataset kang2018``; then one torch thread, quiet."""
    if args.dataset != "kang2018":
        raise SystemExit(f"{script}: only kang2018 ({why})")
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    limit_threads(1)
