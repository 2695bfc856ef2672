#!/usr/bin/env python
"""Generation benchmark and tokenization ablation (issue 6): which tokenization of expression works?

One run trains every generator on the training cells of a data set (80/20 split stratified by
group, :func:`grndiff.data.split_indices`), generates per group as many cells as are held out,
and scores them against the held-out real cells with :func:`grndiff.metrics.evaluate`.

Data sets
---------
``kang2018``        1,556 PBMCs × 1,267 genes; groups = cell_type × condition (ctrl/stim).
``kang2018_ctrl``   8,684 control PBMCs × 2,511 genes (Ensembl var_names, symbols in
                    ``var["feature"]``); groups = cell_type × donor.

Methods (rows)
--------------
``real_vs_real``       training cells vs held-out cells: the resolution of each metric
``gaussian``           per-group Gaussian in the 30-PC space of the training cells, decoded to genes,
                       NOT clipped at 0 (``GaussianPCA(clip=False)``; the issue's reference 0.12)
``scvi``               scVI (scvi-tools), the conditions as categorical covariates; cells drawn from the
                       prior z ~ N(0, I) with a library size drawn from the group's training cells,
                       decoded to negative-binomial counts, then CP10k + log1p
``mlp``                ``backbone="mlp"`` (hidden 512, depth 3) on the whole gene vector
``pca_flow``           the same MLP flow (``grndiff.nn.MLPVelocity`` + ``grndiff.flow``, same optimiser,
                       schedule and EMA) on the 50 standardised PC scores of the training cells, decoded
                       with the PCA (not clipped)
``latent_nb``          a latent flow with a count decoder (``grndiff.train.LatentNBFlow``): an NB
                       autoencoder (32-wide state, 2,000 steps), the ``pca_flow`` MLP flow in its state,
                       NB counts at a library size drawn from the group's training cells, CP10k + log1p
``gene_tokens``        every gene a token, full attention (memory O(B·H·G²)); smaller batch
``modules_only``       Hallmark tokens, no gene graph
``latent_tokens``      64 learned latent tokens reading the genes by cross-attention (Perceiver IO), no graph
``ssm``                a state-space long convolution over the genes in CollecTRI's BFS order, no modules
``grndiff_cross``      ``grndiff`` with cross-attention conditioning (condition tokens) instead of adaLN
``grndiff``            CollecTRI graph + Hallmark tokens (+ global cell token), the default model
``grndiff_noise``      ``grndiff`` with the N(0, I) source instead of the fitted per-group Gaussian
``grndiff_nomodules``  CollecTRI graph only
``grndiff_learned``    CollecTRI graph + 32 learned soft modules instead of Hallmark
``grndiff_nocell``     ``grndiff`` without the global cell token (``cell_token=False``)
``grndiff_shuffled``   degree-preserving shuffle of CollecTRI (``priors.shuffle_edges``) + Hallmark
``grndiff_random``     uniform random graph with as many edges (``priors.random_graph``) + Hallmark
``gaussian_source``    the GRNDiff source alone, untrained (v ≡ 0): per-group Gaussian on k = 100 axes
                       of the training cells in log1p units, plus residual noise off those axes
``*_independent``      the row with ``source_coupling="independent"`` (x₀ drawn afresh from the source)
``*_scaled``           the row with ``source_space="scaled"`` (the source's axes found in per-gene
                       standardised units)

Every GRNDiff row (``mlp``, ``gene_tokens``, ``modules_only``, ``grndiff*``) uses the package
defaults unless its name says otherwise: the Gaussian source with axes in log1p units and the
low-rank coupling (the network learns each cell's residual off the source's k axes).

Both null graphs are built from CollecTRI restricted to edges whose two ends are measured genes,
and the random graph is drawn over the measured genes, so every graph has the same number of
edges inside the data set.

Metrics
-------
Per group and ``group="all"`` (unweighted mean over groups): ``energy_distance``, ``mmd_rbf``,
``w2`` (= ``wasserstein2``), ``classifier_auc`` (30-PC space of ALL real cells of the data set,
log1p-normalised; generated cells projected), ``mean_pearson``, ``var_pearson``,
``zero_frac_error``, ``marker_overlap``, ``tf_target_corr`` (CollecTRI pairs, per group: noisy
with ~30 cells per group). ``tf_target_corr_pooled`` (group ``"all"`` only) is the same TF–target
correlation agreement computed once over all held-out vs all generated cells (``groupby=None``).
``train_seconds`` (group ``"all"``) is the wall time of training.

    python benchmarks/generation.py                    # full run → benchmarks/results/generation.{json,md}
    python benchmarks/generation.py --quick --out DIR  # CI: krumsiek-sized budgets, < 2 min
    python benchmarks/generation.py --datasets kang2018 --methods grndiff,mlp --steps 600 --out DIR  # pilot

Results are rewritten after every (data set, method, seed), so an interrupted run keeps what it
finished; ``--max-minutes`` starts no new row after that budget (the notes name the rows not run).
Every row runs seed after seed (all rows of seed 0, then seed 1 …), so a cut leaves whole seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from _results import RESULTS_DIR, command_string, record, seed_spread_markdown, write_results

BENCH_DIR = Path(__file__).resolve().parent

NAME = "generation"
SAVE_DIR: Path | None = None  # --save-generated: write every generated AnnData here
CHEAP = ("real_vs_real", "gaussian", "gaussian_source", "gaussian_source_scaled", "mlp", "pca_flow")
METHODS = ("real_vs_real", "gaussian", "gaussian_source", "scvi", "mlp", "pca_flow", "latent_nb", "gene_tokens",
           "modules_only",
           "latent_tokens", "ssm", "grndiff_cross",
           "grndiff", "grndiff_noise", "grndiff_nomodules", "grndiff_learned", "grndiff_nocell", "grndiff_shuffled",
           "grndiff_random",
           # the package's source options one at a time (every other GRNDiff row uses the defaults: Gaussian
           # source with axes in log1p units, low-rank coupling)
           "grndiff_independent", "mlp_independent", "grndiff_scaled", "gaussian_source_scaled")
RENAME = {"wasserstein2": "w2"}
METRIC_ORDER = ("energy_distance", "energy_distance_clip0", "mmd_rbf", "w2", "classifier_auc", "mean_pearson",
                "var_pearson", "zero_frac_error", "marker_overlap", "tf_target_corr", "tf_target_corr_pooled",
                "train_seconds")
DATASETS = {
    "kang2018": dict(loader="kang2018", conditions=["cell_type", "condition"], symbol_key=None),
    "kang2018_ctrl": dict(loader="kang2018_ctrl", conditions=["cell_type", "donor"], symbol_key="feature"),
}


# ============================================================================ data
def load_dataset(name: str, seed: int):
    """Counts AnnData, log1p-normalised copy of all cells, train/test indices, condition keys."""
    from grndiff import datasets
    from grndiff.data import log1p_normalized_copy, split_indices

    spec = DATASETS[name]
    adata = getattr(datasets, spec["loader"])()
    keys = spec["conditions"]
    for k in keys:
        adata.obs[k] = adata.obs[k].astype(str).astype("category")
    adata.obs["group"] = adata.obs[keys].astype(str).agg(" | ".join, axis=1).astype("category")
    train_idx, test_idx = split_indices(adata.obs, val_fraction=0.2, seed=seed, stratify_key="group")
    real_all = log1p_normalized_copy(adata, layer="counts")
    return adata, real_all, np.asarray(train_idx), np.asarray(test_idx), keys, spec["symbol_key"]


def symbol_prior(adata, symbol_key, prior: pd.DataFrame) -> pd.DataFrame:
    """CollecTRI with only the edges whose two ends are measured (by symbol), no self-loops."""
    symbols = set(adata.var[symbol_key].astype(str)) if symbol_key else set(adata.var_names.astype(str))
    keep = prior["source"].isin(symbols) & prior["target"].isin(symbols) & (prior["source"] != prior["target"])
    return prior.loc[keep].reset_index(drop=True)


def prior_in_var_names(adata, symbol_key, prior: pd.DataFrame) -> pd.DataFrame:
    """The TF–target table in ``var_names`` (Ensembl for kang2018_ctrl) for ``tf_target_corr``."""
    if not symbol_key:
        return prior
    first = pd.Series(adata.var_names.astype(str), index=adata.var[symbol_key].astype(str))
    first = first[~first.index.duplicated()]
    out = prior.assign(source=prior["source"].map(first), target=prior["target"].map(first))
    return out.dropna(subset=["source", "target"]).reset_index(drop=True)


def _dense(X):
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def _generated_anndata(X, labels, var, keys):
    import anndata as ad

    obs = pd.DataFrame({"group": np.asarray(labels, dtype=str)})
    parts = obs["group"].str.split(" | ", regex=False)
    for i, k in enumerate(keys):
        obs[k] = parts.str[i]
    obs.index = obs.index.astype(str)
    return ad.AnnData(np.asarray(X, dtype=np.float32), obs=obs, var=var[[]].copy())


# ============================================================================ generators
def _source_options(method):
    """(base method, Gaussian-source options) from a row name: ``*_independent`` trains with
    ``coupling="independent"``, ``*_scaled`` fits the source's axes with ``space="scaled"``;
    every other row uses the package defaults."""
    opts = {}
    if method.endswith("_independent"):
        method, opts["coupling"] = method[: -len("_independent")], "independent"
    if method.endswith("_scaled"):
        method, opts["space"] = method[: -len("_scaled")], "scaled"
    return method, opts


def _train_grndiff(train, method, *, steps, seed, batch_size, lr, ema_decay, prior_sym, quick, prediction=None,
                   source="gaussian", source_comps=100, source_residual=0.5):
    """Build and train one GRNDiff variant; returns the model (see :func:`_source_options` for suffixes)."""
    from grndiff import GRNDiff, priors

    method, opts = _source_options(method)
    small = dict(hidden=16, depth=1, token_depth=1) if quick else {}
    small_seq = dict(hidden=16, depth=1) if quick else {}  # backbones without module-token blocks
    src = ({"name": "gaussian", "k": source_comps, "residual": source_residual, **opts} if source == "gaussian"
           else source)
    base = dict(lr=lr, ema_decay=ema_decay, prediction=prediction or "velocity", source=src)
    kw = {
        "mlp": dict(prior=None, modules=None, backbone="mlp", hidden=128 if quick else 512, depth=3),
        "gene_tokens": dict(prior=None, modules=None, backbone="gene_tokens", **small),
        "modules_only": dict(prior=None, modules="hallmark", backbone="modules_only", **small),
        "latent_tokens": dict(prior=None, modules=None, backbone="latent_tokens", **small_seq),
        "ssm": dict(prior=prior_sym, modules=None, backbone="ssm", **small_seq),
        "grndiff": dict(prior=prior_sym, modules="hallmark", **small),
        "grndiff_noise": dict(prior=prior_sym, modules="hallmark", **small),
        "grndiff_nomodules": dict(prior=prior_sym, modules=None, **small),
        "grndiff_learned": dict(prior=prior_sym, modules=None, n_learned_modules=32, **small),
        "grndiff_nocell": dict(prior=prior_sym, modules="hallmark", cell_token=False, **small),
        "grndiff_cross": dict(prior=prior_sym, modules="hallmark", conditioning="cross_attention", **small),
        "grndiff_shuffled": dict(prior=priors.shuffle_edges(prior_sym, seed=seed), modules="hallmark", **small),
        "grndiff_random": dict(prior=priors.random_graph(prior_sym, seed=seed, genes=sorted(
            set(prior_sym["source"]) | set(prior_sym["target"]) | _measured_symbols(train))),
            modules="hallmark", **small),
    }[method]
    if method == "grndiff_noise":  # the same model from N(0, I): what the source contributes
        base = dict(base, source="noise")
    model = GRNDiff(train, **base, **kw)
    model.train(max_steps=steps, max_epochs=10_000, batch_size=batch_size, val_fraction=0.0, seed=seed,
                progress_bar=False)
    return model


def _measured_symbols(adata) -> set:
    key = adata.uns["_grndiff"].get("symbol_key")
    return set(adata.var[key].astype(str)) if key else set(adata.var_names.astype(str))


def _train_pca_flow(Xtrain, labels_df, *, n_pcs, steps, seed, batch_size, lr, ema_decay, hidden, depth):
    """MLP rectified flow on standardised PC scores; returns a sampler ``f(cond_df, seed) -> (B, G)``."""
    import torch

    from grndiff.metrics import fit_pca
    from grndiff.train import train_vector_flow

    pca = fit_pca(Xtrain, n=n_pcs, seed=seed)
    Z = pca.transform(Xtrain)  # (B, K)
    mu, sd = Z.mean(0), Z.std(0) + 1e-6
    flow_sample = train_vector_flow(torch.as_tensor((Z - mu) / sd, dtype=torch.float32), labels_df, steps=steps,
                                    seed=seed, batch_size=batch_size, lr=lr, ema_decay=ema_decay, hidden=hidden,
                                    depth=depth)

    def sample(cond_df, sample_seed, n_steps):
        z = flow_sample(cond_df, sample_seed, n_steps)
        return (z * sd + mu) @ pca.components + pca.mean  # (B, G), not clipped
    return sample


def _scvi_generate(train, keys, counts_per_group, *, seed, max_epochs, symbol_key):
    """Train scVI on the training counts and decode cells drawn from the prior, per group."""
    import scvi
    import torch

    from grndiff.data import log1p_normalized_copy

    scvi.settings.seed = seed
    a = train.copy()
    a.obs = a.obs[keys + ["group"]].copy()
    scvi.model.SCVI.setup_anndata(a, layer="counts", categorical_covariate_keys=list(keys))
    model = scvi.model.SCVI(a, n_latent=10)
    t0 = time.time()
    model.train(max_epochs=max_epochs, batch_size=128, accelerator="cpu", enable_progress_bar=False,
                train_size=1.0, early_stopping=False)
    train_s = time.time() - t0
    mappings = model.adata_manager.get_state_registry("extra_categorical_covs").mappings
    lib = np.log(np.asarray(train.layers["counts"].sum(1)).ravel())
    rng = np.random.default_rng(seed)
    groups = train.obs["group"].astype(str).to_numpy()
    Xs, labels = [], []
    module = model.module.eval()
    for g, n in counts_per_group.items():
        parts = g.split(" | ")
        cat = np.stack([np.full(n, list(mappings[k]).index(parts[i])) for i, k in enumerate(keys)], 1)
        libsize = rng.choice(lib[groups == g], size=n)
        with torch.no_grad():
            z = torch.as_tensor(rng.standard_normal((n, module.n_latent)), dtype=torch.float32)
            out = module.generative(z=z, library=torch.as_tensor(libsize[:, None], dtype=torch.float32),
                                    batch_index=torch.zeros(n, 1, dtype=torch.long),
                                    cat_covs=torch.as_tensor(cat, dtype=torch.long))
            torch.manual_seed(int(rng.integers(2**31)))
            Xs.append(out["px"].sample().numpy())
        labels += [g] * n
    import anndata as ad
    raw = ad.AnnData(np.concatenate(Xs).astype(np.float32), var=train.var[[]].copy())
    raw.layers["counts"] = raw.X.copy()
    X = _dense(log1p_normalized_copy(raw, layer="counts", value_kind="counts").X)
    return X, labels, train_s


# ============================================================================ evaluation
def score(real_test, gen, real_all, prior_var, ds, method, seed, train_seconds=None):
    from grndiff import metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = metrics.evaluate(real_test, gen, groupby="group", pca_reference=real_all, prior=prior_var, seed=seed)
        pooled = metrics.evaluate(real_test, gen, groupby=None, pca_reference=real_all, prior=prior_var,
                                  metrics=["tf_target_corr"], seed=seed)
    recs = [record(ds, method, RENAME.get(r.metric, r.metric), r.value, seed, r.group) for r in rep.itertuples()]
    recs.append(record(ds, method, "tf_target_corr_pooled", pooled["value"].iloc[0], seed, "all"))
    if method != "real_vs_real":  # the same cells clipped at 0 (log1p values are non-negative)
        clipped = gen.copy()
        clipped.X = np.clip(_dense(clipped.X), 0.0, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ec = metrics.evaluate(real_test, clipped, groupby="group", pca_reference=real_all,
                                  metrics=["energy_distance"], seed=seed)
        recs.append(record(ds, method, "energy_distance_clip0", ec.loc[ec["group"] == "all", "value"].iloc[0],
                           seed, "all"))
    if SAVE_DIR is not None:
        SAVE_DIR.mkdir(parents=True, exist_ok=True)
        g = gen.copy()
        g.X = _dense(g.X)
        g.write_h5ad(SAVE_DIR / f"{ds}_{method}_seed{seed}.h5ad")
    if train_seconds is not None:
        recs.append(record(ds, method, "train_seconds", train_seconds, seed, "all"))
    return recs


def run_one(ds, method, seed, data, cfg, log):
    """Train/sample/score one (data set, method, seed); returns records and a model description."""
    adata, real_all, train_idx, test_idx, keys, symbol_key, prior_sym, prior_var = data
    from grndiff import GRNDiff

    real_test = real_all[test_idx].copy()
    real_train = real_all[train_idx].copy()
    counts = real_test.obs["group"].astype(str).value_counts()
    counts = {g: int(n) for g, n in counts.items()}
    cond_df = pd.DataFrame([g.split(" | ") for g, n in counts.items() for _ in range(n)], columns=keys)
    labels = [g for g, n in counts.items() for _ in range(n)]
    desc = ""
    if method == "real_vs_real":
        return score(real_test, real_train, real_all, prior_var, ds, method, seed), "training cells"
    if method == "gaussian":
        from grndiff.baselines import GaussianPCA

        t0 = time.time()
        g = GaussianPCA(n_comps=30, seed=seed, clip=False).fit(_dense(real_train.X),
                                                               real_train.obs["group"].astype(str).to_numpy())
        Xg, lab = g.sample(counts, seed=seed)
        gen = _generated_anndata(Xg, lab, real_test.var, keys)
        return (score(real_test, gen, real_all, prior_var, ds, method, seed, time.time() - t0),
                "GaussianPCA(30, clip=False)")
    if method == "scvi":
        train = adata[train_idx].copy()
        X, lab, ts = _scvi_generate(train, keys, counts, seed=seed, max_epochs=cfg["scvi_epochs"],
                                    symbol_key=symbol_key)
        gen = _generated_anndata(X, lab, real_test.var, keys)
        return (score(real_test, gen, real_all, prior_var, ds, method, seed, ts),
                f"SCVI(n_latent=10), {cfg['scvi_epochs']} epochs")
    if method == "pca_flow":
        t0 = time.time()
        sampler = _train_pca_flow(_dense(real_train.X), real_train.obs[keys], n_pcs=min(50, cfg["n_pcs_flow"]),
                                  steps=cfg["steps"], seed=seed, batch_size=cfg["batch_size"], lr=cfg["lr"],
                                  ema_decay=cfg["ema_decay"], hidden=cfg["mlp_hidden"], depth=3)
        ts = time.time() - t0
        Xg = sampler(cond_df, seed, cfg["n_steps"])
        gen = _generated_anndata(Xg, labels, real_test.var, keys)
        return (score(real_test, gen, real_all, prior_var, ds, method, seed, ts),
                f"MLPVelocity on {cfg['n_pcs_flow']} PCs")
    if method == "latent_nb":
        from grndiff.train import LatentNBFlow

        t0 = time.time()
        train = adata[train_idx]
        lnb = LatentNBFlow(32, ae_steps=cfg.get("ae_steps", 2000), flow_steps=cfg["steps"], hidden=cfg["mlp_hidden"],
                           batch_size=cfg["batch_size"], lr=cfg["lr"], ema_decay=cfg["ema_decay"], seed=seed)
        lnb.fit(train.layers["counts"], train.obs[keys])
        ts = time.time() - t0
        Xg, _ = lnb.sample(cond_df, seed=seed, n_steps=cfg["n_steps"])
        gen = _generated_anndata(Xg, labels, real_test.var, keys)
        return (score(real_test, gen, real_all, prior_var, ds, method, seed, ts),
                f"LatentNBFlow(32, ae_steps={lnb.ae_steps}, flow_steps={lnb.flow_steps})")
    # GRNDiff backbones
    train = adata[train_idx].copy()
    GRNDiff.setup_anndata(train, layer="counts", condition_keys=keys, symbol_key=symbol_key)
    bs = cfg["gene_tokens_batch"] if method.startswith("gene_tokens") else cfg["batch_size"]
    comps, resid = cfg.get("source_comps", 100), cfg.get("source_residual", 0.5)
    t0 = time.time()
    if method.startswith("gaussian_source"):  # the flow's source alone (an untrained network outputs v ≡ 0)
        opts = _source_options(method)[1]
        model = GRNDiff(train, prior=None, modules=None, backbone="mlp", hidden=8, depth=1,
                        source={"name": "gaussian", "k": comps, "residual": resid, **opts})
        n_steps = 1
        desc = f"GaussianSource(k={comps}, residual={resid}, {opts.get('space', 'log')} axes), untrained"
    else:
        model = _train_grndiff(train, method, steps=cfg["steps"], seed=seed, batch_size=bs, lr=cfg["lr"],
                               ema_decay=cfg["ema_decay"], prior_sym=prior_sym, quick=cfg["quick"],
                               prediction=cfg.get("prediction"), source=cfg.get("source", "gaussian"),
                               source_comps=comps, source_residual=resid)
        n_steps, desc = cfg["n_steps"], f"{model!r}, batch {bs}"
    ts = time.time() - t0
    log(f"  {desc}; trained in {ts:.0f} s")
    # not clipped at 0, like the gaussian and pca_flow rows (energy_distance_clip0 scores the clipped cells)
    gen = model.sample(len(cond_df), cond_df, n_steps=n_steps, method="euler", seed=seed, clip=False,
                       batch_size=bs * 4 if method.startswith("gene_tokens") else 1024,  # G² attention memory
                       counts="nearest" if cfg.get("count_rows") else False, progress=False)
    gen.obs["group"] = labels
    gen.obs.index = gen.obs.index.astype(str)
    recs = score(real_test, gen, real_all, prior_var, ds, method, seed, ts)
    if "counts" in gen.layers:  # <method>_counts: the same cells as counts (sample(counts="nearest")), log1p CP10k
        from grndiff.data.normalize import log1p_cp10k

        as_counts = gen.copy()
        as_counts.X = log1p_cp10k(gen.layers["counts"])
        del as_counts.layers["counts"]
        recs += score(real_test, as_counts, real_all, prior_var, ds, f"{method}_counts", seed, ts)
    return recs, desc


# ============================================================================ output
def summary_markdown(records) -> str:
    """Group-"all" rows per data set: ``mean ± sd (n=seeds)``, metrics in a fixed order."""
    rows = [r for r in records if r["group"] == "all"]
    rows.sort(key=lambda r: METRIC_ORDER.index(r["metric"]) if r["metric"] in METRIC_ORDER else 99)
    order = {m: i for i, m in enumerate(METHODS)}
    ds_order = {d: i for i, d in enumerate(DATASETS)}
    def rank(m):  # a <method>_counts row right after its method
        base = m[: -len("_counts")] if m.endswith("_counts") else m
        return order.get(base, 99) + (0.5 if base != m else 0.0)

    rows.sort(key=lambda r: (ds_order.get(r["dataset"], 9), rank(r["method"])))
    if not rows:
        return "(no results yet)\n"
    return "\n\n".join(f"### {ds}\n\n" + seed_spread_markdown([r for r in rows if r["dataset"] == ds])
                       for ds in dict.fromkeys(r["dataset"] for r in rows)) + "\n"


def write(records, command, extra, out_dir, name=NAME):
    """JSON with every record (per group and seed); Markdown with the seed-averaged ``all`` rows."""
    json_path, md_path = write_results(name, records, command, extra=extra, out_dir=out_dir)
    obj = json.loads(json_path.read_text())
    head = [f"# Benchmark: {name}", "", f"- command: `{obj['command']}`", f"- commit: `{obj['commit']}`",
            f"- machine: {obj['machine']}"]
    for k, v in extra.items():
        if k not in ("notes", "models"):
            head.append(f"- {k}: {v if isinstance(v, (str, int, float)) else json.dumps(v)}")
    body = ["\n".join(head), "Group `all` = unweighted mean over groups; cells show `mean ± sd (n=k)` over k seeds "
            "(each seed is its own 80/20 split, model initialisation and sampling noise): a difference smaller "
            "than the spread is not a win. Per-group and per-seed values are in the JSON.",
            summary_markdown(records).rstrip()]
    notes = extra.get("notes")
    if notes:
        body.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes))
    md_path.write_text("\n\n".join(body) + "\n")
    return json_path, md_path


_DATA: dict = {}  # per process: (data set, seed) → loaded data


def _setup_process(threads: int) -> None:
    """Threads and quiet logs, once per process (the main one and every worker)."""
    if _DATA.get("_ready"):
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import logging

    import torch
    torch.set_num_threads(threads)
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    _DATA["_ready"] = True


def _run_job(job):
    """One (data set, method, seed) row in this process; returns (status, records, description, log lines)."""
    ds, method, seed, cfg, deadline, threads = job
    if deadline is not None and time.time() > deadline:  # --max-minutes: start no new row
        return "skipped", [], None, []
    _setup_process(threads)
    lines: list[str] = []
    t0 = time.time()
    if (ds, seed) not in _DATA:
        from grndiff import priors
        adata, real_all, tr, te, keys, sym = load_dataset(ds, seed)
        prior_sym = symbol_prior(adata, sym, priors.load("collectri"))
        _DATA[(ds, seed)] = (adata, real_all, tr, te, keys, sym, prior_sym, prior_in_var_names(adata, sym, prior_sym))
        lines.append(f"{ds} seed {seed}: {adata.n_obs} cells × {adata.n_vars} genes, train {len(tr)}, "
                     f"held-out {len(te)}, {adata.obs['group'].nunique()} groups, "
                     f"{len(prior_sym)} CollecTRI edges among measured genes")
    try:
        recs, desc = run_one(ds, method, seed, _DATA[(ds, seed)], cfg, lines.append)
    except Exception as e:  # noqa: BLE001 — reported as the row's failure
        return "failed", [], f"{type(e).__name__}: {e}", lines + [f"{ds} / {method} / seed {seed} FAILED: {e}"]
    got = {r["metric"]: r["value"] for r in recs if r["group"] == "all"}
    lines.append(f"{ds} / {method} / seed {seed}: energy {got.get('energy_distance', float('nan')):.3f}  "
                 f"mmd {got.get('mmd_rbf', float('nan')):.4f}  auc {got.get('classifier_auc', float('nan')):.3f}  "
                 f"train {got.get('train_seconds') or 0:.0f} s ({time.time() - t0:.0f} s)")
    return "ok", recs, desc, lines



# ============================================================================ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets for CI (< 2 min, kang2018 only)")
    p.add_argument("--datasets", default="kang2018,kang2018_ctrl")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=3, help="seeds of the cheap rows " + str(CHEAP))
    p.add_argument("--deep-seeds", type=int, default=3, help="seeds of every other row")
    p.add_argument("--steps", type=int, default=1000, help="training steps of every deep model")
    p.add_argument("--steps-ctrl", type=int, default=None, help="steps on kang2018_ctrl (default --steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gene-tokens-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--n-steps", type=int, default=30, help="Euler steps of the sampler")
    p.add_argument("--scvi-epochs", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--max-minutes", type=float, default=None, help="start no new row after this many minutes")
    p.add_argument("--jobs", type=int, default=1, help="rows trained in parallel processes (--threads each)")
    p.add_argument("--save-generated", default=None, help="also write every generated AnnData into this folder")
    p.add_argument("--source", default="gaussian", choices=("noise", "gaussian"),
                   help="flow source of the GRNDiff rows: N(0, I) or the fitted per-group Gaussian")
    p.add_argument("--source-comps", type=int, default=100, help="principal axes k of the gaussian source")
    p.add_argument("--source-residual", type=float, default=0.5, help="residual-noise scale of the gaussian source")
    p.add_argument("--counts", dest="count_rows", action=argparse.BooleanOptionalAction, default=True,
                   help="also score every GRNDiff row's cells as counts (<method>_counts: sample(counts='nearest'), "
                        "log1p CP10k of the counts)")
    p.add_argument("--ae-steps", type=int, default=2000, help="autoencoder steps of the latent_nb row")
    p.add_argument("--name", default=NAME, help="results file name (default generation)")
    p.add_argument("--prediction", default=None, choices=("velocity", "data"),
                   help="network output of the GRNDiff rows (default: the model's own default)")
    args = p.parse_args(argv)
    global SAVE_DIR
    SAVE_DIR = Path(args.save_generated) if args.save_generated else None

    command = command_string()
    out_dir = Path(args.out) if args.out else RESULTS_DIR
    _setup_process(args.threads)
    if args.jobs > 1 and SAVE_DIR is not None:
        raise SystemExit("--save-generated needs --jobs 1 (the rows are generated in worker processes)")
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    bad = (set(datasets) - set(DATASETS)) | (set(methods) - set(METHODS))
    if bad:
        raise SystemExit(f"unknown data set(s)/method(s) {sorted(bad)}; "
                         f"choose from {list(DATASETS)} and {list(METHODS)}")
    if args.quick:
        datasets = ["kang2018"]
        args.steps, args.steps_ctrl, args.seeds, args.deep_seeds = 30, 30, 1, 1
        args.ae_steps = 30
        args.n_steps, args.scvi_epochs = 5, 5
        if args.methods == ",".join(METHODS):
            methods = ["real_vs_real", "gaussian", "mlp", "pca_flow", "grndiff"]

    try:
        import scvi  # noqa: F401
        have_scvi = True
    except ImportError:
        have_scvi = False
    t_start = time.time()
    records, models = [], {}
    notes = [
        "Training: every deep model gets the same number of optimiser steps (AdamW, lr warm-up + cosine "
        "to 5 %, EMA of the weights for sampling); gene_tokens uses a smaller batch (G² attention memory).",
        "gaussian: per-group Gaussian in 30 PCs of the training cells, decoded WITHOUT clipping at 0 "
        "(GaussianPCA(clip=False)); clipping costs ≈ 0.06 energy distance on kang2018.",
        "tf_target_corr: per group (mean over groups in `all`; noisy with ~30 cells per group); "
        "tf_target_corr_pooled: one correlation agreement over all held-out vs all generated cells.",
        f"Sampling: Euler, {args.n_steps} steps, guidance 1; as many cells per group as held out.",
        f"Threads: torch.set_num_threads({args.threads}), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
        "the CPU was shared with other jobs, so train_seconds are upper bounds.",
    ]
    if "scvi" in methods and not have_scvi:
        notes.append("scvi: scvi-tools is not installed (optional `bench` extra): row skipped.")
    config = {"steps": args.steps, "steps_ctrl": args.steps_ctrl or args.steps, "batch_size": args.batch_size,
              "gene_tokens_batch": args.gene_tokens_batch, "lr": args.lr, "ema_decay": args.ema_decay,
              "n_steps": args.n_steps, "scvi_epochs": args.scvi_epochs, "seeds_cheap": args.seeds, "jobs": args.jobs,
              "seeds_deep": args.deep_seeds, "quick": args.quick, "prediction": args.prediction,
              "count_rows": args.count_rows, "ae_steps": args.ae_steps,
              "source": args.source,
              "source_comps": args.source_comps, "source_residual": args.source_residual}

    def log(msg):
        print(f"[generation {time.time() - t_start:6.0f}s] {msg}", flush=True)

    skipped: list[str] = []

    def flush():
        cut = [f"not run (--max-minutes {args.max_minutes:g} reached): " + ", ".join(skipped)] if skipped else []
        extra = {"config": config, "wall_seconds": round(time.time() - t_start), "notes": notes + cut,
                 "models": models}
        if args.out is None and args.quick:
            return
        write(records, command, extra, out_dir, args.name)

    jobs = []  # seed after seed (every row of seed 0, then seed 1 …): a --max-minutes cut leaves whole seeds
    for ds in datasets:
        cfg = dict(config, steps=(args.steps_ctrl or args.steps) if ds == "kang2018_ctrl" else args.steps,
                   mlp_hidden=128 if args.quick else 512, n_pcs_flow=50, quick=args.quick)
        for seed in range(max(args.seeds, args.deep_seeds)):
            jobs += [(ds, m, seed, cfg) for m in methods
                     if seed < (args.seeds if m in CHEAP else args.deep_seeds) and (m != "scvi" or have_scvi)]
    deadline = t_start + 60 * args.max_minutes if args.max_minutes is not None else None
    work = [(*j, deadline, args.threads) for j in jobs]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"))
        results = pool.map(_run_job, work)
    else:
        pool, results = None, map(_run_job, work)
    for (ds, method, seed, _), (status, recs, desc, lines) in zip(jobs, results):
        for line in lines:
            log(line)
        if status == "skipped":
            skipped.append(f"{ds}/{method}/seed{seed}")
        elif status == "failed":  # one failing row must not lose the others
            notes.append(f"{ds} / {method} / seed {seed} failed: {desc}"[:400])
        else:
            records.extend(recs)
            models[f"{ds}/{method}"] = desc
        flush()
    if pool is not None:
        pool.shutdown()
    flush()
    print(summary_markdown(records))
    if args.out or not args.quick:
        print(f"wrote {out_dir / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
