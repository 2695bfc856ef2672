"""grndiff.graph.GeneGraph: alignment of a prior to var_names, coverage, flags, state, permutation."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from grndiff import datasets
from grndiff.graph import EDGE_KNN, EDGE_PRIOR, EDGE_REVERSE, EDGE_SELF, GeneGraph  # noqa: F401  (query's @EDGE_KNN)

PRIOR = pd.DataFrame({"source": ["A", "A", "B", "C", "A", "X"],
                      "target": ["B", "C", "A", "C", "B", "A"],
                      "weight": [1.0, -2.0, -1.0, 0.5, 1.0, 1.0]})
GENES = ["A", "B", "C", "D"]


def _edges(graph: GeneGraph, edge_type: int) -> set[tuple[str, str]]:
    j, i = graph.edge_index[:, graph.edge_type == edge_type].tolist()
    return {(graph.genes[a], graph.genes[b]) for a, b in zip(j, i)}


def test_prior_edges_signs_weights_and_coverage():
    g = GeneGraph.from_prior(PRIOR, GENES)
    assert _edges(g, EDGE_PRIOR) == {("A", "B"), ("A", "C"), ("B", "A"), ("C", "C")}
    df = g.to_dataframe().set_index(["source", "target"])
    assert df.loc[("A", "C"), "weight"] == -2.0 and df.loc[("B", "A"), "weight"] == -1.0
    assert set(g.edge_sign.tolist()) <= {-1.0, 0.0, 1.0} and (g.edge_weight >= 0).all()
    c = g.coverage
    assert (c["n_genes"], c["n_edges_prior_total"], c["n_edges_kept"], c["n_edges_dropped"]) == (4, 5, 4, 1)
    assert (c["n_tfs"], c["n_isolated"], c["n_genes_in_prior"], c["n_self_edges_kept"]) == (3, 1, 3, 1)
    assert "4 edges kept" in g.summary()


def test_self_loops_isolated_genes_kept_and_reverse_edges():
    g = GeneGraph.from_prior(PRIOR, GENES)
    # every gene has exactly one self edge: C keeps its prior autoregulation, others get type 2
    assert _edges(g, EDGE_SELF) == {("A", "A"), ("B", "B"), ("D", "D")}
    assert g.n_genes == 4 and g.in_degree(edge_types=[EDGE_PRIOR]).tolist() == [1, 1, 2, 0]
    none = GeneGraph.from_prior(PRIOR, GENES, self_loops=False)
    assert _edges(none, EDGE_SELF) == set() and none.n_edges == 4
    rev = GeneGraph.from_prior(PRIOR, GENES, add_reverse=True)
    assert _edges(rev, EDGE_REVERSE) == {("C", "A")}  # A↔B already both ways; C→C is a self edge
    assert not rev.to_dataframe().duplicated(["source", "target"]).any()


def test_duplicates_and_case_only_matches_are_merged_and_reported():
    prior = pd.DataFrame({"source": ["GATA1", "Gata1", "SPI1"], "target": ["Spi1", "SPI1", "gata1"],
                          "weight": [-1.0, -1.0, -1.0]})
    g = GeneGraph.from_prior(prior, ["Gata1", "Spi1"])
    assert _edges(g, EDGE_PRIOR) == {("Gata1", "Spi1"), ("Spi1", "Gata1")}
    assert g.coverage["n_case_only_matches"] == 3  # GATA1, SPI1, gata1
    assert g.coverage["n_duplicates_merged"] == 1
    assert "only up to case" in g.summary()
    with pytest.raises(ValueError, match="do not overlap"):
        GeneGraph.from_prior(prior, ["Gata1", "Spi1"], case_insensitive=False)


def test_zero_overlap_names_examples_from_both_sides():
    with pytest.raises(ValueError) as err:
        GeneGraph.from_prior(PRIOR, ["ENSG0001", "ENSG0002"])
    msg = str(err.value)
    assert "ENSG0001" in msg and "'A'" in msg and "symbols=" in msg and "organism" in msg
    empty = GeneGraph.from_prior(PRIOR, ["ENSG0001", "ENSG0002"], allow_empty=True)
    assert _edges(empty, EDGE_SELF) == {("ENSG0001", "ENSG0001"), ("ENSG0002", "ENSG0002")}


def test_modules_membership_and_size_filter():
    sets = pd.DataFrame({"source": ["S1"] * 3 + ["S2"] * 2 + ["S3"] * 4,
                         "target": ["A", "B", "C", "A", "Z", "A", "B", "C", "D"]})
    g = GeneGraph.from_prior(PRIOR, GENES, modules=sets, min_module_size=2, max_module_size=3)
    assert g.module_names == ["S1"] and g.membership.shape == (4, 1)
    assert g.membership[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert (g.coverage["n_modules"], g.coverage["modules_dropped"]) == (1, 2)
    g = GeneGraph.from_prior(PRIOR, GENES, modules=sets, min_module_size=1, max_module_size=4)
    assert g.module_names == ["S1", "S2", "S3"] and g.membership.sum(0).tolist() == [3.0, 1.0, 4.0]
    with pytest.raises(ValueError, match="no gene set has between 5 and 500"):
        GeneGraph.from_prior(PRIOR, GENES, modules=sets)


def test_knn_fallback_links_isolated_genes_by_correlation():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 1))
    X = np.hstack([rng.normal(size=(200, 3)), -base, base + 0.1 * rng.normal(size=(200, 1))])  # (B, 5); E ~ -D
    genes = GENES + ["E"]
    g = GeneGraph.from_prior(PRIOR, genes, isolated="knn", expression=sparse.csr_matrix(X), knn_k=1)
    knn = g.to_dataframe().query("type == @EDGE_KNN")
    assert set(zip(knn["source"], knn["target"])) == {("E", "D"), ("D", "E")}
    assert (knn["weight"] < -0.9).all()  # strong negative correlation → sign -1, weight |r|
    dense = GeneGraph.from_prior(PRIOR, genes, isolated="knn", expression=X, knn_k=1)
    assert torch.equal(dense.edge_index, g.edge_index) and torch.allclose(dense.edge_weight, g.edge_weight)
    with pytest.raises(ValueError, match="needs expression"):
        GeneGraph.from_prior(PRIOR, genes, isolated="knn")
    with pytest.raises(ValueError, match="5 gene columns"):
        GeneGraph.from_prior(PRIOR, genes, isolated="knn", expression=X[:, 1:])


def test_state_round_trip_with_weights_only():
    sets = pd.DataFrame({"source": ["S1"] * 3, "target": ["A", "B", "C"]})
    g = GeneGraph.from_prior(PRIOR, GENES, modules=sets, min_module_size=1, add_reverse=True)
    buf = io.BytesIO()
    torch.save(g.to_state(), buf)
    buf.seek(0)
    h = GeneGraph.from_state(torch.load(buf, weights_only=True))
    assert h.genes == g.genes and h.module_names == g.module_names and h.coverage == g.coverage
    for name in ("edge_index", "edge_sign", "edge_weight", "edge_type", "membership"):
        assert torch.equal(getattr(h, name), getattr(g, name)), name


def test_permute_is_consistent():
    g = GeneGraph.from_prior(PRIOR, GENES, modules=pd.DataFrame({"source": ["S"] * 2, "target": ["A", "D"]}),
                             min_module_size=1, add_reverse=True)
    perm = [2, 0, 3, 1]
    p = g.permute(perm)
    assert p.genes == [GENES[k] for k in perm]
    key = ["source", "target", "weight", "type"]
    assert p.to_dataframe().sort_values(key).values.tolist() == g.to_dataframe().sort_values(key).values.tolist()
    assert torch.equal(p.membership, g.membership[perm])
    assert torch.equal(p.in_degree(), g.in_degree()[perm])
    assert p.permute(np.argsort(perm)).to_dataframe().equals(g.to_dataframe())
    with pytest.raises(ValueError, match="permutation"):
        g.permute([0, 0, 1, 2])


def test_constructor_validates():
    with pytest.raises(ValueError, match="outside"):
        GeneGraph(["a", "b"], [[0], [2]], [1.0], [1.0])
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        GeneGraph(["a", "b"], [[0], [1]], [0.5], [1.0])
    with pytest.raises(ValueError, match="unique"):
        GeneGraph(["a", "a"], [[0], [1]], [1.0], [1.0])


def test_ensembl_indexed_data_maps_through_symbols():
    adata = datasets.kang2018_ctrl()
    with pytest.raises(ValueError, match="Ensembl"):
        GeneGraph.from_prior("collectri", adata.var_names)
    g = GeneGraph.from_prior("collectri", adata.var_names, symbols=adata.var["feature"])
    assert g.genes == list(adata.var_names) and g.coverage["n_edges_kept"] > 1000
    assert g.coverage["n_genes"] == 2511 and g.coverage["n_isolated"] < 2511


def test_kang2018_collectri_coverage(capsys):
    """kang2018 (1,267 genes) × CollecTRI: the figures quoted in the docs and the issue (1,033 edges)."""
    adata = datasets.kang2018()
    g = GeneGraph.from_prior("collectri", adata.var_names, modules="hallmark", verbose=True)
    print(g.coverage)
    c = g.coverage
    assert c["n_edges_kept"] == 1033  # exact symbol matches; no duplicates, no case-only matches
    assert (c["n_tfs"], c["n_isolated"], c["n_genes_in_prior"]) == (53, 869, 651)
    assert (c["n_self_edges_kept"], c["n_case_only_matches"], c["n_duplicates_merged"]) == (35, 0, 0)
    assert c["n_edges_dropped"] == 43178 - 1033
    assert (c["n_modules"], c["modules_dropped"]) == (45, 5)
    assert g.n_edges == 1033 + 1267 - 35  # + one self-loop per gene without autoregulation
    assert "1,033 edges kept" in capsys.readouterr().out
