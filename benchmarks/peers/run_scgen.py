"""scGen (``scgen``) on the Kang protocol of ``benchmarks/perturbation.py``, in its own venv.

    OMP_NUM_THREADS=1 benchmarks/peers/.venvs/scgen/bin/python benchmarks/peers/run_scgen.py [--out DIR]

Settings are those of scGen's perturbation-prediction tutorial: log-normalised expression in ``X``
(here log1p CP10k of the counts, the scorer's space), ``SCGEN.setup_anndata(adata,
batch_key="condition", labels_key="cell_type")``, default model, ``train(max_epochs=100,
batch_size=32, early_stopping=True, early_stopping_patience=25)``, then
``predict(ctrl_key="ctrl", stim_key="stim", celltype_to_predict=T)`` (latent arithmetic: the
mean latent stim − ctrl difference of the training cells, balanced over cell types, added to the
latent codes of T's control cells and decoded).

The model is trained on every cell but T's stimulated ones. With ``celltype_to_predict=T``
scGen's ``predict`` transports the control cells of T found in its own training AnnData — exactly
T's control cells, the protocol's input; the returned cells are checked to be those (same
obs_names, re-ordered to the data's order if needed) and are written with their obs. The decoder
output is already in log1p CP10k. Seeds: ``scvi.settings.seed`` and numpy's global RNG (scGen's
balancing and the sampling of the cells it averages) are set to ``--seed``.
"""
from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_k, "1")


import _common as C  # noqa: E402
import numpy as np  # noqa: E402

METHOD = "scgen"
TRAIN = {"batch_size": 32, "early_stopping": True, "early_stopping_patience": 25}


def fit_predict(train, T: str, max_epochs: int, seed: int):
    """Train scGen on ``train`` (log1p CP10k in X); return the AnnData predicted for T's ctrl cells."""
    import scgen
    import scvi
    scvi.settings.seed = seed
    np.random.seed(seed)
    scgen.SCGEN.setup_anndata(train, batch_key="condition", labels_key="cell_type")
    model = scgen.SCGEN(train)
    model.train(max_epochs=max_epochs, **TRAIN)
    epochs = len(model.history["elbo_train"]) if "elbo_train" in model.history else None
    np.random.seed(seed)
    pred, _delta = model.predict(ctrl_key=C.CTRL, stim_key=C.STIM, celltype_to_predict=T)
    return pred, epochs


def run_kang(args):
    a = C.load_kang()
    logx = C.log1p_cp10k(a.layers["counts"]).astype(np.float32)
    for T, held, is_ctrl in C.kang_todo(a, args, METHOD):
        train = a[~held].copy()
        train.X = logx[~held]
        del train.layers["counts"], train.layers["logcounts"]
        with C.Timer() as t:
            pred, epochs = fit_predict(train, T, args.max_epochs, args.seed)
        want = list(a.obs_names[is_ctrl])
        if sorted(map(str, pred.obs_names)) != sorted(want):
            raise RuntimeError(f"scGen predicted {pred.n_obs} cells that are not T's {len(want)} control cells")
        pred = pred[want]
        C.write_pred(args.out, METHOD, T, C.dense(pred.X), a.obs[is_ctrl], a.var_names)
        C.update_run_info(args.out, METHOD, {
            "dataset": "kang2018", "versions": C.versions("scgen", "scvi-tools", "torch", "anndata"),
            "settings": {"train": TRAIN, "max_epochs": args.max_epochs, "seed": args.seed,
                         "setup_anndata": {"batch_key": "condition", "labels_key": "cell_type"}},
            "cap": None if args.max_epochs >= 100 else f"max_epochs={args.max_epochs} (tutorial: 100)",
            "input": "predict(ctrl_key='ctrl', stim_key='stim', celltype_to_predict=T): T's control cells",
            "groups": {T: {"seconds": round(t.seconds, 1), "epochs": epochs}}})
        print(f"{METHOD} kang2018 {T}: {t.seconds:.0f}s, {epochs} epochs", flush=True)


def _options(ap) -> None:
    ap.add_argument("--max-epochs", type=int, default=100, help="tutorial: 100")


def main(argv=None):
    C.kang_main(__doc__, "run_scgen.py", "scGen transfers a condition across cell types; it has no notion of an "
                "unseen knock-out", run_kang, _options, argv)


if __name__ == "__main__":
    main()
