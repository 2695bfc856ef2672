"""CellFlow (``cellflow-tools``, JAX) on the Kang protocol of ``benchmarks/perturbation.py``, in its own venv.

    OMP_NUM_THREADS=1 benchmarks/peers/.venvs/cellflow/bin/python benchmarks/peers/run_cellflow.py [--out DIR]

Set-up as in CellFlow's tutorials for a perturbation seen in other contexts (the PBMC-cytokine
tutorial predicts a cytokine for a donor from the other donors; here the context is the cell
type): log1p CP10k, ``cellflow.preprocessing.centered_pca`` (50 PCs, fitted on the training
cells), ``CellFlow(adata, solver="otfm")``, ``prepare_data(sample_rep="X_pca",
control_key="is_control", perturbation_covariates={"stimulus": ("condition",)},
sample_covariates=["cell_type"], split_covariates=["cell_type"])`` — control cells of each cell
type are the source of that type's stimulated cells (T's control cells have no target in
training, which CellFlow refuses, so they enter the PCs and T's representation only) — then
``predict`` from T's control cells
(projected on the training PCs) with covariates ``condition="stim", cell_type=T``, and the
prediction mapped back to genes with the PCs (``reconstruct_pca``).

Representations (``perturbation_covariate_reps`` / ``sample_covariate_reps``): the stimulus is
a one-dimensional indicator; a cell type is represented by the mean PC coordinates of its
control cells (CellFlow needs a vector per context to generalise to an unseen one; the
tutorials use external embeddings such as cell-line or donor embeddings, none of which exist
for these cell types, so the control-state centroid stands in — it is computed from control
cells only, which the protocol provides for T).

Model and training: CellFlow's documented defaults (``prepare_model()``: attention-token
pooling, OT-matched flow matching with ``match_linear``, Adam 5e-5 with 20-step gradient
accumulation) except the cap below, which 2 CPU cores need: the defaults are 3×2048 time/x
encoders and a 3×4096 decoder (≈ 60 M parameters, GPU-sized) trained for tens of thousands of
iterations at batch 1024. The cap (``--width``, ``--iterations``, ``--batch-size``) is written
to ``run_info.json``.
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import warnings  # noqa: E402

import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

METHOD = "cellflow"
N_PCS = 50
DEFAULT_WIDTH = 2048  # prepare_model's defaults: (2048,)*3 encoders, (4096,)*3 decoder


def fit_predict(train, query, T: str, args):
    """Train CellFlow on ``train`` (log1p CP10k in X); return predicted log1p CP10k for ``query``."""
    import cellflow.preprocessing as cfpp
    import optax
    from cellflow.model import CellFlow

    train = train.copy()
    train.obs["is_control"] = (train.obs["condition"].astype(str) == C.CTRL).to_numpy()
    train.obs["condition"] = pd.Categorical(train.obs["condition"].astype(str))
    train.obs["cell_type"] = pd.Categorical(train.obs["cell_type"].astype(str))
    cfpp.centered_pca(train, n_comps=N_PCS, keep_centered_data=False)
    pcs = np.asarray(train.obsm["X_pca"])
    ctrl = train.obs["is_control"].to_numpy()
    ct = train.obs["cell_type"].astype(str).to_numpy()
    cell_type_emb = {c: pcs[ctrl & (ct == c)].mean(0).astype(np.float32) for c in sorted(set(ct[ctrl]))}
    reps = {"stimulus_rep": {C.STIM: np.array([1.0], dtype=np.float32), C.CTRL: np.array([0.0], dtype=np.float32)},
            "cell_type_rep": cell_type_emb}
    train.uns.update(reps)

    # CellFlow refuses a source population without a target: T's control cells (T has no stimulated
    # cells in training) shape the PCs and T's representation but are not a training source.
    fit = train[ct != T].copy()
    cf = CellFlow(fit, solver="otfm")
    cf.prepare_data(sample_rep="X_pca", control_key="is_control",
                    perturbation_covariates={"stimulus": ("condition",)},
                    perturbation_covariate_reps={"stimulus": "stimulus_rep"},
                    sample_covariates=["cell_type"], sample_covariate_reps={"cell_type": "cell_type_rep"},
                    split_covariates=["cell_type"])
    w = args.width
    model_kw = {}
    if w != DEFAULT_WIDTH:
        model_kw = {"time_encoder_dims": (w, w, w), "hidden_dims": (w, w, w), "decoder_dims": (2 * w, 2 * w, 2 * w),
                    "condition_embedding_dim": min(256, w)}
    if args.accumulate != 20 or args.lr != 5e-5:
        model_kw["optimizer"] = optax.MultiSteps(optax.adam(args.lr), args.accumulate)
    cf.prepare_model(seed=args.seed, **model_kw)
    cf.train(num_iterations=args.iterations, batch_size=args.batch_size, valid_freq=args.iterations + 1)

    q = query.copy()
    q.obs["is_control"] = True
    q.obs["condition"] = pd.Categorical([C.CTRL] * q.n_obs, categories=train.obs["condition"].cat.categories)
    q.obs["cell_type"] = pd.Categorical([T] * q.n_obs, categories=train.obs["cell_type"].cat.categories)
    cfpp.project_pca(q, ref_adata=train)
    q.uns.update(reps)
    cov = pd.DataFrame({"condition": pd.Categorical([C.STIM], categories=train.obs["condition"].cat.categories),
                        "cell_type": pd.Categorical([T], categories=train.obs["cell_type"].cat.categories),
                        "is_control": [False], "condition_id": [f"{T}_stim"]})
    preds = cf.predict(q, covariate_data=cov, sample_rep="X_pca", condition_id_key="condition_id")
    pred_pcs = np.asarray(preds[f"{T}_stim"], dtype=np.float64)
    if pred_pcs.shape[0] != q.n_obs:
        raise RuntimeError(f"CellFlow returned {pred_pcs.shape[0]} cells for {q.n_obs} control cells")
    X = pred_pcs @ np.asarray(train.varm["PCs"], dtype=np.float64).T + np.asarray(train.varm["X_mean"]).reshape(1, -1)
    return X


def run_kang(args):
    a = C.load_kang()
    logx = C.log1p_cp10k(a.layers["counts"]).astype(np.float32)
    cap = (f"network width {args.width} (CellFlow default 2048; decoder 2×width), {args.iterations} iterations "
           f"at batch {args.batch_size} (default 1024), Adam {args.lr:g} with {args.accumulate}-step gradient "
           f"accumulation (default 20) — sized for 2 CPU cores")
    for T, held, is_ctrl in C.kang_todo(a, args, METHOD):
        train = a[~held].copy()
        train.X = logx[~held]
        query = a[is_ctrl].copy()
        query.X = logx[is_ctrl]
        for x in (train, query):
            for layer in list(x.layers):
                del x.layers[layer]
        with C.Timer() as t:
            X = fit_predict(train, query, T, args)
        C.write_pred(args.out, METHOD, T, X, a.obs[is_ctrl], a.var_names)
        C.update_run_info(args.out, METHOD, {
            "dataset": "kang2018", "versions": C.versions("cellflow-tools", "jax", "flax", "ott-jax", "anndata"),
            "settings": {"solver": "otfm", "n_pcs": N_PCS, "width": args.width, "iterations": args.iterations,
                         "batch_size": args.batch_size, "lr": args.lr, "accumulate": args.accumulate,
                         "seed": args.seed, "cell_type_rep": "mean PC coordinates of the type's control cells",
                         "stimulus_rep": "1-d indicator"},
            "cap": cap,
            "input": "T's control cells projected on the training PCs; prediction reconstructed with the PCs",
            "groups": {T: {"seconds": round(t.seconds, 1)}}})
        print(f"{METHOD} kang2018 {T}: {t.seconds:.0f}s", flush=True)


def main(argv=None):
    ap = C.base_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=256, help="encoder width (decoder 2×); CellFlow default 2048")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256, help="CellFlow default 1024")
    ap.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (CellFlow default 5e-5)")
    ap.add_argument("--accumulate", type=int, default=1,
                    help="gradient accumulation steps (CellFlow default 20: with a few thousand iterations that "
                         "leaves ~100 optimiser steps)")
    args = ap.parse_args(argv)
    if args.dataset != "kang2018":
        raise SystemExit("run_cellflow.py: only kang2018 for now")
    warnings.filterwarnings("ignore")
    C.limit_threads(1)
    run_kang(args)


if __name__ == "__main__":
    main()
