"""GEARS (Roohani et al. 2024) on one Papalexi knock-out fold: train, then predict the held-out knock-outs.

Runs in the GEARS venv (``benchmarks/peers/.venvs/gears``, made by ``setup.sh gears``); no grndiff.
``benchmarks/knockouts_gears.py`` writes the inputs and calls this once per fold::

    OMP_NUM_THREADS=1 benchmarks/peers/.venvs/gears/bin/python benchmarks/peers/run_gears.py \\
        --input train.h5ad --heldout IFNGR1,JAK2 --prior prior.tsv --out OUT

Inputs

- ``--input``: the fold's training cells *and* all control cells; ``X`` = the expression that is
  scored (log1p CP10k; GEARS expects log-normalised ``X``), ``obs["perturbation"]`` = ``control`` or
  the knocked-out gene, ``var_names`` = gene symbols.
- ``--heldout``: the knock-outs to predict (no cells of them are in ``--input``).
- ``--prior``: a TSV with ``source`` and ``target`` columns (the gene graph that replaces GO).

The GO substitution. GEARS's perturbation graph joins two genes by the Jaccard similarity of their
GO-term sets (> 0.1, then the 20 most similar per gene; ``utils.make_GO`` and
``get_similarity_network``). GO is downloaded at run time and cannot be reached here, so each
gene's "term set" is the gene itself and its neighbours in the prior (either direction): two genes
are similar when they are linked or share regulators/targets. The files GEARS reads are pre-written
under ``<out>/gears_work/data`` (``gene2go_all.pkl``, ``go_essential_<name>.csv``), so it neither
downloads nor starts its 25 worker processes; from there on GEARS's own code builds the graph.

The perturbable genes (GEARS's ``pert_list``) are passed as a gene set (``gene_set_path``): the
measured genes and every knocked-out gene, training and held-out, so an unmeasured held-out
knock-out is a node of the perturbation graph. A gene outside the prior has only itself as a
neighbour (its embedding is never trained when it is not a training knock-out).

Training: GEARS's defaults (hidden 64, 1 GNN layer per graph, 20 neighbours, co-expression
threshold 0.4, direction_lambda 0.1, Adam lr 1e-3 halved every epoch, batch 32), ``--epochs``
epochs on the CPU with one thread. Model selection: GEARS keeps the epoch with the lowest
top-20-DE MSE on its validation conditions; here those are ``--val-kos`` training knock-outs, which
stay in training (every training knock-out is used for fitting, as by the baselines).

Prediction: GEARS's output for a control cell x is ``x + f(knock-out)`` (``model.py``: the decoder
does not see x), so every control cell of the input is transported (``GEARS.predict`` averages 300
random ones) and the mean is written. Outputs in ``--out``: ``pred_mean.tsv`` (rows: ``control``
= the mean of the input control cells, then one row per held-out knock-out; columns: genes),
``run_info.json`` (versions, settings, seconds, the graph's size, which knock-outs could be
predicted and how many prior neighbours each has).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

CTRL = "control"


def prior_neighbours(prior: pd.DataFrame) -> dict[str, set[str]]:
    """gene → itself ∪ its neighbours in the prior (edges taken in both directions)."""
    nb: dict[str, set[str]] = {}
    for s, t in zip(prior["source"].astype(str), prior["target"].astype(str)):
        nb.setdefault(s, {s}).add(t)
        nb.setdefault(t, {t}).add(s)
    return nb


def jaccard_edges(sets: dict[str, set[str]], genes, threshold: float = 0.1) -> pd.DataFrame:
    """GEARS's ``make_GO`` rule on ``sets``: every ordered pair (self-pairs included) of ``genes`` with
    Jaccard similarity > ``threshold``, as ``source, target, importance``."""
    genes = list(genes)
    terms = sorted(set().union(*(sets[g] for g in genes)))
    col = {t: j for j, t in enumerate(terms)}
    rows, cols = [], []
    for i, g in enumerate(genes):
        for t in sets[g]:
            rows.append(i)
            cols.append(col[t])
    M = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(genes), len(terms)))
    inter = (M @ M.T).toarray()
    size = np.asarray(M.sum(1)).ravel()
    union = size[:, None] + size[None, :] - inter
    jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    i, j = np.nonzero(jac > threshold)
    return pd.DataFrame({"source": np.asarray(genes)[i], "target": np.asarray(genes)[j], "importance": jac[i, j]})


def graph_neighbours(go: pd.DataFrame, gene: str, k: int = 20) -> list[str]:
    """The genes whose embeddings GEARS's perturbation GNN mixes into ``gene``'s (its k + 1 most similar,
    as ``get_similarity_network`` keeps them), itself left out."""
    d = go[go["target"] == gene].nlargest(k + 1, "importance")
    return [str(s) for s in d["source"] if s != gene]


def gears_adata(adata):
    """The AnnData GEARS wants: ``obs.condition`` = ``ctrl`` / ``<gene>+ctrl``, ``obs.cell_type``,
    ``var.gene_name``, CSR float32 ``X``."""
    import anndata as ad
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    cond = np.where(lab == CTRL, "ctrl", np.char.add(lab.astype(str), "+ctrl"))
    obs = pd.DataFrame({"condition": cond, "cell_type": "THP-1"}, index=[f"c{i}" for i in range(len(lab))])
    var = pd.DataFrame({"gene_name": [str(g) for g in adata.var_names]}, index=[str(g) for g in adata.var_names])
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    return ad.AnnData(X=X, obs=obs, var=var)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for n in ("cell-gears", "torch", "torch-geometric", "anndata", "scanpy", "numpy", "pandas", "scipy"):
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def predict_all_controls(model, pert_data, pert_idx: int, batch: int = 300) -> tuple[np.ndarray, float]:
    """Mean of GEARS's prediction over every control cell, and the largest deviation of a cell's change
    from the mean change (0 up to rounding when the output is x + f(knock-out))."""
    import torch
    from torch_geometric.data import Data, DataLoader
    ctrl = pert_data.adata[(pert_data.adata.obs["condition"] == "ctrl").values]
    X = ctrl.X.toarray() if sp.issparse(ctrl.X) else np.asarray(ctrl.X)
    graphs = [Data(x=torch.Tensor(x[None, :]).T, pert_idx=[pert_idx], pert="p") for x in X]
    preds = []
    model.eval()
    with torch.no_grad():
        for b in DataLoader(graphs, batch, shuffle=False):
            preds.append(model(b).cpu().numpy())
    P = np.concatenate(preds).astype(np.float64)
    shift = P - X
    return P.mean(0), float(np.abs(shift - shift.mean(0)).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="h5ad: training cells + control cells, X = log1p CP10k")
    ap.add_argument("--heldout", required=True, help="comma-separated knock-outs to predict")
    ap.add_argument("--prior", required=True, help="TSV with source, target columns")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--val-kos", type=int, default=2, help="training knock-outs GEARS selects the epoch on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="papalexi")
    args = ap.parse_args(argv)

    import anndata as ad
    import torch
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "gears_work"
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # make_GO reads './data/go_essential_<name>.csv' relative to the working directory

    adata = gears_adata(ad.read_h5ad(args.input))
    held = [k.strip() for k in args.heldout.split(",") if k.strip()]
    genes = [str(g) for g in adata.var["gene_name"]]
    train_kos = sorted({c.split("+")[0] for c in adata.obs["condition"].astype(str)} - {"ctrl"})
    if set(held) & set(train_kos):
        raise SystemExit(f"held-out knock-outs have cells in the input: {sorted(set(held) & set(train_kos))}")

    # the prior in place of GO: gene → {gene} ∪ prior neighbours; the perturbable genes as a gene set
    prior = pd.read_csv(args.prior, sep="\t")
    nb = prior_neighbours(prior)
    pert_genes = sorted(set(genes) | set(train_kos) | set(held))
    gene2go = {g: nb.get(g, {g}) for g in pert_genes}
    with open(data / "gene2go_all.pkl", "wb") as f:
        pickle.dump(gene2go, f)
    with open(data / "pert_genes.pkl", "wb") as f:
        pickle.dump(pert_genes, f)
    name = f"{args.name}_{'_'.join(held)}"[:120].lower()
    go = jaccard_edges(gene2go, pert_genes)
    go.to_csv(data / f"go_essential_{name}.csv", index=False)

    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    from gears import GEARS, PertData
    pert_data = PertData("./data", gene_set_path=str(data / "pert_genes.pkl"), default_pert_graph=False)
    pert_data.new_data_process(dataset_name=name, adata=adata)
    rng = np.random.default_rng(args.seed)
    val_kos = sorted(rng.choice(train_kos, min(args.val_kos, len(train_kos)), replace=False).tolist())
    split = {"train": ["ctrl"] + [f"{k}+ctrl" for k in train_kos], "val": [f"{k}+ctrl" for k in val_kos]}
    with open(data / "split.pkl", "wb") as f:
        pickle.dump({**split, "test": []}, f)
    pert_data.prepare_split(split="custom", split_dict_path=str(data / "split.pkl"))
    pert_data.split = "no_test"  # train + val loaders only (the held-out knock-outs have no cells here)
    pert_data.get_dataloader(batch_size=args.batch_size, test_batch_size=128)
    t_data = time.perf_counter() - t_start

    model = GEARS(pert_data, device="cpu")
    model.model_initialize(hidden_size=args.hidden)
    t0 = time.perf_counter()
    model.train(epochs=args.epochs)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    pert_list = list(model.pert_list)
    predicted, not_predicted, deviation = {}, {}, {}
    for k in held:
        if k not in pert_list:
            not_predicted[k] = "not in GEARS's perturbation gene list"
            continue
        predicted[k], deviation[k] = predict_all_controls(model.best_model, pert_data, pert_list.index(k))
    ctrl_X = pert_data.adata[(pert_data.adata.obs["condition"] == "ctrl").values].X
    ctrl_mean = np.asarray(ctrl_X.mean(0)).ravel().astype(np.float64)
    table = pd.DataFrame([ctrl_mean] + [predicted[k] for k in predicted], index=[CTRL] + list(predicted),
                         columns=genes)
    table.index.name = "perturbation"
    table.to_csv(out / "pred_mean.tsv", sep="\t", float_format="%.7g")
    t_pred = time.perf_counter() - t0

    go_edges = pd.read_csv(data / f"go_essential_{name}.csv")
    info = {
        "method": "gears", "versions": versions(), "threads": torch.get_num_threads(),
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "hidden_size": args.hidden,
                     "lr": 1e-3, "lr_schedule": "StepLR(step 1, gamma 0.5) (GEARS.train)",
                     "num_similar_genes_go_graph": 20, "num_similar_genes_co_express_graph": 20,
                     "coexpress_threshold": 0.4, "direction_lambda": 0.1, "seed": args.seed,
                     "val_kos": val_kos, "val_in_training": True, "device": "cpu",
                     "go_graph": "Jaccard of {gene} ∪ prior neighbours, > 0.1, top 20 per gene (GEARS rule)"},
        "train_kos": train_kos, "heldout": held, "predicted": list(predicted), "not_predicted": not_predicted,
        "prior_neighbours": {k: len(nb.get(k, {k})) - 1 for k in held},
        "go_graph_neighbours": {k: graph_neighbours(go, k) for k in held},
        "max_cell_shift_deviation": deviation,
        "n_pert_genes": len(pert_list), "n_go_edges_before_topk": int(len(go_edges)),
        "n_genes": len(genes), "n_cells": int(adata.n_obs), "n_ctrl": int((adata.obs["condition"] == "ctrl").sum()),
        "seconds": {"data": t_data, "train": t_train, "predict": t_pred, "total": time.perf_counter() - t_start},
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    print(f"gears: predicted {len(predicted)}/{len(held)} held-out knock-outs in {info['seconds']['total']:.0f}s "
          f"(train {t_train:.0f}s, {args.epochs} epochs)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
