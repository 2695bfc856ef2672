"""grndiff.metrics: closed forms, identities, invariances and the evaluate() protocol."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest

from grndiff.metrics import (
    PCAProjection,
    classifier_auc,
    direction_accuracy,
    energy_distance,
    evaluate,
    evaluate_perturbation,
    fit_pca,
    marker_overlap,
    mean_pearson,
    mmd_rbf,
    pearson_delta,
    pearson_delta_all,
    split_half_ceiling,
    tf_target_corr,
    to_records,
    var_pearson,
    wasserstein2,
    zero_frac_error,
)


def _gauss(n, d=5, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


# ---------------------------------------------------------------- distances
def test_energy_exact_tiny_example():
    x = np.array([[0.0], [1.0]])
    y = np.array([[3.0], [5.0]])
    # E|X−Y| = (3+5+2+4)/4 = 3.5; U-stat E|X−X'| = 1, E|Y−Y'| = 2 → 2·3.5 − 1 − 2 = 4
    assert energy_distance(x, y) == pytest.approx(4.0)
    # V-stat within terms include the zero diagonal: 0.5 and 1.0 → 7 − 1.5 = 5.5
    assert energy_distance(x, y, unbiased=False) == pytest.approx(5.5)


def test_energy_matches_bruteforce_and_grows_with_shift():
    x, y = _gauss(40, seed=1), _gauss(30, shift=0.5, seed=2)
    d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
    ref = 2 * d(x, y).mean() - d(x, x).sum() / (40 * 39) - d(y, y).sum() / (30 * 29)
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-10)
    same = energy_distance(_gauss(400, seed=3), _gauss(400, seed=4))
    values = [energy_distance(_gauss(400, seed=3), _gauss(400, shift=s, seed=4)) for s in (0.25, 0.5, 1.0)]
    assert abs(same) < 0.03
    assert same < values[0] < values[1] < values[2]


def test_mmd_symmetric_and_zero_for_same_distribution():
    x, y = _gauss(200, seed=5), _gauss(150, shift=1.0, seed=6)
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(y, x), rel=1e-9)
    assert abs(mmd_rbf(_gauss(300, seed=7), _gauss(300, seed=8))) < 0.01
    assert mmd_rbf(x, y) > 0.1
    assert mmd_rbf(x, y, bandwidths=[1.0]) > 0


def test_w2_shifted_gaussians_closed_form():
    # same covariance, mean shift only: W2 = |μ1 − μ2| (finite samples add a little)
    shift = np.array([3.0, 0.0])
    x, y = _gauss(500, d=2, seed=9), _gauss(500, d=2, seed=10) + shift
    assert wasserstein2(x, y) == pytest.approx(3.0, abs=0.25)
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-6)


def test_classifier_auc_chance_and_separable():
    assert abs(classifier_auc(_gauss(200, seed=11), _gauss(300, seed=12)) - 0.5) < 0.1
    assert classifier_auc(_gauss(100, seed=13), _gauss(100, shift=5.0, seed=14)) > 0.99


def test_distances_reject_bad_shapes():
    with pytest.raises(ValueError, match="same D"):
        energy_distance(np.zeros((3, 2)), np.zeros((3, 4)))


# ---------------------------------------------------------------- gene level
def _expr(n=120, G=40, seed=0):
    rng = np.random.default_rng(seed)
    X = np.log1p(rng.poisson(rng.gamma(1.0, 2.0, size=G), size=(n, G)).astype(float))
    labels = np.repeat(["a", "b", "c"], n // 3)
    X[labels == "a", :5] += 2.0  # markers of group a
    X[labels == "b", 5:10] += 2.0
    return X, labels


def test_gene_level_identities():
    X, labels = _expr()
    assert mean_pearson(X, X) == pytest.approx(1.0)
    assert var_pearson(X, X) == pytest.approx(1.0)
    assert zero_frac_error(X, X) == 0.0
    assert zero_frac_error(X, X + 1.0) == pytest.approx((X <= 1e-3).mean())
    assert marker_overlap(X, X, labels, labels) == {"a": 1.0, "b": 1.0, "c": 1.0}
    top = marker_overlap(X, X[::-1], labels, labels[::-1], n_top=5)  # same cells, other order
    assert top == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_tf_target_corr():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    X[:, 1] += X[:, 0]
    X[:, 2] -= X[:, 0]
    X[:, 5] = 0.0  # constant gene: its edge is ignored
    genes = [f"g{i}" for i in range(6)]
    prior = pd.DataFrame({"source": ["g0", "g0", "g3", "g3", "g0", "gX"],
                          "target": ["g1", "g2", "g4", "g5", "g0", "g1"], "weight": 1.0})
    assert tf_target_corr(X, X, genes, prior) == pytest.approx(1.0)
    Y = X.copy()
    Y[:, 1:3] = rng.normal(size=(200, 2))  # destroy the TF→target co-expression
    assert tf_target_corr(X, Y, genes, prior) < 0.9
    with pytest.warns(UserWarning, match="prior edges"):
        assert np.isnan(tf_target_corr(X, X, genes, prior.iloc[:1]))


# ---------------------------------------------------------------- evaluate()
def _adata(X, labels, genes=None):
    genes = genes if genes is not None else [f"g{i}" for i in range(X.shape[1])]
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(X))])
    return ad.AnnData(X.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))


def test_evaluate_identical_is_perfect_and_tidy():
    X, labels = _expr(seed=2)
    real = _adata(X, labels)
    rep = evaluate(real, real.copy(), groupby="cell_type", n_pcs=10, metrics=None)
    assert list(rep.columns) == ["group", "metric", "value"]
    wide = rep.pivot(index="group", columns="metric", values="value")
    assert set(wide.index) == {"a", "b", "c", "all"}
    assert wide.loc["all", "energy_distance"] < 0  # identical sets: U-stat within terms exceed the cross term
    assert wide.loc["all", "wasserstein2"] == pytest.approx(0.0, abs=1e-6)
    assert wide.loc["all", "mean_pearson"] == pytest.approx(1.0)
    assert wide.loc["all", "marker_overlap"] == pytest.approx(1.0)
    assert wide.loc["all", "energy_distance"] == pytest.approx(wide.loc[["a", "b", "c"], "energy_distance"].mean())
    recs = to_records(rep, dataset="toy", method="real", seed=0)
    assert recs[0].keys() == {"dataset", "method", "seed", "group", "metric", "value"}


def test_evaluate_aligns_genes_and_rejects_disjoint():
    X, labels = _expr(seed=3)
    real = _adata(X, labels)
    perm = np.random.default_rng(0).permutation(X.shape[1])
    shuffled = real[:, perm].copy()
    a = evaluate(real, real.copy(), groupby="cell_type", n_pcs=5, metrics=["energy_distance", "mean_pearson"])
    b = evaluate(real, shuffled, groupby="cell_type", n_pcs=5, metrics=["energy_distance", "mean_pearson"])
    np.testing.assert_allclose(a["value"], b["value"], atol=1e-9)
    other = _adata(X, labels, genes=[f"h{i}" for i in range(X.shape[1])])
    with pytest.raises(ValueError, match="different genes"):
        evaluate(real, other, groupby="cell_type")


def test_evaluate_pca_fitted_on_reference_cells():
    X, labels = _expr(n=150, seed=4)
    held_out = _adata(X[:60], labels[:60])
    everything = _adata(X, labels)
    # a generator that returns exactly the held-out cells has ≈ 0 energy in the reference's PC space
    rep = evaluate(held_out, held_out.copy(), pca_reference=everything, n_pcs=8,
                   metrics=["energy_distance", "wasserstein2"])
    np.testing.assert_allclose(rep.attrs["params"]["pca_explained_variance"], fit_pca(X, n=8).explained_variance,
                               rtol=1e-4)
    assert not np.allclose(rep.attrs["params"]["pca_explained_variance"], fit_pca(X[:60], n=8).explained_variance)
    assert rep.set_index("metric").loc["wasserstein2", "value"].max() == pytest.approx(0.0, abs=1e-6)
    e = rep.set_index("metric").loc["energy_distance", "value"]
    assert abs(np.asarray(e)).max() < 0.5
    # a shifted generator is far in the same PC space
    shifted = _adata(X[:60] + 1.0, labels[:60])
    far = evaluate(held_out, shifted, pca_reference=everything, n_pcs=8, metrics=["energy_distance"])
    assert list(far["group"]) == ["all"] and far["value"].iloc[0] > 1.0


def test_evaluate_errors_speak():
    X, labels = _expr(seed=5)
    real = _adata(X, labels)
    with pytest.raises(KeyError, match="no column"):
        evaluate(real, real, groupby="tissue")
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(real, real, metrics=["fid"])
    with pytest.raises(ValueError, match="needs prior"):
        evaluate(real, real, metrics=["tf_target_corr"])


# ---------------------------------------------------------------- perturbation
def test_perturbation_perfect_and_opposite():
    rng = np.random.default_rng(6)
    ctrl = rng.normal(size=(50, 30))
    true = ctrl + rng.normal(size=30) * 2
    assert pearson_delta(true, true, ctrl) == pytest.approx(1.0)
    assert pearson_delta_all(true.mean(0), true, ctrl.mean(0)) == pytest.approx(1.0)
    assert direction_accuracy(true, true, ctrl) == 1.0
    flipped = 2 * ctrl.mean(0) - true.mean(0)
    assert pearson_delta(flipped, true, ctrl) == pytest.approx(-1.0)
    assert direction_accuracy(flipped, true, ctrl, top_n=10) == 0.0
    mask = np.zeros(30, dtype=bool)
    mask[:4] = True
    assert pearson_delta(true, true, ctrl, de_genes=mask) == pytest.approx(1.0)


def test_evaluate_perturbation_and_ceiling():
    rng = np.random.default_rng(7)
    ctrl = rng.normal(size=(80, 25))
    true = rng.normal(size=(80, 25)) + np.linspace(-2, 2, 25)
    pca = fit_pca(np.vstack([true, ctrl]), n=5)
    assert isinstance(pca, PCAProjection) and pca.components.shape == (5, 25)
    out = evaluate_perturbation(true, true, ctrl, pca=pca)
    assert set(out) == {"pearson_delta_top20", "pearson_delta_all", "direction_acc_top20", "energy_distance"}
    assert out["pearson_delta_top20"] == pytest.approx(1.0) and out["direction_acc_top20"] == 1.0
    assert out["energy_distance"] < 0
    assert np.isnan(evaluate_perturbation(true.mean(0), true, ctrl)["energy_distance"])
    ceil = split_half_ceiling(true, ctrl, seed=0)
    assert 0.8 < ceil["pearson_delta_top20"] <= 1.0
    assert abs(ceil["energy_distance"]) < 0.5


def test_fit_pca_matches_svd_and_roundtrips():
    X = _gauss(60, d=8, seed=8) @ np.random.default_rng(0).normal(size=(8, 8))
    pca = fit_pca(X, n=8)
    np.testing.assert_allclose(pca.inverse_transform(pca.transform(X)), X, atol=1e-8)
    np.testing.assert_allclose(pca.explained_variance.sum(), X.var(axis=0, ddof=1).sum(), rtol=1e-8)
    np.testing.assert_allclose(fit_pca(X, n=3).components, pca.components[:3])


def test_top_changes_lists_the_largest_true_changes_with_predictions():
    from grndiff.metrics import top_changes

    rng = np.random.default_rng(0)
    ctrl = rng.normal(1.0, 0.1, size=(50, 6))
    shift = np.array([0.0, 3.0, -2.0, 0.5, 0.0, 1.0])
    true = ctrl + shift
    pred = ctrl + 0.5 * shift
    genes = [f"g{i}" for i in range(6)]
    table = top_changes(pred, true, ctrl, n_top=3, genes=genes)
    assert list(table.index) == ["g1", "g2", "g5"]
    np.testing.assert_allclose(table["true Δ"], [3.0, -2.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(table["predicted Δ"], [1.5, -1.0, 0.5], atol=1e-9)
    np.testing.assert_allclose(table["ctrl"], ctrl.mean(0)[[1, 2, 5]])
    # AnnData in: gene names from var_names
    as_ad = [ad.AnnData(X=a.astype(np.float32), var=pd.DataFrame(index=genes)) for a in (pred, true, ctrl)]
    assert list(top_changes(*as_ad, n_top=2).index) == ["g1", "g2"]
    with pytest.raises(ValueError, match="same genes"):
        top_changes(pred[:, :5], true, ctrl)
