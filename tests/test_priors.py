"""grndiff.priors: shipped files and manifest, formats, decoupler/networkx round trips, null models."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grndiff import priors
from grndiff.priors.null import rewire

REPO = Path(__file__).resolve().parents[1]


def _toy() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    genes = [f"g{k}" for k in range(30)]
    pairs = {(genes[a], genes[b]) for a, b in rng.integers(0, 30, size=(120, 2)) if a != b}
    src, tgt = zip(*sorted(pairs))
    return pd.DataFrame({"source": src, "target": tgt, "weight": rng.choice([-1.0, 1.0], size=len(src))})


# ------------------------------------------------------------------ shipped files
def test_manifest_checksums_and_rows_match_the_files():
    manifest = json.loads((REPO / "priors" / "manifest.json").read_text())["priors"]
    assert {m["name"] for m in manifest} >= {"collectri", "dorothea", "hallmark", "reactome", "progeny", "go_bp"}
    for m in manifest:
        data = (REPO / "priors" / m["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["sha256"], m["file"]
        assert m["kind"] in ("network", "gene_sets") and m["licence"] and m["citation"]
        assert m["sha256"] in (REPO / "priors" / "README.md").read_text(), f"{m['file']} missing from README"
    assert all(priors.verify_checksums().values())


def test_package_data_points_at_the_repository_priors():
    assert (priors.prior_dir() / "manifest.json").is_file()
    shipped = (priors.prior_dir() / "collectri_human.csv").read_bytes()
    assert shipped == (REPO / "priors" / "collectri_human.csv").read_bytes()


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject lists packages explicitly (to map priors/ → grndiff._priors); a subpackage missing
    from that list would be silently absent from non-editable installs."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "grndiff").rglob("__init__.py")}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert cfg["package-dir"]["grndiff._priors"] == "priors" and "grndiff._priors" in listed
    patterns = cfg["package-data"]["grndiff._priors"]
    shipped = {m["file"] for m in json.loads((REPO / "priors" / "manifest.json").read_text())["priors"]}
    assert all(any(Path(f).match(p) for p in patterns) for f in shipped | {"manifest.json", "README.md"})


@pytest.mark.parametrize("name,organism", [("collectri", "human"), ("dorothea", "human"), ("dorothea", "mouse"),
                                           ("progeny", "mouse"), ("hallmark", "human"), ("reactome", "mouse"),
                                           ("omnipath_signaling", "human")])
def test_load_shipped_matches_manifest(name, organism):
    table = priors.list_priors()
    row = table[(table["name"] == name) & (table["organism"] == organism)].iloc[0]
    df = priors.load(name, organism)
    assert list(df.columns[:3]) == ["source", "target", "weight"]
    assert len(df) == row["rows"]
    assert not df.duplicated(["source", "target"]).any()
    if row["kind"] == "gene_sets":
        assert (df["weight"] == 1.0).all()


def test_collectri_known_figures():
    df = priors.load("collectri")
    assert (len(df), df["source"].nunique(), df["target"].nunique()) == (43178, 1186, 6692)
    assert df["weight"].value_counts().to_dict() == {1.0: 37360, -1.0: 5818}


def test_omnipath_signaling_shipped_as_a_signalling_network_with_complexes_split():
    raw = pd.read_csv(priors.prior_path("omnipath_signaling"), sep="\t")
    assert list(raw.columns) == ["source", "interaction", "target"] and len(raw) == 19807  # the file, unchanged
    df = priors.load("omnipath_signaling")
    assert (df["edge_kind"] == "signalling").all() and priors.edge_kind("omnipath_signaling") == "signalling"
    assert priors.edge_kind("collectri") == "regulation"
    assert not (df["source"].str.contains("_") | df["target"].str.contains("_")).any()
    assert {("IFNGR1", "JAK2"), ("IFNGR1", "JAK1"), ("JAK2", "STAT1")} <= set(zip(df["source"], df["target"]))
    assert set(np.sign(df["weight"]).unique()) <= {-1.0, 0.0, 1.0}
    # IL17A → IL17RA_IL17RC in the file: one edge to each member
    assert {("IL17A", "IL17RA"), ("IL17A", "IL17RC")} <= set(zip(df["source"], df["target"]))


def test_split_complexes_and_combine_keep_origins():
    net = pd.DataFrame({"source": ["A_B", "C", "_D_E", "A"], "target": ["C", "A_B", "F", "C"],
                        "weight": [1.0, -1.0, 1.0, -1.0]})
    out = priors.split_complexes(net)
    pairs = dict(zip(zip(out["source"], out["target"]), out["weight"]))
    assert pairs == {("A", "C"): 0.0, ("B", "C"): 1.0, ("C", "A"): -1.0, ("C", "B"): -1.0, ("D", "F"): 1.0,
                     ("E", "F"): 1.0}  # A → C twice (+1 from the complex, −1 alone): merged to 0
    reg = pd.DataFrame({"source": ["A", "A"], "target": ["B", "C"], "weight": [1.0, 1.0]})
    sig = pd.DataFrame({"source": ["A", "X"], "target": ["B", "A"], "weight": [-1.0, 1.0]})
    both = priors.combine([reg, sig], kinds=[None, "signalling"])
    rows = both.set_index(["source", "target"])
    assert rows.loc[("A", "B"), "prior"] == "prior0" and rows.loc[("A", "B"), "weight"] == 0.0
    assert rows.loc[("X", "A"), "edge_kind"] == "signalling" and rows.loc[("A", "C"), "edge_kind"] == "regulation"
    with pytest.raises(ValueError, match="edge kinds"):
        priors.combine([reg], kinds=["phosphorylation"])


def test_dorothea_confidence_column_and_filter():
    df = priors.load("dorothea")
    assert "confidence" in df.columns
    ab = priors.load("dorothea", confidence=("A", "B"))
    assert set(ab["confidence"]) == {"A", "B"} and len(ab) == (df["confidence"].isin(["A", "B"])).sum()
    with pytest.raises(ValueError, match="confidence levels"):
        priors.load("dorothea", confidence=("Z",))
    with pytest.raises(ValueError, match="no 'confidence' column"):
        priors.load("collectri", confidence="A")


def test_unknown_names_and_paths_explain_themselves(tmp_path):
    with pytest.raises(ValueError, match="Shipped: .*collectri"):
        priors.load("kegg")
    with pytest.raises(ValueError, match="for organism \\['human'\\] only"):
        priors.load("collectri", organism="mouse")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        priors.load(tmp_path / "missing.csv")


# ------------------------------------------------------------------ formats
def test_gmt_round_trip(tmp_path):
    sets = priors.load("hallmark")
    priors.write_gmt(sets, tmp_path / "h.gmt")
    back = priors.read_gmt(tmp_path / "h.gmt")
    pd.testing.assert_frame_equal(back, sets)
    # the shipped file and our writer describe the same sets
    assert back.groupby("source")["target"].apply(frozenset).equals(sets.groupby("source")["target"].apply(frozenset))


def test_read_gmt_tolerates_blank_fields_and_rejects_garbage(tmp_path):
    p = tmp_path / "x.gmt"
    p.write_text("SET_A\t\tG1\tG2\t\tG1\nSET_B\tdesc\n\nSET_C\td\tG3\n")
    df = priors.read_gmt(p)
    assert df.values.tolist() == [["SET_A", "G1", 1.0], ["SET_A", "G2", 1.0], ["SET_C", "G3", 1.0]]
    p.write_text("just one field\n")
    with pytest.raises(ValueError, match="not a GMT line"):
        priors.read_gmt(p)


def test_from_decoupler_equals_load_and_reading_the_csv(tmp_path):
    raw = pd.read_csv(REPO / "priors" / "dorothea_human_ABC.csv")
    pd.testing.assert_frame_equal(priors.from_decoupler(raw), priors.load("dorothea"))
    raw.to_csv(tmp_path / "net.tsv", sep="\t", index=False)
    pd.testing.assert_frame_equal(priors.load(tmp_path / "net.tsv"), priors.load("dorothea"))


def test_from_decoupler_normalises_and_merges_duplicates():
    df = pd.DataFrame({"source": ["A", "A", "B", "A"], "target": ["x", "y", "x", "x"], "mor": [1, 2, 3, 4]})
    out = priors.from_decoupler(df.drop(columns="mor"))
    assert out["weight"].tolist() == [1.0, 1.0, 1.0]  # missing weight → 1, A→x merged
    signed = pd.DataFrame({"source": ["A", "A", "B"], "target": ["x", "x", "x"], "weight": [1, -1, 3]})
    out = priors.from_decoupler(signed)
    assert out.values.tolist() == [["A", "x", 0.0], ["B", "x", 3.0]]  # mean; conflicting sign → 0
    pd.testing.assert_frame_equal(priors.from_decoupler(signed), priors.from_decoupler(signed))


def test_from_decoupler_errors_name_the_problem():
    with pytest.raises(ValueError, match="lacks column.*'target'.*Rename"):
        priors.from_decoupler(pd.DataFrame({"source": ["A"], "gene": ["x"]}))
    with pytest.raises(ValueError, match="'weight' has 1 non-numeric"):
        priors.from_decoupler(pd.DataFrame({"source": ["A"], "target": ["x"], "weight": ["strong"]}))
    with pytest.raises(ValueError, match="'source' has 1 missing"):
        priors.from_decoupler(pd.DataFrame({"source": [None], "target": ["x"]}))
    with pytest.raises(TypeError, match="from_networkx"):
        priors.from_decoupler([("A", "x")])


def test_networkx_round_trip():
    net = priors.load("collectri").head(500)
    G = priors.to_networkx(net)
    assert G.is_directed() and G.number_of_edges() == len(net)
    assert G["MYC"]["TERT"]["weight"] == 1.0
    key = ["source", "target"]  # networkx orders edges by node, not by row
    back = priors.from_networkx(G).sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(back, net.sort_values(key, ignore_index=True))
    dor = priors.to_networkx(priors.load("dorothea").head(5))
    u, v, d = next(iter(dor.edges(data=True)))
    assert d["confidence"] in "ABC"


def test_load_online_is_a_thin_wrapper(monkeypatch):
    import decoupler as dc

    monkeypatch.setattr(dc.op, "collectri", lambda organism, **kw: pd.DataFrame(
        {"source": ["A", "A"], "target": ["x", "x"], "weight": [1, 1]}))
    assert priors.load_online("collectri").values.tolist() == [["A", "x", 1.0]]

    def offline(**kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(dc.op, "hallmark", offline)
    with pytest.raises(RuntimeError, match="network access.*load\\('hallmark'"):
        priors.load_online("hallmark")


# ------------------------------------------------------------------ null models
def _degrees(df):
    return df["source"].value_counts().sort_index(), df["target"].value_counts().sort_index()


def test_shuffle_keeps_in_and_out_degree_and_is_seeded():
    net = priors.load("dorothea", confidence="A")
    shuffled = priors.shuffle_edges(net, seed=0)
    for a, b in zip(_degrees(net), _degrees(shuffled)):
        pd.testing.assert_series_equal(a, b)
    assert not shuffled.duplicated(["source", "target"]).any()
    assert (shuffled["source"] == shuffled["target"]).sum() <= (net["source"] == net["target"]).sum()
    assert (shuffled["weight"] == net["weight"]).all()  # weights ride with their edge (and source)
    overlap = len(net.merge(shuffled, on=["source", "target"])) / len(net)
    assert overlap < 0.5, f"only {1 - overlap:.0%} of edges rewired"
    pd.testing.assert_frame_equal(shuffled, priors.shuffle_edges(net, seed=0))
    assert not shuffled.equals(priors.shuffle_edges(net, seed=1))
    permuted = priors.shuffle_edges(net, seed=0, permute_weights=True)
    assert sorted(permuted["weight"]) == sorted(net["weight"])


def test_shuffle_never_creates_self_loops_on_small_graphs():
    net = _toy()
    out = priors.shuffle_edges(net, seed=3)
    assert (out["source"] != out["target"]).all()
    for a, b in zip(_degrees(net), _degrees(out)):
        pd.testing.assert_series_equal(a, b)


def test_random_graph_edge_count_no_self_loops_no_duplicates():
    net = _toy()
    rnd = priors.random_graph(net, seed=0)
    assert len(rnd) == len(net)
    assert (rnd["source"] != rnd["target"]).all() and not rnd.duplicated(["source", "target"]).any()
    nodes = set(net["source"]) | set(net["target"])
    assert set(rnd["source"]) | set(rnd["target"]) <= nodes
    assert sorted(rnd["weight"]) == sorted(net["weight"])
    pd.testing.assert_frame_equal(rnd, priors.random_graph(net, seed=0))
    assert not rnd.equals(priors.random_graph(net, seed=1))
    with pytest.raises(ValueError, match="do not fit"):  # two nodes hold two edges without self-loops
        priors.random_graph(pd.DataFrame({"source": list("aabb"), "target": list("abab"), "weight": 1.0}))


# ------------------------------------------------------------------ matched nulls (issue 19)
def _sub(net, genes):
    keep = net["source"].isin(genes) & net["target"].isin(genes)
    return net[keep].reset_index(drop=True)


def test_nulls_on_genes_match_the_edge_count_among_those_genes():
    net = priors.load("collectri")
    rng = np.random.default_rng(0)
    nodes = sorted(set(net["source"]) | set(net["target"]))
    genes = sorted(set(rng.choice(nodes, 300, replace=False)) | set(net["source"].value_counts().index[:20]))
    real = _sub(net, genes)
    assert 0 < len(real) < 2000  # far fewer than CollecTRI's ~43k
    for null in (priors.random_graph(net, genes=genes, seed=0), priors.shuffle_edges(net, genes=genes, seed=0),
                 rewire(net, 0.5, genes=genes, seed=0)):
        assert len(null) == len(real)
        assert set(null["source"]) | set(null["target"]) <= set(genes)
        assert not null.duplicated(["source", "target"]).any()
    shuffled = priors.shuffle_edges(net, genes=genes, seed=0)
    for a, b in zip(_degrees(real), _degrees(shuffled)):
        pd.testing.assert_series_equal(a, b)
    # without genes= the full network is kept: the generation benchmark's union of genes is unchanged
    assert len(priors.random_graph(net, seed=0)) == len(net)


def test_rewire_keeps_degrees_and_rewires_the_fraction():
    net = priors.load("dorothea", confidence="A")
    pd.testing.assert_frame_equal(rewire(net, 0.0, seed=0), priors.from_decoupler(net))
    kept = []
    for f in (0.25, 0.5, 0.75):
        out = rewire(net, f, seed=1)
        assert len(out) == len(net) and not out.duplicated(["source", "target"]).any()
        assert (out["source"] != out["target"]).sum() >= (net["source"] != net["target"]).sum()
        for a, b in zip(_degrees(net), _degrees(out)):
            pd.testing.assert_series_equal(a, b)
        share = len(net.merge(out, on=["source", "target"])) / len(net)
        assert share >= 1 - f - 0.02 and share <= 1 - f + 0.15, (f, share)
        kept.append(share)
    assert kept[0] > kept[1] > kept[2]
    pd.testing.assert_frame_equal(rewire(net, 0.5, seed=3), rewire(net, 0.5, seed=3))
    with pytest.raises(ValueError, match="between 0 and 1"):
        rewire(net, 1.5)


def test_nulls_keep_self_edges_so_edges_between_genes_match():
    net = pd.DataFrame({"source": ["a", "a", "b", "c", "c", "d", "e"], "target": ["a", "b", "c", "c", "d", "e", "a"],
                        "weight": 1.0})
    for null in (priors.shuffle_edges(net, seed=0), rewire(net, 1.0, seed=0)):
        assert set(zip(null["source"], null["target"])) >= {("a", "a"), ("c", "c")}
        assert (null["source"] != null["target"]).sum() == 5
