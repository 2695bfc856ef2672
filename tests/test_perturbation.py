"""Gene perturbations through the public API: setup, control→perturbed transport, unseen knock-outs,
clear errors, and the baselines the perturbation benchmark compares against."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import grndiff as gd
from grndiff.baselines import LinearPCARidge, MeanShift, additive, no_change
from grndiff.metrics import evaluate_perturbation

TRAIN_KOS = ["Gata2", "Gata1", "Pu.1", "Cebpa"]  # perturbed in training
UNSEEN = "Fli1"  # in the graph (and in var_names), never perturbed in training


@pytest.fixture(scope="module")
def ko_adata():
    """krumsiek11 (640 cells × 11 genes, log values) with simulated knock-outs: the gene is set to 0 and
    its direct targets in the 30-edge network move against the edge sign."""
    adata = gd.datasets.krumsiek11()
    net = gd.datasets.krumsiek11_network()
    genes = list(adata.var_names)
    X = np.asarray(adata.X, dtype=np.float32).copy()
    rng = np.random.default_rng(0)
    labels = np.array(["control"] * adata.n_obs, dtype=object)
    order = rng.permutation(adata.n_obs)
    for j, g in enumerate(TRAIN_KOS + ["Gata2+Pu.1"]):
        idx = order[j * 80:(j + 1) * 80]
        labels[idx] = g
        for part in g.split("+"):
            X[idx, genes.index(part)] = 0.0
            for tgt, w in net.loc[(net.source == part) & (net.target != part), ["target", "weight"]].itertuples(
                    index=False):
                k = genes.index(tgt)
                X[idx, k] = np.clip(X[idx, k] - 0.3 * np.sign(w), 0.0, None)
    adata.X = X
    adata.obs["perturbation"] = labels
    return adata


@pytest.fixture(scope="module")
def trained(ko_adata):
    torch.set_num_threads(1)
    gd.GRNDiff.setup_anndata(ko_adata, perturbation_key="perturbation", control="control",
                             condition_keys=["cell_type"])
    model = gd.GRNDiff(ko_adata, prior=gd.datasets.krumsiek11_network(), modules=None, source="control",
                       match_keys=["cell_type"], hidden=16, depth=1, token_depth=0)
    model.train(max_steps=40, batch_size=64, val_fraction=0.0, progress_bar=False, seed=0)
    return model


def test_setup_records_perturbation(ko_adata, trained):
    setup = ko_adata.uns["_grndiff"]
    assert setup["perturbation_key"] == "perturbation" and setup["control"] == "control"
    assert trained.processor.has_gene_perturbations
    mask = trained.processor.control_mask(ko_adata)
    np.testing.assert_array_equal(mask, (ko_adata.obs["perturbation"] == "control").to_numpy())


def test_predict_unseen_knockout_in_graph(ko_adata, trained):
    ctrl = ko_adata[ko_adata.obs["perturbation"] == "control"][:50].copy()
    assert UNSEEN not in set(ko_adata.obs["perturbation"])
    pred = trained.predict(ctrl, conditions={"perturbation": UNSEEN}, n_steps=4)
    assert pred.shape == (50, ko_adata.n_vars)
    assert list(pred.var_names) == list(ko_adata.var_names)
    assert (pred.obs["perturbation"].astype(str) == UNSEEN).all()
    assert pred.obs["cell_type"].astype(str).tolist() == ctrl.obs["cell_type"].astype(str).tolist()
    X = np.asarray(pred.X)
    assert np.isfinite(X).all() and (X >= 0).all()
    # the knock-out flag changes the prediction (it is not ignored) ...
    same = trained.predict(ctrl, conditions={"perturbation": "control"}, n_steps=4)
    assert not np.allclose(X, np.asarray(same.X))
    # ... and a combination of a seen and an unseen gene is accepted as a set of node flags
    combo = trained.predict(ctrl, conditions={"perturbation": f"Gata2+{UNSEEN}"}, n_steps=2)
    assert combo.shape == (50, ko_adata.n_vars)


def test_predict_gene_outside_graph_is_a_clear_error(ko_adata, trained):
    ctrl = ko_adata[ko_adata.obs["perturbation"] == "control"][:5].copy()
    with pytest.raises(ValueError, match="NOT_A_GENE"):
        trained.predict(ctrl, conditions={"perturbation": "NOT_A_GENE"}, n_steps=2)


def test_setup_rejects_unknown_perturbed_gene(ko_adata):
    bad = ko_adata.copy()
    bad.obs["perturbation"] = bad.obs["perturbation"].astype(str).replace("Gata1", "Xyz1")
    gd.GRNDiff.setup_anndata(bad, perturbation_key="perturbation", control="control")
    with pytest.raises(ValueError, match="Xyz1"):
        gd.GRNDiff(bad, prior=gd.datasets.krumsiek11_network(), modules=None, source="control")


def test_baselines_api(ko_adata):
    X = np.asarray(ko_adata.X, dtype=np.float64)
    lab = ko_adata.obs["perturbation"].astype(str).to_numpy()
    ctrl = X[lab == "control"]
    deltas = {g: X[lab == g].mean(0) - ctrl.mean(0) for g in TRAIN_KOS}
    np.testing.assert_array_equal(no_change(ctrl), ctrl)
    ms = MeanShift().fit(X, lab, "control")
    np.testing.assert_allclose(ms.predict(ctrl.mean(0)), ctrl.mean(0) + np.mean(list(ms.shifts_.values()), 0))
    add = additive(ctrl.mean(0), deltas, "Gata2+Pu.1")
    np.testing.assert_allclose(add, ctrl.mean(0) + deltas["Gata2"] + deltas["Pu.1"])
    lin = LinearPCARidge(n_comps=3).fit(deltas, expression=X, genes=list(ko_adata.var_names))
    d = lin.predict(UNSEEN)  # an unseen gene has an embedding too
    assert d.shape == (ko_adata.n_vars,) and np.isfinite(d).all()
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        lin.predict("NOT_A_GENE")
    m = evaluate_perturbation(ctrl + deltas["Gata2"], X[lab == "Gata2"], ctrl, top_n=5)
    assert set(m) == {"pearson_delta_top5", "pearson_delta_all", "direction_acc_top5", "energy_distance"}
    assert m["pearson_delta_top5"] == pytest.approx(1.0)


def test_sergio_network_files():
    """The shipped SERGIO networks parse into signed priors (sergio-rs itself is not needed)."""
    import sergio  # noqa: PLC0415

    edges = sergio.read_network("ds1")
    assert len(edges) == 258 and set(edges["n"]) == {2}
    prior = sergio.signed_prior(edges)
    assert list(prior.columns) == ["source", "target", "weight"] and set(prior["weight"]) <= {-1.0, 1.0}
    assert len(sergio.regulators(edges, 3)) == 7
