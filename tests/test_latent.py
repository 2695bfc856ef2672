"""Unmeasured perturbed genes as latent nodes, and priors combined with their edge types kept apart.

A perturbed prior gene that is not measured becomes a node without expression (a learned state,
the perturbation flag, messages in and out, no loss, no output column), with the unmeasured prior
genes on short paths from it to the measured genes; regulation and signalling edges are typed apart.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

import grndiff as gd
from grndiff.graph import EDGE_PRIOR, EDGE_SELF, EDGE_SIGNAL, GeneGraph
from grndiff.nn import GRNTransformer

torch.set_num_threads(1)

# ------------------------------------------------------------------ a toy prior around three measured genes
# P (perturbed, unmeasured) → U1 → U2 → M1 is a 3-edge path; P → M2 a direct edge; P → U4 leads nowhere
# measured; U3 → M1 is not downstream of P; P → V1 → V2 → V3 → M3 is 4 edges long.
TOY = pd.DataFrame({"source": ["P", "U1", "U2", "P", "P", "U3", "P", "V1", "V2", "V3", "M1"],
                    "target": ["U1", "U2", "M1", "M2", "U4", "M1", "V1", "V2", "V3", "M3", "M2"],
                    "weight": [1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0]})
MEASURED = ["M1", "M2", "M3"]


def _named_edges(g: GeneGraph) -> set[tuple[str, str, int]]:
    df = g.to_dataframe()
    return set(zip(df["source"], df["target"], df["type"]))


def test_latent_nodes_are_the_perturbed_gene_and_short_paths_bounded_by_hops():
    g = GeneGraph.from_prior(TOY, MEASURED, perturbed=["P", "M2"], latent_hops=3)
    assert g.genes == MEASURED and g.latent_genes == ["P", "U1", "U2"]  # perturbed first, then path genes
    assert (g.n_genes, g.n_latent, g.n_nodes) == (3, 3, 6)
    assert int(g.edge_index.max()) == 5 and g.in_degree().shape == (6,)
    edges = _named_edges(g)
    assert {("P", "U1", EDGE_PRIOR), ("U2", "M1", EDGE_PRIOR), ("P", "M2", EDGE_PRIOR)} <= edges
    assert ("P", "P", EDGE_SELF) in edges  # latent nodes keep their own state
    assert not {n for e in edges for n in e[:2]} & {"U3", "U4", "V1", "V2", "V3"}
    c = g.coverage
    assert (c["n_latent"], c["n_latent_perturbed"], c["n_latent_path"], c["n_perturbed_unreachable"]) == (3, 1, 2, 0)
    assert c["n_isolated"] == 1  # M3: its only in-edge comes from V3, which is 4 edges from P
    summary = g.summary()
    assert "+ 3 latent" in summary and "3 unmeasured prior genes are nodes" in summary
    # modules pool measured genes only: a latent gene in a gene set is not a member
    sets = pd.DataFrame({"source": ["s"] * 4, "target": ["P", "U1", "M1", "M2"]})
    pooled = GeneGraph.from_prior(TOY, MEASURED, perturbed=["P"], modules=sets, min_module_size=2)
    assert pooled.membership.shape == (3, 1) and pooled.membership[:, 0].tolist() == [1.0, 1.0, 0.0]
    # hops bound the count: 1 keeps only P (it reaches M2 directly), 4 adds the V chain
    assert GeneGraph.from_prior(TOY, MEASURED, perturbed=["P"], latent_hops=1).latent_genes == ["P"]
    far = GeneGraph.from_prior(TOY, MEASURED, perturbed=["P"], latent_hops=4)
    assert set(far.latent_genes) == {"P", "U1", "U2", "V1", "V2", "V3"}
    # max_latent keeps the genes of the shortest paths (P → U1 → U2 → M1: 3 edges, before the V chain: 4)
    capped = GeneGraph.from_prior(TOY, MEASURED, perturbed=["P"], latent_hops=4, max_latent=2)
    assert capped.latent_genes == ["P", "U1", "U2"] and capped.coverage["n_latent_path_dropped"] == 3
    assert "3 more path genes left out" in capped.summary()


def test_every_perturbed_gene_measured_changes_no_edge():
    plain = GeneGraph.from_prior(TOY, ["P", "U1", "M1"])
    same = GeneGraph.from_prior(TOY, ["P", "U1", "M1"], perturbed=["P", "M1"])
    assert same.n_latent == 0 and same.n_nodes == plain.n_nodes
    for k in ("edge_index", "edge_sign", "edge_weight", "edge_type"):
        assert torch.equal(getattr(same, k), getattr(plain, k)), k


def test_perturbed_gene_in_neither_data_nor_prior_raises_naming_it_and_the_prior():
    with pytest.raises(ValueError, match=r"'NOPE1'.*neither measured.*nor in the prior DataFrame\(11 rows\)"):
        GeneGraph.from_prior(TOY, MEASURED, perturbed=["P", "NOPE1"])
    g = GeneGraph.from_prior(TOY, MEASURED, perturbed=["P", "NOPE1"], allow_missing_perturbed=True)
    assert g.latent_genes[0] == "P" and g.coverage["n_perturbed_not_in_prior"] == 1
    assert "neither measured nor in the prior and were dropped" in g.summary()
    # through the API: the shipped prior is named
    a = gd.datasets.krumsiek11()
    a.obs["perturbation"] = np.where(np.arange(a.n_obs) % 3 == 0, "Xyz1", "control")
    gd.GRNDiff.setup_anndata(a, perturbation_key="perturbation")
    with pytest.raises(ValueError, match=r"'Xyz1'.*prior krumsiek11"):
        gd.GRNDiff(a, prior="krumsiek11", modules=None)


def test_union_of_priors_keeps_regulation_and_signalling_apart():
    reg = pd.DataFrame({"source": ["A", "A"], "target": ["B", "C"], "weight": [1.0, -1.0]})
    sig = pd.DataFrame({"source": ["D", "A"], "target": ["A", "B"], "weight": [1.0, -1.0],
                        "edge_kind": "signalling"})
    g = GeneGraph.from_prior([reg, sig], ["A", "B", "C", "D"])
    df = g.to_dataframe().set_index(["source", "target"])
    assert df.loc[("D", "A"), "type"] == EDGE_SIGNAL and df.loc[("A", "C"), "type"] == EDGE_PRIOR
    # a pair in both priors is one edge: the first prior's type and origin, the mean weight
    assert df.loc[("A", "B"), "type"] == EDGE_PRIOR and df.loc[("A", "B"), "prior"] == "prior0"
    assert df.loc[("A", "B"), "weight"] == 0.0 and df.loc[("D", "A"), "prior"] == "prior1"
    assert g.prior_names == ["prior0", "prior1"] and g.coverage["n_edges_signalling"] == 1
    assert "1 signalling" in g.summary() and "priors: prior0 2 edges; prior1 1 edges" in g.summary()
    # attention learns a separate bias for signalling edges; the perturbation propagates along them
    net = GRNTransformer(4, g.edge_index, g.edge_sign, g.edge_weight, g.edge_type, hidden=8, heads=2, depth=1,
                         perturbation=True)
    assert net.graph_layers()[0].type_bias.num_embeddings == 6
    spread = net.pert_embed.propagated(torch.tensor([[0.0, 0.0, 0.0, 1.0]]))  # knock out D
    assert spread[0, 0, 0] == 1.0  # D → A (signalling) carries it one hop
    plain = GRNTransformer(4, *(getattr(GeneGraph.from_prior(reg, ["A", "B", "C", "D"]), k)
                                for k in ("edge_index", "edge_sign", "edge_weight", "edge_type")), hidden=8, heads=2)
    assert plain.graph_layers()[0].type_bias.num_embeddings == 4  # no signalling edge: the old parameters


def test_shipped_union_carries_ifngr1_to_measured_papalexi_genes():
    a = gd.datasets.papalexi2021()
    assert "IFNGR1" not in set(a.var_names) and "JAK2" in set(a.var_names)
    both = GeneGraph.from_prior(["collectri", "omnipath_signaling"], list(a.var_names), perturbed=["IFNGR1"],
                                latent_hops=1)
    assert both.latent_genes == ["IFNGR1"] and both.prior_names == ["collectri", "omnipath_signaling"]
    edges = _named_edges(both)
    assert ("IFNGR1", "JAK2", EDGE_SIGNAL) in edges  # receptor → kinase: a signalling edge
    assert any(t == EDGE_PRIOR for *_, t in edges)  # CollecTRI TF → target edges are there too
    # CollecTRI alone names IFNGR1 (as a target) but has no edge out of it: a node that reaches nothing
    alone = GeneGraph.from_prior("collectri", list(a.var_names), perturbed=["IFNGR1"])
    assert alone.latent_genes[0] == "IFNGR1" and alone.coverage["n_perturbed_unreachable"] == 1
    assert "reach no measured gene" in alone.summary()


# ------------------------------------------------------------------ the model with latent nodes
EXTRA = pd.DataFrame({"source": ["Ext1", "Ext2", "Ext1"], "target": ["Ext2", "Gata1", "Fli1"],
                      "weight": [1.0, -1.0, 1.0]})  # Ext1, Ext2: prior genes that are not measured


@pytest.fixture(scope="module")
def latent_model():
    """krumsiek11 with knock-outs of a measured gene (Gata2) and of an unmeasured prior gene (Ext1)."""
    a = gd.datasets.krumsiek11()
    X = np.asarray(a.X, dtype=np.float32).copy()
    genes = list(a.var_names)
    labels = np.array(["control"] * a.n_obs, dtype=object)
    labels[1::4], labels[2::4] = "Gata2", "Ext1"
    X[labels == "Ext1", genes.index("Fli1")] = 0.0
    X[labels == "Ext1", genes.index("Gata1")] += 0.3
    a.X = X
    a.obs["perturbation"] = labels
    gd.GRNDiff.setup_anndata(a, perturbation_key="perturbation", condition_keys=["cell_type"])
    prior = pd.concat([gd.datasets.krumsiek11_network(), EXTRA], ignore_index=True)
    kw = dict(prior=prior, modules=None, hidden=16, depth=2, token_depth=0, n_learned_modules=2, seed=0)
    m = gd.GRNDiff(a, **kw)
    m.train(max_steps=8, batch_size=64, progress_bar=False, gate=False)
    return a, m, kw


def test_knockout_of_unmeasured_gene_trains_and_predicts_measured_genes_only(latent_model):
    a, m, kw = latent_model
    assert m.graph.latent_genes == ["Ext1", "Ext2"] and m.graph.n_genes == a.n_vars
    assert "+ 2 latent" in m.graph.summary() and "latent=2" in repr(m)
    enc = m.processor.conditions.perturbation
    assert enc.genes[a.n_vars:] == ["Ext1", "Ext2"] and "Ext1" in enc.seen
    code = enc.encode(["Ext1"])
    assert code.tolist() == [[a.n_vars]]  # a perturbation code that indexes a latent node
    net = m.module.net
    assert net.latent_state.shape == (2, 16)
    v = net(torch.zeros(3, a.n_vars), torch.rand(3), {"cell_type": torch.ones(3, dtype=torch.long)},
            torch.as_tensor(np.repeat(code, 3, 0)))
    assert v.shape == (3, a.n_vars)  # no latent column
    ctrl = a[a.obs["perturbation"] == "control"][:12].copy()
    ko = m.predict(ctrl, {"perturbation": "Ext1"}, n_steps=3, flow=True)
    assert ko.shape == (12, a.n_vars) and list(ko.var_names) == list(a.var_names)
    same = m.predict(ctrl, {"perturbation": "control"}, n_steps=3, flow=True)
    assert not np.allclose(np.asarray(ko.X), np.asarray(same.X))  # the latent node's flag reaches the genes
    # the latent states are trained: they moved from the initial draw of the same seed
    fresh = gd.GRNDiff(a, **kw).module.net.latent_state
    assert not torch.equal(fresh, net.latent_state)
    with pytest.raises(ValueError, match="Ext3"):  # a prior gene that was never made a node
        m.predict(ctrl, {"perturbation": "Ext3"}, n_steps=2)


def test_latent_state_receives_gradient_from_the_loss():
    # a latent node L (index 3) feeds gene 1; knocking it out must move v at gene 1 and train its state
    ei = torch.tensor([[3, 0, 1, 2, 3], [1, 0, 1, 2, 3]])
    net = GRNTransformer(3, ei, hidden=8, heads=2, depth=2, perturbation=True, n_latent=1, cell_token=False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x, t = torch.randn(2, 3), torch.rand(2)
    v_ko = net(x, t, None, torch.tensor([[3], [3]]))
    v_0 = net(x, t, None, torch.full((2, 1), -1))
    assert v_ko.shape == (2, 3) and not torch.allclose(v_ko[:, 1], v_0[:, 1])
    v_ko.pow(2).sum().backward()
    assert net.latent_state.grad is not None and net.latent_state.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mixer='graph'"):
        GRNTransformer(3, ei, hidden=8, heads=2, n_latent=1, mixer="full")


def test_save_load_round_trip_keeps_latent_nodes(latent_model, tmp_path):
    a, m, _ = latent_model
    m.save(tmp_path / "latent")
    back = gd.GRNDiff.load(tmp_path / "latent")
    assert back.graph.latent_genes == m.graph.latent_genes and back.graph.n_nodes == m.graph.n_nodes
    assert back.processor.conditions.perturbation.genes == m.processor.conditions.perturbation.genes
    for k, v in m.module.state_dict().items():
        torch.testing.assert_close(back.module.state_dict()[k], v, rtol=0, atol=0, equal_nan=True, msg=k)
    ctrl = a[a.obs["perturbation"] == "control"][:6].copy()
    x1 = m.predict(ctrl, {"perturbation": "Ext1"}, n_steps=2, flow=True).X
    x2 = back.predict(ctrl, {"perturbation": "Ext1"}, n_steps=2, flow=True).X
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
    # a graph state saved before latent nodes and edge origins existed loads with none
    old = {k: v for k, v in m.graph.to_state().items() if k not in ("latent_genes", "edge_prior", "prior_names")}
    old["edge_index"] = old["edge_index"][:, (old["edge_index"] < a.n_vars).all(0)]
    old["edge_sign"] = old["edge_type"] = old["edge_weight"] = None
    g = GeneGraph.from_state(old)
    assert g.n_latent == 0 and g.prior_names == ["prior"] and bool((g.edge_prior == 0).all())


def test_latent_nodes_need_the_graph_backbone():
    a = gd.datasets.krumsiek11()
    a.obs["perturbation"] = np.where(np.arange(a.n_obs) % 3 == 0, "Ext1", "control")
    gd.GRNDiff.setup_anndata(a, perturbation_key="perturbation")
    prior = pd.concat([gd.datasets.krumsiek11_network(), EXTRA], ignore_index=True)
    with pytest.raises(ValueError, match="latent nodes.*backbone='grn'"):
        gd.GRNDiff(a, prior=prior, modules=None, backbone="mlp")


# ------------------------------------------------------------------ nothing changes without latent nodes
# buffers added after the reference was taken, by changes unrelated to latent nodes (the own-gene
# change of an unseen knock-out, ShiftedControlSource(own_effect=...)): left out of the comparison
LATER_KEYS = ("source.own_log", "source.own_genes")


def _state(module) -> dict:
    return {k: v for k, v in module.state_dict().items() if k not in LATER_KEYS}


def _key_digest(state_dict) -> str:
    shapes = {k: list(v.shape) for k, v in state_dict.items()}
    return hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()


def _init_digest(net) -> str:
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()


# Fingerprints of the code before latent nodes and signalling edge types (commit fad685c), same CPU
# build of torch: state-dict keys and shapes, initial weights (bitwise), a short training's prediction.
# A torch upgrade that changes its random draws changes the weight digests: regenerate them then.
BEFORE = {
    "perturbed": {"keys": "122592e264aa130736dd3aee6da382e68669b5b3644c3f0a8a2125e142e09b21", "n_keys": 170,
                  "init": "b52a8179825dd34f339262277195ae00889654a3fe750b7c502f9b9d4019bf07",
                  "pred_sum": 17.10952176898718,
                  "pred_row0": [0.818035, 0.0, 0.00037, 0.000178, 0.001157, 0.000667, 0.795721, 0.818224, 0.0, 0.0,
                                0.004627]},
    "plain": {"n_keys": 86, "init": "ede569d1947f4d3b97c8344fa44509c11482f3889240a84b69c02270f43be4c8",
              "pred_sum": 17.15704709291458},
}


def test_every_perturbed_gene_measured_gives_the_model_of_before(krumsiek_knockouts):
    a = krumsiek_knockouts
    g = list(a.var_names)
    sets = pd.DataFrame({"source": ["m1"] * 4 + ["m2"] * 5, "target": g[:4] + g[4:9]})
    m = gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=sets, graph_kwargs={"min_module_size": 2},
                   hidden=16, depth=2, token_depth=1, n_learned_modules=2, seed=0,
                   source={"name": "shifted_control", "own_effect": False})  # the source of before
    ref = BEFORE["perturbed"]
    assert m.graph.n_latent == 0 and m.module.net.latent_state is None
    assert _init_digest(m.module.net) == ref["init"], "initial weights differ from the code before latent nodes"
    ctrl = a[a.obs["perturbation"] == "control"][:8]
    m.predict(ctrl, {"perturbation": "Gata2"}, flow=False)  # an untrained model fits its source on `a` here
    assert len(_state(m.module)) == ref["n_keys"] and _key_digest(_state(m.module)) == ref["keys"]
    m.train(max_steps=4, batch_size=32, progress_bar=False, gate=False)
    pred = np.asarray(m.predict(ctrl, {"perturbation": "Gata2"}, n_steps=3, flow=True).X, dtype=np.float64)
    assert pred.sum() == pytest.approx(ref["pred_sum"], rel=1e-5)
    np.testing.assert_allclose(pred[0], ref["pred_row0"], atol=1e-5)


def test_no_perturbation_key_gives_the_model_of_before():
    a = gd.datasets.krumsiek11()
    a.obs["treat"] = np.where(np.arange(a.n_obs) % 2 == 0, "ctrl", "drug")
    gd.GRNDiff.setup_anndata(a, condition_keys=["cell_type", "treat"], control_obs={"treat": "ctrl"})
    m = gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=16, depth=1, token_depth=0, seed=0)
    ref = BEFORE["plain"]
    assert len(_state(m.module)) == ref["n_keys"] and _init_digest(m.module.net) == ref["init"]
    m.train(max_steps=4, batch_size=32, progress_bar=False, gate=False)
    ctrl = a[a.obs["treat"] == "ctrl"][:8]
    pred = np.asarray(m.predict(ctrl, {"treat": "drug"}, n_steps=3, flow=True).X, dtype=np.float64)
    assert pred.sum() == pytest.approx(ref["pred_sum"], rel=1e-5)
