#!/usr/bin/env python
"""How much of a simulated knock-out's effect can a gene graph explain at all? (issue 7)

Before asking whether grndiff's graph carries knock-out effects to unseen regulators, measure how
much graph signal the SERGIO simulations (``benchmarks/sergio.py``, sergio-rs) contain. For every
regulator with ≥ 3 targets, the mean log1p-CP10k change of its knock-out cells vs control (``Δ``):

``delta_pairwise_corr``
    mean Pearson correlation between the ``Δ`` of two different knock-outs: the share of the
    effect that every knock-out has in common (what the mean-shift baseline predicts).
``frac_top20_descendants``
    fraction of the top-20 |Δ| genes that are 1–3-hop descendants of the knocked-out gene.
``propagation_corr_specific``
    Pearson, over the knock-out's 1–2-hop descendants, between the signed graph propagation
    ``−Σ_k 2^{1−k} A^k e_r`` (``A`` signed, in-degree normalised, k = 1..3) and the knock-out's
    *specific* change ``Δ_r − mean_{q≠r} Δ_q``: what a graph can add to the mean shift (0 = nothing).
``propagation_gain_top20``
    change in Pearson Δ (top-20 DE genes) when half the propagation is added to the mean shift.

    python benchmarks/sergio_signal.py                       # → benchmarks/results/sergio_signal.{json,md}
    python benchmarks/sergio_signal.py --quick --out DIR     # DS1 only
"""
from __future__ import annotations

import argparse

import numpy as np
import sergio as S
from _results import command_string, record, write_results


def signal(net: str, noise: str | None, n_cells: int = 100, seed: int = 0) -> dict:
    """The four figures above for one network and noise setting."""
    from grndiff.data import log1p_normalized_copy

    edges = S.read_network(net)
    regs = S.regulators(edges, 3)
    adata = S.simulate(edges, S.N_GENES[net], ["control"] + regs, n_types=3, n_cells=n_cells, seed=seed, noise=noise)
    X = log1p_normalized_copy(adata, layer="counts").X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    genes = list(adata.var_names)
    gi = {g: i for i, g in enumerate(genes)}
    ctrl = X[lab == "control"].mean(0)
    G = len(genes)
    A = np.zeros((G, G))  # rows = targets
    for s, t, w in S.signed_prior(edges)[["source", "target", "weight"]].itertuples(index=False):
        A[gi[t], gi[s]] = np.sign(w)
    A /= np.maximum(np.abs(A).sum(1), 1)[:, None]
    D = np.stack([X[lab == r].mean(0) - ctrl for r in regs])  # (R, G)
    C = np.corrcoef(D)
    spec, gain, frac = [], [], []
    for i, r in enumerate(regs):
        e = np.zeros(G)
        e[gi[r]] = 1.0
        hops = [A @ e]
        for _ in range(2):
            hops.append(A @ hops[-1])
        prop = -(hops[0] + 0.5 * hops[1] + 0.25 * hops[2])
        others = np.delete(D, i, 0).mean(0)
        top = np.argsort(-np.abs(D[i]))[:20]
        desc = (np.abs(hops[0]) + np.abs(hops[1]) + np.abs(hops[2])) > 0
        frac.append(desc[top].mean())
        near = np.flatnonzero((np.abs(hops[0]) + np.abs(hops[1])) > 0)
        if near.size > 2:
            spec.append(np.corrcoef(prop[near], (D[i] - others)[near])[0, 1])
        gain.append(np.corrcoef((others + 0.5 * prop)[top], D[i][top])[0, 1]
                    - np.corrcoef(others[top], D[i][top])[0, 1])
    return {"delta_pairwise_corr": float(C[np.triu_indices(len(regs), 1)].mean()),
            "frac_top20_descendants": float(np.mean(frac)),
            "propagation_corr_specific": float(np.nanmean(spec)),
            "propagation_gain_top20": float(np.nanmean(gain)),
            "n_knockouts": len(regs)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nets", default="ds2,ds3")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    nets = ["ds1"] if args.quick else args.nets.split(",")
    records = []
    for net in nets:
        for noise in ("DS1", None):
            m = signal(net, noise, n_cells=30 if args.quick else 100)
            name = f"noise_{noise}" if noise else "clean"
            print(f"sergio_{net} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)
            records += [record(f"sergio_{net}", name, k, v) for k, v in m.items()]
    notes = ["method = the simulation's technical-noise setting (sergio-rs NoiseSetting, or clean expression);",
             "3 cell types × 100 cells per condition, seed 0; log1p CP10k; see the module docstring for each metric."]
    if args.quick and not args.out:
        return records
    paths = write_results("sergio_signal", records, command_string(), extra={"notes": notes}, out_dir=args.out)
    print(paths[0])
    return records


if __name__ == "__main__":
    main()
