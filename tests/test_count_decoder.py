"""The NB count decoder (grndiff.nn.count_decoder) and the latent flow built on it
(grndiff.train.LatentNBFlow)."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

from grndiff.data.normalize import log1p_cp10k
from grndiff.nn.count_decoder import NBAutoencoder, fit_nb_autoencoder, nb_log_prob
from grndiff.train import LatentNBFlow, train_vector_flow


def test_nb_log_prob_is_the_negative_binomial():
    k = torch.tensor([0.0, 1.0, 3.0, 10.0, 40.0])
    mu = torch.tensor([0.5, 2.0, 3.0, 8.0, 30.0])
    theta = torch.tensor([0.7, 2.0, 5.0, 1.5, 100.0])
    want = stats.nbinom.logpmf(k.numpy(), theta.numpy(), (theta / (theta + mu)).numpy())
    np.testing.assert_allclose(nb_log_prob(k, mu, theta).numpy(), want, rtol=1e-4, atol=1e-5)


def _two_types(n=300, genes=20, theta=2.0, seed=0):
    """Counts of two cell types, each with its own high genes; NB noise with inverse dispersion theta."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    prop = np.where(kind[:, None] == 0, np.r_[np.full(genes // 2, 3.0), np.ones(genes - genes // 2)],
                    np.r_[np.ones(genes // 2), np.full(genes - genes // 2, 3.0)])
    prop = prop / prop.sum(1, keepdims=True)
    mu = prop * rng.choice([60.0, 120.0], size=(n, 1))
    counts = rng.negative_binomial(theta, theta / (theta + mu)).astype(np.float32)
    return counts, pd.DataFrame({"cell_type": np.where(kind == 0, "A", "B")}), prop


def test_autoencoder_learns_the_counts_and_their_dispersion():
    counts, _, prop = _two_types(theta=2.0)
    C, X = torch.as_tensor(counts), torch.as_tensor(log1p_cp10k(counts))
    untrained = NBAutoencoder(C.shape[1], latent=4, hidden=32)
    ae = fit_nb_autoencoder(C, X, latent=4, hidden=32, steps=400, batch_size=64, lr=3e-3)
    # the floor: the true proportions and θ at each cell's own depth
    oracle = -nb_log_prob(C, torch.as_tensor(prop, dtype=torch.float32) * C.sum(1, keepdim=True),
                          torch.full((C.shape[1],), 2.0)).mean()
    with torch.no_grad():
        assert untrained.loss(C, X) - oracle > 0.2 and ae.loss(C, X) - oracle < 0.05
        assert 1.0 < float(ae.theta.median()) < 4.0  # the simulated θ = 2
        z = ae.encode(X)
        gen = ae.sample_counts(z, C.sum(1), torch.Generator().manual_seed(0))
        again = ae.sample_counts(z, C.sum(1), torch.Generator().manual_seed(0))
    assert torch.equal(gen, again) and gen.shape == C.shape and (gen == gen.round()).all()
    real_zero, gen_zero = (C == 0).float().mean(0), (gen == 0).float().mean(0)  # NB zeros, gene by gene
    assert (real_zero - gen_zero).abs().mean() < 0.05
    with pytest.raises(ValueError, match="same shape"):
        fit_nb_autoencoder(C, X[:, :3])


def test_latent_nb_flow_generates_counts_for_each_condition():
    counts, labels, _ = _two_types(n=400, seed=1)
    model = LatentNBFlow(4, ae_steps=300, flow_steps=300, hidden=64, depth=2, seed=0)
    model.fit(sp.csr_matrix(counts), labels)
    cond = pd.DataFrame({"cell_type": ["A"] * 200 + ["B"] * 200})
    X, C = model.sample(cond, seed=3, n_steps=10)
    assert X.shape == C.shape == (400, counts.shape[1]) and (C == np.round(C)).all() and C.min() >= 0
    np.testing.assert_allclose(X, log1p_cp10k(C), rtol=1e-6)
    a_high = C[:200, :10].sum(1) / C[:200].sum(1)  # type A's own genes carry ~3/4 of its counts
    b_high = C[200:, :10].sum(1) / C[200:].sum(1)
    assert a_high.mean() > 0.6 and b_high.mean() < 0.4
    X2, _ = model.sample(cond, seed=3, n_steps=10)
    assert np.array_equal(X, X2)
    with pytest.raises(KeyError, match="cell_type"):
        model.sample(pd.DataFrame({"other": ["A"]}))
    with pytest.raises(ValueError, match="raw counts"):
        LatentNBFlow().fit(counts + 0.5, labels)


def test_vector_flow_reaches_each_condition_mean():
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"g": rng.choice(["a", "b"], 600)})
    Z = torch.as_tensor(np.where(labels[["g"]] == "a", -2.0, 2.0) + 0.3 * rng.standard_normal((600, 2)),
                        dtype=torch.float32)
    sample = train_vector_flow(Z, labels, steps=300, hidden=64, depth=2, seed=0)
    out = sample(pd.DataFrame({"g": ["a"] * 100 + ["b"] * 100}), 0, 10)
    assert out.shape == (200, 2)
    assert out[:100].mean() < -1.0 and out[100:].mean() > 1.0
