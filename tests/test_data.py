"""grndiff.data: registration, value checks, encoders, processor state, splits, pairing, batches."""
import copy
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from grndiff.data import (
    CategoricalEncoder,
    CellDataset,
    ConditionSet,
    ContinuousEncoder,
    ExpressionProcessor,
    GeneScaler,
    GRNDataModule,
    HierarchicalEncoder,
    PerturbationEncoder,
    SetEncoder,
    UnknownConditionError,
    detect_kind,
    get_setup,
    log1p_cp10k,
    setup_anndata,
    split_indices,
)

GENES = [f"g{i}" for i in range(10)] + ["KLF1", "CEBPA"]


def _adata(n=120, seed=0, sparse=True):
    """Tiny counts AnnData: 2 cell types × ctrl/stim, gene perturbations, a dose, a drug set, tissue."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(1.0, 2.0, size=(1, len(GENES))), size=(n, len(GENES))).astype(np.float32)
    X[:, 0] += 1  # every cell has counts
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(rng.choice(["B cells", "T cells"], n)),
        "condition": rng.choice(["ctrl", "stim"], n),
        "dose": rng.uniform(0, 10, n),
        "drugs": rng.choice(["control", "dex", "dex+nutlin", "nutlin+dex"], n),
        "tissue": rng.choice(["blood", "spleen"], n),
        "perturbation": rng.choice(["control", "KLF1", "KLF1+CEBPA", "CEBPA+control"], n),
    }, index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=obs, var=pd.DataFrame(index=GENES))
    a.layers["counts"] = a.X.copy()
    return a


def _setup(a, **kw):
    args = dict(layer="counts", condition_keys=["cell_type", "condition"], continuous_keys=["dose"],
                set_keys=["drugs"], hierarchy=["tissue"], perturbation_key="perturbation")
    setup_anndata(a, **{**args, **kw})
    return a


# ------------------------------------------------------------------ setup
def test_setup_writes_only_uns_and_reads_back(tmp_path):
    a = _adata()
    before = a.copy()
    _setup(a, control_obs={"condition": "ctrl"})
    assert set(a.uns) == {"_grndiff"}
    pd.testing.assert_frame_equal(a.obs, before.obs)
    pd.testing.assert_frame_equal(a.var, before.var)
    assert (a.X != before.X).nnz == 0 and set(a.layers) == {"counts"}
    assert not a.obsm and not a.varm and not a.obsp
    s = get_setup(a)
    assert s["value_kind"] == "counts" and s["hierarchy"] == ["tissue"] and s["perturbation_key"] == "perturbation"
    assert s["control_obs"] == {"condition": ["ctrl"]} and s["symbol_key"] is None
    a.write_h5ad(tmp_path / "a.h5ad")  # the record survives h5ad round trips as plain types
    s2 = get_setup(ad.read_h5ad(tmp_path / "a.h5ad"))
    assert s2 == s and isinstance(s2["condition_keys"], list)


def test_get_setup_without_setup():
    with pytest.raises(ValueError, match="setup_anndata"):
        get_setup(_adata())


@pytest.mark.parametrize("change, kwargs, match", [
    (lambda a: None, {"condition_keys": ["celltype"]}, "not a column of adata.obs"),
    (lambda a: None, {"layer": "raw"}, "not in adata.layers"),
    (lambda a: a.obs.__setitem__("condition", a.obs["condition"].where(a.obs.index != "c3")), {},
     r"adata.obs\['condition'\] has no value \(NaN\) for 1 of 120 cells"),
    (lambda a: a.obs.__setitem__("dose", np.where(a.obs.index == "c3", np.nan, a.obs["dose"])), {}, "NaN"),
    (lambda a: None, {"set_keys": ["cell_type"]}, "registered twice"),
])
def test_setup_validation(change, kwargs, match):
    a = _adata()
    change(a)
    with pytest.raises((KeyError, ValueError), match=match):
        _setup(a, **kwargs)
    assert "_grndiff" not in a.uns


def test_setup_refuses_duplicates_and_empty():
    a = _adata()
    a.var_names = ["g0"] * a.n_vars
    with pytest.raises(ValueError, match="var_names_make_unique"):
        _setup(a)
    a = _adata()
    a.obs_names = ["c0"] * a.n_obs
    with pytest.raises(ValueError, match="obs_names_make_unique"):
        _setup(a)
    with pytest.raises(ValueError, match="empty"):
        setup_anndata(_adata()[:0].copy())


# --------------------------------------------------------------- normalize
def test_detect_kind_counts_vs_log():
    a = _adata()
    assert detect_kind(a.X) == "counts"
    L = log1p_cp10k(a.X)
    assert sp.isspmatrix_csr(L) and L.dtype == np.float32 and L.nnz == a.X.nnz  # sparse stays sparse
    assert detect_kind(L) == "log"
    np.testing.assert_allclose(L.toarray(), log1p_cp10k(a.X.toarray()), rtol=1e-6)
    np.testing.assert_allclose(np.expm1(L.toarray()).sum(1), 1e4, rtol=1e-4)
    with pytest.raises(ValueError, match="normalised but not log-transformed"):
        detect_kind(np.expm1(L.toarray()), field="adata.layers['norm']")


@pytest.mark.parametrize("bad, match", [(np.nan, "1 NaN"), (np.inf, "1 infinite"), (-1.0, "1 negative")])
def test_bad_values_refused_naming_field(bad, match):
    a = _adata(sparse=False)
    a.layers["counts"][3, 2] = bad
    with pytest.raises(ValueError, match=rf"adata.layers\['counts'\] has .*{match}"):
        _setup(a)


def test_non_integer_counts_refused():
    a = _adata()
    a.layers["counts"] = a.layers["counts"] * 1.5
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\] is declared as raw counts .* not integers"):
        _setup(a)
    a.layers["logn"] = log1p_cp10k(a.layers["counts"].astype(np.float32).floor())
    _setup(a, layer="logn")
    assert get_setup(a)["value_kind"] == "log"




def test_former_setup_names_still_work_with_a_future_warning():
    """``kind``/``perturbation_kind`` are the former names of ``value_kind``/``perturbation_type``:
    they still work (a FutureWarning), both at once is an error, and a record written with the old
    keys reads back under the new ones."""
    a = _adata()
    with pytest.warns(FutureWarning, match="now value_kind"):
        setup_anndata(a, layer="counts", kind="counts", condition_keys=["cell_type"])
    assert get_setup(a)["value_kind"] == "counts"
    with pytest.raises(TypeError, match="pass value_kind= only"):
        setup_anndata(a, layer="counts", kind="counts", value_kind="counts")
    old = {"value_kind": "kind", "perturbation_type": "perturbation_kind"}
    a.uns["_grndiff"] = {old.get(k, k): v for k, v in a.uns["_grndiff"].items()}
    a.uns["_grndiff"]["perturbation_kind"] = "kd"
    rec = get_setup(a)
    assert rec["value_kind"] == "counts" and rec["perturbation_type"] == "kd" and "kind" not in rec
def test_gene_scaler_round_trip_and_floor():
    rng = np.random.default_rng(0)
    X = sp.random(50, 7, density=0.3, random_state=0, format="csr", dtype=np.float32) * 3
    X = X.tolil()
    X[:, 6] = 0.0  # a gene constant in training
    X = X.tocsr()
    s = GeneScaler().fit(X)
    dense = X.toarray()
    np.testing.assert_allclose(s.mean, dense.mean(0), atol=1e-6)
    np.testing.assert_allclose(s.std, np.maximum(dense.std(0), 0.1), atol=1e-5)
    z = s.transform(dense)
    assert np.isfinite(z).all() and np.allclose(z[:, 6], 0)
    np.testing.assert_allclose(s.inverse(z), dense, atol=1e-5)
    x = torch.from_numpy(rng.normal(size=(4, 7)).astype(np.float32))
    torch.testing.assert_close(s.inverse(s.transform(x)), x, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------- conditions
def test_categorical_null_token_and_unknown_label():
    enc = CategoricalEncoder("cell_type").fit(pd.Series(["T", "B", "T"]))
    assert enc.categories == ["B", "T"] and enc.encode(["B", "T"]).tolist() == [1, 2]
    assert enc.spec() == {"name": "cell_type", "kind": "categorical", "n_categories": 2}
    assert enc.decode([0, 1]).tolist() == [None, "B"]
    with pytest.raises(UnknownConditionError, match=r"'cell_type'.*'NK'.*Known values: 'B', 'T'"):
        enc.encode(["NK"])
    assert isinstance(UnknownConditionError("x"), ValueError)


def test_continuous_standardises_and_refuses_nan():
    enc = ContinuousEncoder("dose").fit([0.0, 1.0, 2.0])
    np.testing.assert_allclose(enc.encode([1.0]), [0.0])
    np.testing.assert_allclose(enc.decode(enc.encode([2.0])), [2.0])
    with pytest.raises(ValueError, match="'dose'.*NaN"):
        enc.encode([np.nan])


def test_set_encoder_order_invariant_and_control_empty():
    enc = SetEncoder("drugs", control="control").fit(["dex+nutlin", "control", "dex"])
    codes = enc.encode(["dex+nutlin", "nutlin+dex", "control", "dex"])
    assert codes.dtype == np.int64 and codes.shape == (4, 2)
    assert codes[0].tolist() == codes[1].tolist() == [1, 2]
    assert codes[2].tolist() == [0, 0] and codes[3].tolist() == [1, 0]
    assert enc.decode(codes).tolist() == ["dex+nutlin", "dex+nutlin", "control", "dex"]
    with pytest.raises(UnknownConditionError, match="'aspirin'"):
        enc.encode(["aspirin+dex"])


def test_hierarchical_encoder():
    obs = pd.DataFrame({"tissue": ["blood", "blood", "lung"], "cell_type": ["B", "T", "AT2"]})
    enc = HierarchicalEncoder(["tissue", "cell_type"]).fit(obs)
    codes = enc.encode(obs)
    assert codes.shape == (3, 2) and codes.dtype == np.int64 and codes.min() >= 1
    assert enc.spec()["levels_n_categories"] == [2, 3] and enc.spec()["n_levels"] == 2
    assert enc.decode(codes)[2].tolist() == ["lung", "AT2"]


def test_perturbation_encoder_indices_and_missing_genes(caplog):
    enc = PerturbationEncoder(GENES, control="control").fit(["KLF1", "control", "CEBPA+KLF1", "KLF1+control"])
    codes = enc.encode(["KLF1", "control", "CEBPA+KLF1", "KLF1+CEBPA"])
    k, c = GENES.index("KLF1"), GENES.index("CEBPA")
    assert codes.tolist() == [[k, -1], [-1, -1], sorted([k, c]), sorted([k, c])]
    with pytest.raises(ValueError, match=r"not among the model's genes: 'GATA1'.*allow_missing_genes"):
        enc.encode(["GATA1+KLF1"])
    lenient = PerturbationEncoder(GENES, control="control", allow_missing=True)
    with caplog.at_level(logging.WARNING, logger="grndiff"):
        assert lenient.encode(["GATA1+KLF1"]).tolist() == [[k]]
    assert "GATA1" in caplog.text


def test_condition_set_encode_dict():
    a = _setup(_adata())
    cs = ConditionSet.from_setup(get_setup(a), GENES).fit(a.obs)
    assert [s["kind"] for s in cs.specs()] == ["categorical", "categorical", "continuous", "set", "hierarchical"]
    cond, pert = cs.encode_dict({"cell_type": "B cells", "perturbation": "KLF1"}, 3)
    assert cond["cell_type"].tolist() == [1, 1, 1] and cond["condition"].tolist() == [0, 0, 0]  # left out → null
    assert np.isnan(cond["dose"]).all() and (cond["drugs"] == 0).all() and (cond["tissue"] == 0).all()
    assert pert.tolist() == [[GENES.index("KLF1")]] * 3
    cond, pert = cs.encode_dict({"condition": ["ctrl", "stim"]}, 2)
    assert cond["condition"].tolist() == [1, 2] and (pert == -1).all()
    with pytest.raises(UnknownConditionError, match="Did you mean.*cell_type"):
        cs.encode_dict({"celltype": "B cells"}, 2)
    with pytest.raises(UnknownConditionError, match="'NK'"):
        cs.encode_dict({"cell_type": "NK"}, 2)


# --------------------------------------------------------------- processor
def test_processor_state_round_trip(tmp_path):
    a = _setup(_adata())
    proc = ExpressionProcessor().fit(a)
    assert proc.value_kind == "counts" and proc.genes == GENES and proc.has_gene_perturbations
    torch.save(proc.to_state(), tmp_path / "p.pt")
    back = ExpressionProcessor.from_state(torch.load(tmp_path / "p.pt", weights_only=True))
    d1, d2 = proc.prepare(a), back.prepare(a)
    assert sp.isspmatrix_csr(d1.X) and d1.X.dtype == np.float32
    assert (d1.X != d2.X).nnz == 0 and np.array_equal(d1.pert, d2.pert)
    assert all(np.array_equal(d1.cond[k], d2.cond[k]) for k in d1.cond)
    np.testing.assert_array_equal(back.scaler.std, proc.scaler.std)
    assert back.conditions.specs() == proc.conditions.specs()


def test_processor_gene_order_mismatch():
    a = _setup(_adata())
    proc = ExpressionProcessor().fit(a)
    ref = proc.prepare(a).X.toarray()
    perm = np.random.default_rng(1).permutation(a.n_vars)
    shuffled = a[:, perm].copy()
    np.testing.assert_allclose(proc.prepare(shuffled).X.toarray(), ref)  # same set, other order → reordered
    with pytest.raises(ValueError, match=r"1 missing \(e.g. \['g3'\]\)"):
        proc.prepare(a[:, [g for g in GENES if g != "g3"]].copy())
    extra = ad.AnnData(obs=a.obs, var=pd.DataFrame(index=GENES + ["new"]),
                       layers={"counts": sp.hstack([a.layers["counts"], a.layers["counts"][:, :1]]).tocsr()})
    with pytest.raises(ValueError, match=r"1 extra.*adata\[:, model.var_names\]"):
        proc.prepare(extra)


# --------------------------------------------------------- splits, batches
def test_split_seeded_stratified_and_holdout():
    a = _adata(n=400)
    obs = a.obs
    t1, v1 = split_indices(obs, val_fraction=0.2, seed=3, stratify_key="cell_type")
    t2, v2 = split_indices(obs, val_fraction=0.2, seed=3, stratify_key="cell_type")
    assert np.array_equal(t1, t2) and np.array_equal(v1, v2)
    assert not np.array_equal(v1, split_indices(obs, val_fraction=0.2, seed=4, stratify_key="cell_type")[1])
    assert np.intersect1d(t1, v1).size == 0 and t1.size + v1.size == len(obs)
    for ct, n in obs["cell_type"].value_counts().items():
        assert (obs["cell_type"].iloc[v1] == ct).sum() == int(np.floor(0.2 * n + 0.5))
    hold = {"cell_type": ["B cells"], "condition": ["stim"]}
    t, v = split_indices(obs, val_fraction=0.2, seed=0, holdout=hold)
    held = np.flatnonzero((obs["cell_type"] == "B cells").to_numpy() & (obs["condition"] == "stim").to_numpy())
    assert np.intersect1d(np.concatenate([t, v]), held).size == 0 and t.size + v.size + held.size == len(obs)
    with pytest.raises(ValueError, match="no cells labelled"):
        split_indices(obs, holdout={"cell_type": ["NK"]})


def test_datamodule_batches_shapes_dtypes_and_holdout():
    a = _setup(_adata(n=200))
    proc = ExpressionProcessor().fit(a)
    dm = GRNDataModule(proc.prepare(a), proc.scaler, a.obs, batch_size=16, val_fraction=0.1,
                       holdout={"condition": ["stim"], "cell_type": ["T cells"]})
    held = set(np.flatnonzero(((a.obs["condition"] == "stim") & (a.obs["cell_type"] == "T cells")).to_numpy()))
    assert set(dm.holdout_indices) == held and not held & (set(dm.train_indices) | set(dm.val_indices))
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {"x", "cond", "pert"}
    assert b["x"].shape == (16, len(GENES)) and b["x"].dtype == torch.float32
    assert b["pert"].dtype == torch.int64 and b["pert"].shape == (16, 2)
    assert b["cond"]["cell_type"].dtype == torch.int64 and b["cond"]["cell_type"].shape == (16,)
    assert b["cond"]["dose"].dtype == torch.float32 and b["cond"]["drugs"].shape == (16, 2)
    assert b["cond"]["tissue"].shape == (16, 1)
    assert len(dm.train_dataloader()) == len(dm.train_indices) // 16
    # the fast batch path equals the per-cell path
    ds = CellDataset(dm.cell_data, dm.scaler)
    idx = dm.train_indices[:5]
    fast, slow = ds.batch(idx), CellDataset.collate([ds[int(i)] for i in idx])
    torch.testing.assert_close(fast["x"], slow["x"])
    assert all(torch.equal(fast["cond"][k], slow["cond"][k]) for k in fast["cond"])
    # the scaled batch inverts to the log1p data
    np.testing.assert_allclose(proc.scaler.inverse(fast["x"].numpy()), dm.cell_data.X[idx].toarray(), atol=1e-5)
    loader = dm.train_dataloader()
    epochs = [torch.cat([bb["x"] for bb in loader]) for _ in range(2)]
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_control_pairing_matches_on_keys_and_is_seeded():
    a = _setup(_adata(n=300), control_obs={"condition": "ctrl"})
    proc = ExpressionProcessor().fit(a)
    data = proc.prepare(a)
    ctrl = proc.control_mask(a)
    assert np.array_equal(ctrl, (a.obs["condition"] == "ctrl").to_numpy())

    def pairs(seed):
        dm = GRNDataModule(data, proc.scaler, a.obs, batch_size=32, with_controls=True, match_keys=["cell_type"],
                           control_mask=ctrl, split_seed=seed)
        out = [(bi.target, bi.source) for bi in dm.train_dataloader().sampler]
        return dm, out

    dm, p1 = pairs(0)
    _, p2 = pairs(0)
    assert all(np.array_equal(s1, s2) for (_, s1), (_, s2) in zip(p1, p2))
    ct = a.obs["cell_type"].to_numpy()
    for t, s in p1:
        assert ctrl[s].all() and np.array_equal(ct[t], ct[s]) and np.isin(s, dm.train_indices).all()
    b = next(iter(dm.train_dataloader()))
    assert b["x0"].shape == b["x"].shape and b["x0"].dtype == torch.float32
    # a group without control cells is an explicit error
    obs = a.obs.copy()
    no_ctrl = ctrl & (obs["cell_type"] == "B cells").to_numpy()
    with pytest.raises(ValueError, match=r"B cells.*no control cells"):
        GRNDataModule(data, proc.scaler, obs, with_controls=True, match_keys=["cell_type"],
                      control_mask=ctrl & ~no_ctrl)


def test_perturbation_controls_default_for_source_control():
    a = _setup(_adata(n=150))
    proc = ExpressionProcessor().fit(a)
    dm = GRNDataModule(proc.prepare(a), proc.scaler, a.obs, batch_size=8, with_controls=True)
    b = next(iter(dm.train_dataloader()))
    assert "x0" in b and b["x0"].shape == (8, len(GENES))
    assert np.array_equal(proc.control_mask(a), a.obs["perturbation"].isin(["control"]).to_numpy())


def test_kang2018_log_layer_through_the_data_module():
    import grndiff as gd
    a = gd.datasets.kang2018()  # the shipped copy: runs in every clean clone
    setup_anndata(a, layer="logcounts", condition_keys=["cluster_id", "group_id"])
    proc = ExpressionProcessor().fit(a)
    assert proc.value_kind == "log"
    dm = GRNDataModule(proc.prepare(a), proc.scaler, a.obs, batch_size=64, stratify_key="cluster_id")
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (64, a.n_vars) and torch.isfinite(b["x"]).all()
    assert copy.deepcopy(proc.conditions.specs())[0]["n_categories"] == a.obs["cluster_id"].nunique()


def test_datamodule_under_lightning_without_validation():
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self, g):
            super().__init__()
            self.lin, self.steps = torch.nn.Linear(g, g), 0

        def training_step(self, batch, i):
            self.steps += 1
            return ((self.lin(batch["x0"]) - batch["x"]) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    a = _setup(_adata(n=100))
    proc = ExpressionProcessor().fit(a)
    dm = GRNDataModule(proc.prepare(a), proc.scaler, a.obs, batch_size=32, val_fraction=0.0, with_controls=True,
                       match_keys=["cell_type"])
    m = Tiny(a.n_vars)
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(m, datamodule=dm)
    assert m.steps == 2 * (100 // 32)


def test_perturbations_matched_through_symbol_key():
    a = _adata()
    a.var["symbol"] = GENES
    a.var_names = [f"ENSG{i:05d}" for i in range(len(GENES))]
    with pytest.raises(ValueError, match=r"'KLF1'.*symbol_key="):
        ExpressionProcessor().fit(_setup(a.copy()))
    proc = ExpressionProcessor().fit(_setup(a, symbol_key="symbol"))
    pert = proc.prepare(a).pert
    row = np.flatnonzero((a.obs["perturbation"] == "KLF1").to_numpy())[0]
    assert pert[row].tolist() == [GENES.index("KLF1"), -1]


def test_data_module_old_source_spelling_still_pairs_with_a_warning():
    a = _setup(_adata(n=150))
    proc = ExpressionProcessor().fit(a)
    with pytest.warns(FutureWarning, match="with_controls"):
        dm = GRNDataModule(proc.prepare(a), proc.scaler, a.obs, batch_size=8, source="control")
    assert dm.with_controls and "x0" in next(iter(dm.train_dataloader()))
    with pytest.raises(ValueError, match="with_controls"):
        GRNDataModule(proc.prepare(a), proc.scaler, a.obs, source="shifted")
