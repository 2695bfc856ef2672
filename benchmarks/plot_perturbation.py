"""The README's perturbation figure: predicted vs true change of the top genes of a held-out cell type.

Kang 2018: the stimulated cells of one cell type (default CD14+ monocytes) are held out; grndiff's
transport alone (``predict(flow=False)``: each control cell moved by the stimulus response of its
nearest control cells in the other cell types, matched by optimal transport; no network, no
training) and the mean-shift baseline predict them from that type's control cells. The figure shows
the 20 genes that change most in truth, with each prediction's change.

Usage::

    python benchmarks/plot_perturbation.py              # plot from the committed results file
    python benchmarks/plot_perturbation.py --recompute  # recompute the results file first (~1 min, CPU)

The values plotted are in ``benchmarks/results/perturbation_top_genes.{json,md}`` (records with
the command and commit that computed them); the figure is ``docs/perturbation_top_genes.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _results import RESULTS_DIR, ROOT, command_string, record, write_results

NAME = "perturbation_top_genes"
FIGURE = ROOT / "docs" / f"{NAME}.png"
N_TOP = 20
METHODS = {"truth": "true", "grndiff_transport": "grndiff transport (predict(flow=False))",
           "mean_shift": "mean shift (other cell types)"}


def compute(cell_type: str) -> list[dict]:
    """Records: per top gene the control mean and each method's Δ; per method Pearson Δ top-20."""
    import grndiff as gd
    from grndiff.baselines import MeanShift
    from grndiff.metrics import evaluate_perturbation

    adata = gd.datasets.kang2018()
    gd.GRNDiff.setup_anndata(adata, layer="counts", condition_keys=["cell_type", "condition"],
                             control_obs={"condition": "ctrl"})
    is_type = (adata.obs["cell_type"] == cell_type).to_numpy()
    if not is_type.any():
        raise SystemExit(f"no cell type {cell_type!r}; choose from {sorted(adata.obs['cell_type'].unique())}")
    is_stim = (adata.obs["condition"] == "stim").to_numpy()
    model = gd.GRNDiff(adata[~(is_type & is_stim)].copy(), prior="collectri", modules="hallmark", seed=0)
    ctrl = adata[is_type & ~is_stim].copy()
    pred = np.asarray(model.predict(ctrl, conditions={"condition": "stim"}, flow=False).X)  # the transport alone
    X = gd.data.log1p_normalized_copy(adata, layer="counts").X
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    c, t = X[is_type & ~is_stim], X[is_type & is_stim]
    ms = MeanShift().fit(X[~is_type], adata.obs["condition"].to_numpy()[~is_type], "ctrl",
                         groups=adata.obs["cell_type"].to_numpy()[~is_type])
    preds = {"truth": t, "grndiff_transport": pred, "mean_shift": c + ms.shift("stim")}
    d_true = t.mean(0) - c.mean(0)
    top = np.argsort(-np.abs(d_true), kind="stable")[:N_TOP]
    genes = adata.var_names.to_numpy()
    recs = []
    for rank, g in enumerate(top, 1):
        recs.append(record("kang2018", "control", "mean", c[:, g].mean(), group=str(genes[g])))
        for m, p in preds.items():
            recs.append(record("kang2018", m, "delta", p[:, g].mean() - c[:, g].mean(), group=str(genes[g])))
        recs.append(record("kang2018", "truth", "rank", rank, group=str(genes[g])))
    for m, p in preds.items():
        if m != "truth":
            s = evaluate_perturbation(p, t, c, top_n=N_TOP)
            recs.append(record("kang2018", m, "pearson_delta_top20", s["pearson_delta_top20"], group="all"))
    return recs


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = results["records"]
    genes = sorted({r["group"] for r in recs if r["metric"] == "rank"},
                   key=lambda g: next(r["value"] for r in recs if r["metric"] == "rank" and r["group"] == g))
    delta = {m: np.array([next(r["value"] for r in recs if r["method"] == m and r["metric"] == "delta"
                               and r["group"] == g) for g in genes]) for m in METHODS}
    rho = {r["method"]: r["value"] for r in recs if r["metric"] == "pearson_delta_top20"}
    order = np.argsort(-delta["truth"], kind="stable")
    fig, ax = plt.subplots(figsize=(9, 3.8))
    xs, w = np.arange(len(genes)), 0.27
    for off, (m, color) in zip((-w, 0.0, w), (("truth", "black"), ("grndiff_transport", "tab:orange"),
                                               ("mean_shift", "tab:grey"))):
        label = METHODS[m] + (f", Pearson Δ top-20 = {rho[m]:.2f}" if m in rho else "")
        ax.bar(xs + off, delta[m][order], w, color=color, label=label)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(xs, [genes[i].split("_")[0] for i in order], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Δ mean log1p CP10k (stim − ctrl)")
    ax.set_title(f"Kang 2018, IFN-β on {results['cell_type']} never seen stimulated: the {len(genes)} genes "
                 "that change most", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recompute", action="store_true", help="recompute the results file from the shipped data")
    ap.add_argument("--cell-type", default="CD14+ Monocytes", help="the held-out cell type (with --recompute)")
    ap.add_argument("--out", type=Path, default=FIGURE, help="the figure (PNG)")
    args = ap.parse_args(argv)
    path = RESULTS_DIR / f"{NAME}.json"
    if args.recompute or not path.exists():
        notes = ["Top genes by |true Δ| of the held-out stimulated cells vs the same type's control cells "
                 "(mean log1p CP10k). grndiff_transport: predict(flow=False) of an untrained model (the "
                 "shifted-control transport needs no network); mean_shift: the stim − ctrl shift averaged "
                 "over the other cell types. Figure: python benchmarks/plot_perturbation.py."]
        write_results(NAME, compute(args.cell_type), command_string(),
                      extra={"cell_type": args.cell_type, "notes": notes})
    plot(json.loads(path.read_text()), args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
