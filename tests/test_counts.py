"""Counts out of generated cells: the lattice (nearest) and Poisson count models, each cell's
library size read off its own values, and ``sample(counts=...)`` end to end."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import grndiff as gd
from grndiff.data.normalize import (
    counts_from_log1p,
    draw_library_sizes,
    estimate_library_sizes,
    library_quantiles,
    log1p_cp10k,
)
from grndiff.model import GRNDiff


def test_nearest_counts_invert_log1p_cp10k_exactly():
    rng = np.random.default_rng(0)
    counts = rng.negative_binomial(2, 0.3, size=(50, 30)).astype(np.float32)
    counts[:, 0] += 1
    X = log1p_cp10k(counts)
    back = counts_from_log1p(X, counts.sum(1), model="nearest")
    assert back.dtype == np.float32 and np.array_equal(back, counts)


def test_nearest_rounds_half_a_count_and_poisson_keeps_the_mean():
    lib = 1e4  # CP10k at a depth of 10,000: expm1(x) is the count itself
    X = np.log1p(np.array([[0.0, 0.49, 0.51, 2.4, 1000.0]]))
    assert counts_from_log1p(X, lib).tolist() == [[0.0, 0.0, 1.0, 2.0, 1000.0]]
    assert counts_from_log1p(-np.ones((1, 3)), lib).tolist() == [[0.0, 0.0, 0.0]]  # negative: read as 0
    draws = counts_from_log1p(np.full((20_000, 1), np.log1p(3.0)), lib, model="poisson",
                              rng=np.random.default_rng(1))
    assert abs(draws.mean() - 3.0) < 0.05 and (draws == 0).mean() > 0.03  # Poisson: P(0) = e^-3 ≈ 0.05
    with pytest.raises(ValueError, match="count model"):
        counts_from_log1p(X, lib, model="nb")


def test_library_sizes_follow_the_training_distribution():
    rng = np.random.default_rng(2)
    totals = rng.lognormal(7.5, 0.5, size=5000)
    q = library_quantiles(np.r_[totals, 0.0])  # an empty cell is left out
    assert len(q) == 101 and q[0] == pytest.approx(totals.min()) and q[-1] == pytest.approx(totals.max())
    drawn = draw_library_sizes(q, 20_000, np.random.default_rng(3))
    assert drawn.min() >= totals.min() and drawn.max() <= totals.max()
    assert np.median(drawn) == pytest.approx(np.median(totals), rel=0.03)
    assert np.quantile(drawn, 0.9) == pytest.approx(np.quantile(totals, 0.9), rel=0.03)


def test_each_cell_depth_is_read_off_its_own_lattice():
    """Shallow cells (most detected genes hold 1–2 counts): the estimate is the true depth; rounding
    with it gives the counts back, where a depth drawn from the training range does not."""
    rng = np.random.default_rng(4)
    depth = rng.lognormal(7.0, 0.4, size=300)
    counts = rng.poisson(depth[:, None] * rng.dirichlet(np.full(2000, 0.3))[None, :]).astype(np.float32)
    counts[:, 0] += 1
    totals = counts.sum(1)
    X = log1p_cp10k(counts)
    q = library_quantiles(totals)
    est = estimate_library_sizes(X, q)
    inside = (totals >= q[1]) & (totals <= q[99])
    assert np.allclose(est[inside], totals[inside], rtol=1e-4)
    assert est.min() >= q[1] and est.max() <= q[99]
    back = counts_from_log1p(X, est)
    assert np.array_equal(back[inside], counts[inside])
    drawn = counts_from_log1p(X, draw_library_sizes(q, len(X), np.random.default_rng(5)))
    assert (drawn[inside] != counts[inside]).mean() > 10 * (back[inside] != counts[inside]).mean() + 1e-3
    empty = estimate_library_sizes(np.zeros((3, 5)), q)  # nothing detected: a depth from the training range
    assert ((empty >= q[1]) & (empty <= q[99])).all()


@pytest.fixture(scope="module")
def counts_model():
    base = gd.datasets.krumsiek11()
    rng = np.random.default_rng(0)
    depth = rng.choice([12.0, 40.0], size=120)  # shallow, two depths: one-count genes in every cell
    X = rng.poisson(depth[:, None] / base.n_vars, size=(120, base.n_vars)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["A", "B"], 120))},
                       index=[f"c{i}" for i in range(120)])
    adata = ad.AnnData(X=X.copy(), obs=obs, var=base.var.copy(), layers={"counts": sp.csr_matrix(X)})
    GRNDiff.setup_anndata(adata, layer="counts", condition_keys=["cell_type"])
    model = GRNDiff(adata, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=8, heads=2, depth=1,
                    token_depth=0, ema_decay=0.0)
    return model, X.sum(1)


def test_sample_counts_are_integers_at_the_training_depths(counts_model, tmp_path):
    model, totals = counts_model
    gen = model.sample(400, {"cell_type": "A"}, n_steps=2, seed=0, counts=True, progress=False)
    c = gen.layers["counts"]
    assert c.shape == gen.shape and np.array_equal(c, np.round(c)) and c.min() >= 0
    assert gen.uns["grndiff"]["params"]["counts"] == "nearest"
    lo, hi = np.quantile(totals, [0.01, 0.99])
    big = c >= 10  # the depth each cell was rounded at: count / expm1(x) · 1e4, within the training depths
    depth = c[big] / np.expm1(gen.X[big]) * 1e4
    assert big.sum() > 100 and depth.min() >= 0.9 * lo and depth.max() <= 1.1 * hi
    pois = model.sample(400, {"cell_type": "A"}, n_steps=2, seed=0, counts="poisson", progress=False)
    assert np.array_equal(pois.X, gen.X) and not np.array_equal(pois.layers["counts"], c)
    assert "counts" not in model.sample(5, n_steps=2, seed=0, progress=False).layers
    with pytest.raises(ValueError, match="counts="):
        model.sample(5, n_steps=2, counts="nb")
    model.save(tmp_path / "m")  # the library-size distribution is saved with the model
    loaded = GRNDiff.load(tmp_path / "m")
    again = loaded.sample(400, {"cell_type": "A"}, n_steps=2, seed=0, counts=True, progress=False)
    assert np.array_equal(again.layers["counts"], c)
