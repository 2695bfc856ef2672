"""grndiff.tl module read-outs and grndiff.pl plots, on krumsiek11 (11 genes, 640 cells)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import grndiff as gd  # noqa: E402

MODULES = {"erythroid": ["Gata1", "Fog1", "EKLF", "SCL"], "myeloid": ["Cebpa", "Pu.1", "cJun", "EgrNab", "Gfi1"]}
SETS = pd.DataFrame([(k, g, 1.0) for k, gs in MODULES.items() for g in gs], columns=["source", "target", "weight"])


@pytest.fixture(scope="module")
def krumsiek():
    adata = gd.datasets.krumsiek11()
    gd.GRNDiff.setup_anndata(adata, condition_keys=["cell_type"])
    return adata


@pytest.fixture(scope="module")
def model(krumsiek):
    """Prior modules + 2 learned modules; learned_0 is planted on the erythroid genes."""
    torch.manual_seed(0)
    m = gd.GRNDiff(krumsiek, prior=gd.datasets.krumsiek11_network(), modules=SETS,
                   graph_kwargs={"min_module_size": 3}, hidden=16, depth=2, token_depth=1, n_learned_modules=2)
    m.train(max_steps=20, max_epochs=100, progress_bar=False)
    pooling = m.module.net.pooling
    with torch.no_grad():
        planted = torch.zeros_like(pooling.assign_logits)
        ery = [m.var_names.index(g) for g in MODULES["erythroid"]]
        planted[:, 1] = 5.0
        planted[ery, 0], planted[ery, 1] = 5.0, 0.0
        pooling.assign_logits.copy_(planted)
    return m


def test_module_genes_learned_and_prior(model):
    tab = gd.tl.module_genes(model, n_top=4)  # default: learned modules
    assert list(tab.columns) == ["module", "rank", "gene", "weight"]
    assert set(tab["module"]) == {"learned_0", "learned_1"} and (tab.groupby("module").size() == 4).all()
    assert set(tab.loc[tab["module"] == "learned_0", "gene"]) == set(MODULES["erythroid"])
    assert tab["weight"].between(0, 1).all() and (tab.groupby("module")["weight"].diff().dropna() <= 0).all()
    prior = gd.tl.module_genes(model, n_top=20, modules="prior")
    assert set(prior.loc[prior["module"] == "myeloid", "gene"]) == set(MODULES["myeloid"])  # members only
    with pytest.raises(KeyError, match="unknown module"):
        gd.tl.module_genes(model, modules=["nope"])


def test_module_enrichment_finds_planted_set_and_matches_fisher(model):
    res = gd.tl.module_enrichment(model, SETS, n_top=4, fdr=0.05, min_size=3)
    assert {"module", "gene_set", "overlap", "pval", "fdr", "significant"} <= set(res.columns)
    best = res[res["module"] == "learned_0"].iloc[0]
    assert best["gene_set"] == "erythroid" and best["overlap"] == 4 and bool(best["significant"])
    # one-sided hypergeometric = one-sided Fisher's exact test on the same table
    a, K, k, G = 4, 4, 4, 11
    p = stats.fisher_exact([[a, k - a], [K - a, G - K - k + a]], alternative="greater")[1]
    assert np.isclose(best["pval"], p) and np.isclose(best["pval"], 1 / 330)
    assert (res["fdr"] >= res["pval"] - 1e-12).all()
    with pytest.raises(ValueError, match="no gene set keeps"):
        gd.tl.module_enrichment(model, SETS.assign(target="X" + SETS["target"]), min_size=3)


@pytest.fixture(scope="module")
def tokens_adata(model, krumsiek):
    a = krumsiek.copy()
    gd.tl.pathway_tokens(model, a)
    return a


@pytest.mark.parametrize("kind", ["heatmap", "dotplot"])
def test_pl_tokens_renders_and_saves(tokens_adata, kind, tmp_path):
    out = tmp_path / f"tokens_{kind}.png"
    ax = gd.pl.tokens(tokens_adata, "cell_type", kind=kind, n_top=3, show=False, save=out)
    assert isinstance(ax, plt.Axes) and out.stat().st_size > 1000
    assert len(ax.get_yticklabels()) == tokens_adata.obs["cell_type"].nunique()
    assert len(ax.get_xticklabels()) == 3
    plt.close("all")
    with pytest.raises(ValueError, match="kind"):
        gd.pl.tokens(tokens_adata, "cell_type", kind="violin")


def test_pl_tokens_into_given_axes(tokens_adata):
    fig, ax = plt.subplots()
    assert gd.pl.tokens(tokens_adata, "cell_type", ax=ax) is ax  # never shows a figure it did not create
    plt.close(fig)


def test_pl_umap_real_vs_generated(model, krumsiek, tmp_path):
    """basis="pca" keeps the test fast (UMAP's numba compilation alone takes ~10 s); tutorial 01 runs UMAP."""
    real = krumsiek[::4].copy()
    gen = model.sample(60, conditions={"cell_type": "Mo"}, n_steps=4, seed=0)
    out = tmp_path / "umap.png"
    fig = gd.pl.umap_real_vs_generated(real, gen, color="cell_type", basis="pca", n_pcs=5, show=False, save=out)
    assert len(fig.axes) == 2 and out.stat().st_size > 1000
    n_pts = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert n_pts == real.n_obs + gen.n_obs
    plt.close("all")


def test_pl_module_graph_and_loss_curves(model, tmp_path):
    ax = gd.pl.module_graph(model, "erythroid", layer=0, head=None, top_edges=10, show=False,
                            save=tmp_path / "graph.png")
    assert isinstance(ax, plt.Axes) and (tmp_path / "graph.png").exists()
    assert "erythroid" in ax.get_title() and len(ax.texts) >= 4  # one label per drawn gene
    ax2 = gd.pl.module_graph(model, 0, head=1, show=False)
    assert "head 1" in ax2.get_title()
    with pytest.raises(KeyError, match="not found"):
        gd.pl.module_graph(model, "nope", show=False)
    ax3 = gd.pl.loss_curves(model, show=False, save=tmp_path / "loss.png")
    assert len(ax3.get_lines()) >= 1 and (tmp_path / "loss.png").exists()
    plt.close("all")
