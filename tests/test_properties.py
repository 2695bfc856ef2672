"""Property-based tests (hypothesis): graph alignment and condition encoding hold for any gene
order, duplicated prior rows and arbitrary label strings."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grndiff.data.conditions import CategoricalEncoder, SetEncoder, UnknownConditionError
from grndiff.graph import GeneGraph

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRESENT = [f"g{i}" for i in range(8)]
ABSENT = ["x0", "x1", "x2"]


@st.composite
def genes_and_prior(draw):
    genes = draw(st.permutations(PRESENT))
    genes = genes[: draw(st.integers(2, len(genes)))]
    names = st.sampled_from(PRESENT + ABSENT)
    rows = draw(st.lists(st.tuples(names, names, st.sampled_from([-1.0, 0.5, 1.0, 2.0])), min_size=0, max_size=25))
    rows += draw(st.lists(st.sampled_from(rows), max_size=5)) if rows else []  # exact duplicate rows
    prior = pd.DataFrame(rows, columns=["source", "target", "weight"]).astype({"weight": float})
    return list(genes), prior


def _edges(graph: GeneGraph) -> set:
    df = graph.to_dataframe()
    return set(zip(df["source"], df["target"], df["type"], np.round(df["weight"], 6)))


@FAST
@given(genes_and_prior())
def test_graph_edges_only_between_present_genes_and_counts_add_up(data):
    genes, prior = data
    g = GeneGraph.from_prior(prior, genes, allow_empty=True, case_insensitive=False)
    ei, et = g.edge_index.numpy(), g.edge_type.numpy()
    G = len(genes)
    assert ei.shape[0] == 2 and ((ei >= 0) & (ei < G)).all()
    present = set(genes)
    pairs = {(s, t) for s, t in zip(prior["source"], prior["target"]) if s in present and t in present}
    assert int((et == 0).sum()) == len(pairs)  # duplicates merged, absent genes dropped
    autoreg = {s for s, t in pairs if s == t}
    assert int((et == 2).sum()) == G - len(autoreg)  # one self-loop per gene without a prior one
    assert g.n_edges == len(pairs) + G - len(autoreg)
    kept = {(genes[j], genes[i]) for j, i, t in zip(ei[0], ei[1], et) if t == 0}
    assert kept == pairs
    assert len(set(zip(ei[0].tolist(), ei[1].tolist()))) == g.n_edges  # no duplicated edge


@FAST
@given(genes_and_prior(), st.randoms(use_true_random=False))
def test_permuting_var_names_permutes_the_graph(data, rnd):
    genes, prior = data
    perm = list(range(len(genes)))
    rnd.shuffle(perm)
    g = GeneGraph.from_prior(prior, genes, allow_empty=True, case_insensitive=False)
    h = GeneGraph.from_prior(prior, [genes[p] for p in perm], allow_empty=True, case_insensitive=False)
    assert _edges(h) == _edges(g)  # same named edges, whatever the gene order
    assert _edges(g.permute(perm)) == _edges(h) and g.permute(perm).genes == h.genes


labels = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@FAST
@given(st.lists(labels, min_size=1, max_size=8, unique=True), st.data())
def test_categorical_any_label_round_trips(cats, data):
    values = data.draw(st.lists(st.sampled_from(cats), min_size=1, max_size=30))
    enc = CategoricalEncoder("cond").fit(pd.Series(values))
    codes = enc.encode(values)
    assert codes.min() >= 1 and codes.max() <= enc.n_categories
    assert list(enc.decode(codes)) == values
    again = CategoricalEncoder.from_state(enc.to_state())
    assert np.array_equal(again.encode(values), codes)
    unseen = data.draw(labels.filter(lambda s: s not in set(values)))
    with pytest.raises(UnknownConditionError, match="unknown value"):
        enc.encode(values + [unseen])


@FAST
@given(st.lists(labels, min_size=1, max_size=8), st.integers(0, 7))
def test_categorical_missing_value_is_a_clear_error(values, where):
    vals = list(values)
    vals.insert(where % (len(vals) + 1), None)
    with pytest.raises(ValueError, match=r"obs\['cond'\]: 1 cells have no value \(NaN\)"):
        CategoricalEncoder("cond").fit(pd.Series(vals, dtype=object))
    enc = CategoricalEncoder("cond").fit(pd.Series(values))
    with pytest.raises(UnknownConditionError, match="'NaN'"):
        enc.encode(vals)


component = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="+"),
                    min_size=1, max_size=8).map(str.strip).filter(lambda s: s and s != "control")


@FAST
@given(st.lists(st.lists(component, min_size=1, max_size=3, unique=True), min_size=1, max_size=6), st.data())
def test_set_combos_in_any_order_encode_alike(combos, data):
    labels_ = ["+".join(c) for c in combos] + ["control"]
    enc = SetEncoder("drug").fit(labels_)
    shuffled = ["+".join(data.draw(st.permutations(c))) for c in combos] + ["control"]
    spaced = [" + ".join(c) for c in combos] + ["control"]  # spaces around the separator are ignored
    a, b, c = enc.encode(labels_), enc.encode(shuffled), enc.encode(spaced)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert (a[-1] == 0).all()  # control = the empty set
    for row, combo in zip(enc.decode(a)[:-1], combos):
        assert set(row.split("+")) == set(combo)
    with pytest.raises(ValueError, match=r"obs\['drug'\]: 1 of .* no value \(NaN/None\)"):
        enc.encode(labels_ + [None])
