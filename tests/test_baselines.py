"""grndiff.baselines: each baseline is exact on data that follow its own model."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest

from grndiff.baselines import GaussianPCA, LinearPCARidge, MeanShift, additive, no_change


def test_no_change_returns_a_copy():
    ctrl = np.arange(6.0).reshape(2, 3)
    out = no_change(ctrl)
    np.testing.assert_array_equal(out, ctrl)
    out[0, 0] = 99
    assert ctrl[0, 0] == 0
    a = ad.AnnData(ctrl.astype(np.float32))
    assert no_change(a) is not a and no_change(a).shape == (2, 3)


def _kang_like(seed=0, G=20):
    """Three cell types, ctrl/stim; stim adds a type-specific shift."""
    rng = np.random.default_rng(seed)
    shifts = {"T": np.full(G, 1.0), "B": np.full(G, 2.0), "M": np.full(G, 3.0)}
    X, cond, types = [], [], []
    for t, s in shifts.items():
        base = rng.normal(size=G) * 0.1
        for c, extra in (("ctrl", 0.0), ("stim", s)):
            X.append(base + extra + rng.normal(size=(30, G)) * 0.01)
            cond += [c] * 30
            types += [t] * 30
    return np.vstack(X), np.array(cond), np.array(types)


def test_mean_shift_other_groups_and_unseen_perturbation():
    X, cond, types = _kang_like()
    held_out = (types == "M") & (cond == "stim")
    model = MeanShift().fit(X[~held_out], cond[~held_out], "ctrl", groups=types[~held_out])
    assert set(model.shifts_) == {("stim", "T"), ("stim", "B")}
    ctrl_M = X[(types == "M") & (cond == "ctrl")]
    pred = model.predict(ctrl_M, condition="stim")
    np.testing.assert_allclose(pred - ctrl_M, 1.5, atol=0.02)  # mean of T (1) and B (2)
    full = MeanShift().fit(X, cond, "ctrl", groups=types)
    np.testing.assert_allclose(full.shift("stim", exclude_group="M"), 1.5, atol=0.02)
    # knock-out screen: no groups, unseen perturbation gets the mean over training perturbations
    ko = MeanShift().fit(X, np.where(cond == "ctrl", "ctrl", "KO_" + types), "ctrl")
    assert ko.shift().mean() == pytest.approx(2.0, abs=0.1)
    with pytest.raises(KeyError, match="conditions seen"):
        ko.shift("KO_unknown")


def test_mean_shift_anndata():
    X, cond, types = _kang_like()
    a = ad.AnnData(X.astype(np.float32), obs=pd.DataFrame({"condition": cond, "cell_type": types},
                                                          index=[str(i) for i in range(len(X))]))
    m = MeanShift().fit_anndata(a, "condition", "ctrl", groupby="cell_type")
    assert len(m.shifts_) == 3
    with pytest.raises(KeyError, match="no column"):
        MeanShift().fit_anndata(a, "group_id", "ctrl")


def test_additive_exact_on_additive_data():
    rng = np.random.default_rng(1)
    ctrl = rng.normal(size=15)
    singles = {"A": rng.normal(size=15), "B": rng.normal(size=15)}
    truth = ctrl + singles["A"] + singles["B"]
    np.testing.assert_allclose(additive(ctrl, singles, "A+B"), truth)
    np.testing.assert_allclose(additive(ctrl, singles, "A+ctrl"), ctrl + singles["A"])
    cells = rng.normal(size=(4, 15))
    np.testing.assert_allclose(additive(cells, singles, "B+A"), cells + singles["A"] + singles["B"])
    with pytest.raises(KeyError, match="C"):
        additive(ctrl, singles, "A+C")


def test_linear_pca_ridge_recovers_unseen_gene():
    rng = np.random.default_rng(2)
    G, K, n = 60, 4, 400
    A = rng.normal(size=(G, K))  # true gene embedding
    expression = rng.normal(size=(n, K)) @ A.T + rng.normal(size=(n, G)) * 0.01  # (n, G)
    M = rng.normal(size=(K, K))
    b = rng.normal(size=G) * 0.3
    genes = [f"g{i}" for i in range(G)]
    delta = {g: A @ M @ A[i] + b for i, g in enumerate(genes)}  # Δ linear in the perturbed gene's embedding
    train = {g: delta[g] for g in genes[:30]}
    model = LinearPCARidge(n_comps=K, ridge=1e-6).fit(train, expression, genes)
    pred = model.predict(genes[45:50])  # never perturbed in training
    assert pred.shape == (5, G)
    truth = np.stack([delta[g] for g in genes[45:50]])
    assert np.abs(pred - truth).max() < 0.05 * np.abs(truth).max()
    # default (paper) settings and the paper's embedding from the Δ matrix still track the effect
    for m in (LinearPCARidge(n_comps=K).fit(train, expression, genes),
              LinearPCARidge(n_comps=K).fit(train, genes=genes)):
        p = m.predict("g47")
        assert p.shape == (G,) and np.corrcoef(p, delta["g47"])[0, 1] > 0.95
    with pytest.raises(KeyError, match="not among"):
        model.predict("MYC")


def test_gaussian_pca_shapes_and_group_means():
    rng = np.random.default_rng(3)
    G = 25
    centres = {"a": np.full(G, 1.0), "b": np.full(G, 4.0)}
    X = np.vstack([c + rng.normal(size=(200, G)) * 0.3 for c in centres.values()])
    groups = np.repeat(["a", "b"], 200)
    model = GaussianPCA(n_comps=10, seed=0).fit(X, groups)
    Y, labels = model.sample({"a": 300, "b": 100})
    assert Y.shape == (400, G) and (Y >= 0).all() and list(pd.unique(labels)) == ["a", "b"]
    for g, c in centres.items():
        np.testing.assert_allclose(Y[labels == g].mean(axis=0), c, atol=0.1)
    Y2, _ = model.sample({"a": 300, "b": 100})
    np.testing.assert_array_equal(Y, Y2)  # seeded
    near_zero, _ = GaussianPCA(n_comps=10, clip=False).fit(X - 1.0, groups).sample(50)
    assert (near_zero < 0).any()  # without clipping a Gaussian puts mass below 0
    a = ad.AnnData(X.astype(np.float32), obs=pd.DataFrame({"cell_type": groups}, index=[str(i) for i in range(400)]),
                   var=pd.DataFrame(index=[f"g{i}" for i in range(G)]))
    gen = GaussianPCA(n_comps=10).fit_anndata(a, groupby="cell_type").sample_anndata(7)
    assert gen.shape == (14, G) and list(gen.var_names) == list(a.var_names)
    assert gen.obs["cell_type"].value_counts().to_dict() == {"a": 7, "b": 7}


def test_linear_with_a_graph_embedding_predicts_unmeasured_perturbed_genes():
    import pandas as pd

    from grndiff.baselines import LinearPCARidge, graph_gene_embedding
    # two modules in the prior: A-chain regulators (A1..A4, plus unmeasured A9) and B-chain (B1..B4, B9)
    edges = [(f"A{i}", f"A{j}") for i in range(1, 5) for j in (5, 6)] + [("A9", "A1"), ("A9", "A5")]
    edges += [(f"B{i}", f"B{j}") for i in range(1, 5) for j in (5, 6)] + [("B9", "B1"), ("B9", "B5")]
    edges += [("A5", "B5")]  # one bridge keeps the graph connected
    prior = pd.DataFrame(edges, columns=["source", "target"])
    emb = graph_gene_embedding(prior, dim=3)
    assert "A9" in emb.index and emb.shape[1] == 3 and np.allclose(emb.to_numpy().std(0), 1.0)
    # knocking out an A gene raises gene 0, a B gene gene 1 (genes = the measured ones)
    genes = [f"A{i}" for i in range(1, 7)] + [f"B{i}" for i in range(1, 7)]
    deltas = {}
    for g in ["A1", "A2", "A3", "B1", "B2", "B3"]:
        d = np.zeros(len(genes))
        d[0 if g[0] == "A" else 1] = 1.0
        deltas[g] = d
    rng = np.random.default_rng(0)
    lin = LinearPCARidge(n_comps=3, ridge=0.01).fit(deltas, expression=rng.normal(size=(50, len(genes))),
                                                    genes=genes, pert_embedding=emb)
    a9, b9 = lin.predict("A9"), lin.predict("B9")  # neither is measured
    assert a9[0] > a9[1] and b9[1] > b9[0]
    with pytest.raises(KeyError, match="embedding"):
        lin.predict("Z1")
