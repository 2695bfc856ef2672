"""Counts out of generated cells: the lattice (nearest) and Poisson count models, library sizes
drawn from the training cells, and ``sample(counts=...)`` end to end."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import grndiff as gd
from grndiff.data.normalize import counts_from_log1p, draw_library_sizes, library_quantiles, log1p_cp10k
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


@pytest.fixture(scope="module")
def counts_model():
    base = gd.datasets.krumsiek11()
    rng = np.random.default_rng(0)
    depth = rng.choice([200.0, 2000.0], size=120)  # two very different depths
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
    depth = c.sum(1)  # the two training depths come back, not one median depth for every cell
    assert (depth < 600).mean() > 0.2 and (depth > 1200).mean() > 0.2
    # nearest: the counts are the log1p values' own lattice (log1p of them gives X back, at the cell's depth)
    assert np.allclose(np.log1p(c / depth[:, None] * 1e4), gen.X, atol=0.35)
    pois = model.sample(400, {"cell_type": "A"}, n_steps=2, seed=0, counts="poisson", progress=False)
    assert np.array_equal(pois.X, gen.X) and not np.array_equal(pois.layers["counts"], c)
    assert "counts" not in model.sample(5, n_steps=2, seed=0, progress=False).layers
    with pytest.raises(ValueError, match="counts="):
        model.sample(5, n_steps=2, counts="nb")
    model.save(tmp_path / "m")  # the library-size distribution is saved with the model
    loaded = GRNDiff.load(tmp_path / "m")
    again = loaded.sample(400, {"cell_type": "A"}, n_steps=2, seed=0, counts=True, progress=False)
    assert np.array_equal(again.layers["counts"], c)
