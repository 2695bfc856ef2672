"""Reliability: bad inputs give errors that name the field, the value and the fix (and leave the
user's AnnData untouched), loading never runs pickled code, configs are parsed safely, sampling is
deterministic, and the numerics survive bf16/fp16, extreme library sizes and a NaN loss.

The bad-input table in docs/errors.md mirrors ``BAD_INPUTS`` below.
"""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import warnings

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import grndiff as gd
from grndiff import GRNDiff
from grndiff.data import GRNDiffWarning, UnknownConditionError
from grndiff.train import AtomicCheckpointIO
from grndiff.train.checkpoint import safe_load


# ------------------------------------------------------------------ fixtures
def _krumsiek(register: bool = True) -> ad.AnnData:
    a = gd.datasets.krumsiek11()
    if register:
        GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
    return a


def _counts(n: int = 60, seed: int = 0) -> ad.AnnData:
    """Raw counts (n × 11 krumsiek genes) in layers['counts'], with a cell_type column."""
    base = gd.datasets.krumsiek11()
    rng = np.random.default_rng(seed)
    X = rng.poisson(5.0, size=(n, base.n_vars)).astype(np.float32)
    X[:, 0] += 1  # every cell has counts
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["A", "B"], n))}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X=X.copy(), obs=obs, var=base.var.copy(), layers={"counts": sp.csr_matrix(X)})


def _small_model(adata: ad.AnnData) -> GRNDiff:
    return GRNDiff(adata, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=8, heads=2, depth=1,
                   token_depth=0, ema_decay=0.0)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    adata = _krumsiek()
    model = _small_model(adata)
    model.save(tmp / "model")
    return {"tmp": tmp, "adata": adata, "model": model, "model_dir": tmp / "model"}


# --------------------------------------------------------- the bad-input matrix
def _set(X=None, *, layer=None, obs=None, var_names=None, obs_names=None, **kw):
    """An AnnData with one defect, and the call that must refuse it."""
    def make(ctx):
        a = _krumsiek(register=False)
        if X is not None:
            a.X = X(a.X.copy())
        if obs is not None:
            obs(a.obs)
        if var_names is not None:
            a.var_names = var_names(list(a.var_names))
        if obs_names is not None:
            a.obs_names = obs_names(list(a.obs_names))
        return a, lambda: GRNDiff.setup_anndata(a, layer=layer, condition_keys=["cell_type"], **kw)
    return make


def _with_nan(X):
    X[3, 2] = np.nan
    return X


def _with_inf(X):
    X[5, 1] = np.inf
    return X


def _with_neg(X):
    X[0, 0] = -1.5
    return X


def _counts_case(defect, **setup_kw):
    def make(ctx):
        a = _counts()
        defect(a)
        return a, lambda: GRNDiff.setup_anndata(a, layer="counts", condition_keys=["cell_type"], **setup_kw)
    return make


def _fractional_counts(a):
    a.layers["counts"] = a.layers["counts"].astype(np.float32) * 1.5  # 5 → 7.5: not integers


def _zero_cells(a):
    X = a.layers["counts"].toarray()
    X[[2, 7]] = 0
    a.layers["counts"] = sp.csr_matrix(X)


def _zero_cells_model(ctx):
    a = _counts()
    _zero_cells(a)
    GRNDiff.setup_anndata(a, layer="counts", condition_keys=["cell_type"])
    return a, lambda: _small_model(a)


def _no_overlap(ctx):
    a = _krumsiek()
    prior = pd.DataFrame({"source": ["TP53", "MYC"], "target": ["CDKN1A", "CCND1"], "weight": [1.0, 1.0]})
    return a, lambda: GRNDiff(a, prior=prior, modules=None)


def _perturbed_gene_nowhere(ctx):
    a = gd.datasets.krumsiek11()
    a.obs["perturbation"] = np.where(np.arange(a.n_obs) % 3 == 0, "Gata2+Xyz1", "control")
    GRNDiff.setup_anndata(a, perturbation_key="perturbation")
    return a, lambda: GRNDiff(a, prior="krumsiek11", modules=None)


def _unknown_label_sample(ctx):
    return ctx["adata"], lambda: ctx["model"].sample(5, {"cell_type": "Eryy"})


def _unknown_key_sample(ctx):
    return ctx["adata"], lambda: ctx["model"].sample(5, {"celltype": "Ery"})


def _unknown_label_predict(ctx):
    a = _krumsiek(register=False)[:10].copy()
    a.obs["cell_type"] = a.obs["cell_type"].cat.add_categories(["Tcell"])
    a.obs.iloc[0, a.obs.columns.get_loc("cell_type")] = "Tcell"
    return a, lambda: ctx["model"].predict(a, {"cell_type": "Mk"}, n_steps=2)


def _nan_condition_predict(ctx):
    a = _krumsiek(register=False)[:10].copy()
    a.obs.iloc[0, a.obs.columns.get_loc("cell_type")] = np.nan
    return a, lambda: ctx["model"].predict(a, {"cell_type": "Mk"}, n_steps=2)


def _genes_differ_predict(ctx):
    a = _krumsiek(register=False)[:10, :8].copy()
    return a, lambda: ctx["model"].predict(a, {"cell_type": "Mk"}, n_steps=2)


def _genes_renamed_load(ctx):
    a = _krumsiek(register=False)
    a.var_names = [f"{g}_v2" if i < 2 else g for i, g in enumerate(a.var_names)]
    return a, lambda: GRNDiff.load(ctx["model_dir"], adata=a)


def _file_case(write):
    def make(ctx):
        a = _krumsiek()
        path = ctx["tmp"] / f"bad-{write.__name__}"
        path.mkdir(exist_ok=True)
        write(ctx, path / "model.pt")
        return a, lambda: GRNDiff.load(path)
    return make


def _garbage(ctx, path):
    path.write_bytes(b"this is not a model\x00\x01" * 10)


def _truncated(ctx, path):
    data = (ctx["model_dir"] / "model.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _future_format(ctx, path):
    payload = torch.load(ctx["model_dir"] / "model.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)


def _not_a_model(ctx, path):
    torch.save({"weights": torch.zeros(3)}, path)


def _truncated_ckpt(ctx):
    path = ctx["tmp"] / "half.ckpt"
    data = (ctx["model_dir"] / "model.pt").read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return ctx["adata"], lambda: AtomicCheckpointIO().load_checkpoint(path)


def _nan_counts(a):
    X = a.layers["counts"].toarray()
    X[3, 2] = np.nan
    a.layers["counts"] = sp.csr_matrix(X)


def _int8_saturated(X):
    return np.clip(np.round(np.asarray(X) * 1000), 0, 127).astype(np.int8)  # counts clipped at the type's maximum


def _int8_wrapped(X):
    X = np.round(np.asarray(X) * 100).astype(np.int32)
    X[0, 0] = 200  # a count above 127: int8 wraps it to -56
    return X.astype(np.int8)


def _sample_call(**kw):
    def make(ctx):
        args = {"n_cells": 5, "n_steps": 2, **kw}
        return ctx["adata"], lambda: ctx["model"].sample(**args)
    return make


def _predict_zero_cells(ctx):
    a = _krumsiek(register=False)[:0].copy()
    return a, lambda: ctx["model"].predict(a, {"cell_type": "Mk"}, n_steps=2)


def _flipped_byte(ctx, path):
    import shutil
    shutil.copy(ctx["model_dir"] / "config.json", path.parent / "config.json")  # carries the SHA-256
    data = bytearray((ctx["model_dir"] / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a tensor: torch alone loads it without complaint
    path.write_bytes(bytes(data))


def _save_over_other_files(ctx):
    d = ctx["tmp"] / "notes"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text('{"mine": 1}')
    (d / "notes.txt").write_text("keep me")
    return ctx["adata"], lambda: ctx["model"].save(d, overwrite=True)


def _kinds_data() -> ad.AnnData:
    """krumsiek11 with knock-outs (the default kind) and activations of Gata2 and Gfi1."""
    a = _krumsiek(register=False)
    labels = np.array(["control", "Gata2", "Gata2:up", "Gfi1", "Gfi1:activation"], dtype=object)
    a.obs["perturbation"] = labels[np.arange(a.n_obs) % len(labels)]
    return a


def _unseen_kind(ctx):
    a = _kinds_data()
    GRNDiff.setup_anndata(a, perturbation_key="perturbation")
    model = GRNDiff(a, prior=None, modules=None, backbone="mlp", hidden=8, depth=1, source="gaussian")
    return a, lambda: model.sample(4, {"perturbation": "Gata2", "kind": "overexpression"})


def _kind_without_gene(ctx):
    a = _kinds_data()
    GRNDiff.setup_anndata(a, perturbation_key="perturbation")
    model = GRNDiff(a, prior=None, modules=None, backbone="mlp", hidden=8, depth=1, source="gaussian")
    return a, lambda: model.sample(4, {"kind": "activation"})


def _backed(ctx, name="backed.h5ad"):
    a = _krumsiek(register=False)
    a.X = sp.csr_matrix(a.X)
    path = ctx["tmp"] / name
    a.write_h5ad(path)
    b = ad.read_h5ad(path, backed="r")
    GRNDiff.setup_anndata(b, condition_keys=["cell_type"])
    return b


def _backed_holdout(ctx):
    b = _backed(ctx)
    model = GRNDiff(b, prior=None, modules=None, backbone="mlp", hidden=8, depth=1)
    return b, lambda: model.train(max_steps=1, holdout={"cell_type": ["Mk"]}, progress_bar=False)


def _backed_control_source(ctx):
    b = _backed(ctx, "backed-ctrl.h5ad")
    GRNDiff.setup_anndata(b, condition_keys=["cell_type"], control_obs={"cell_type": "progenitor"})
    return b, lambda: GRNDiff(b, prior=None, modules=None, backbone="mlp", hidden=8, depth=1)


# (id, make(ctx) -> (AnnData that must stay unchanged, call), exception, message fragments)
BAD_INPUTS = [
    ("nan", _set(X=_with_nan), ValueError, ["adata.X", "1 NaN", "finite", "layer='counts'"]),
    ("inf", _set(X=_with_inf), ValueError, ["adata.X", "1 infinite", "finite"]),
    ("negative", _set(X=_with_neg), ValueError, ["adata.X", "negative", "-1.5", "sc.pp.scale", "layer='counts'"]),
    ("log-declared-but-counts", _set(X=lambda X: X * 1000, value_kind="log"), ValueError,
     ["adata.X", "value_kind='log'", "maximum", "sc.pp.log1p"]),
    ("normalised-not-logged", _set(X=lambda X: X * 1000 + 0.5), ValueError, ["adata.X", "sc.pp.log1p"]),
    ("only-zeros", _set(X=lambda X: X * 0), ValueError, ["adata.X", "only zeros"]),
    ("non-integer-counts", _counts_case(_fractional_counts), ValueError,
     ["adata.layers['counts']", "not integers", "value_kind='log'", "np.round"]),
    ("all-zero-cells-counts", _zero_cells_model, ValueError,
     ["adata.layers['counts']", "2 cells with no counts", "'c2'", "sc.pp.filter_cells"]),
    ("duplicate-var-names", _set(var_names=lambda v: [v[1]] + v[1:]), ValueError,
     ["var_names", "duplicated", "var_names_make_unique()"]),
    ("duplicate-obs-names", _set(obs_names=lambda v: [v[1]] + v[1:]), ValueError,
     ["obs_names", "duplicated", "obs_names_make_unique()"]),
    ("empty", lambda ctx: (lambda a: (a, lambda: GRNDiff.setup_anndata(a)))(_krumsiek(register=False)[:0].copy()),
     ValueError, ["empty", "0 cells"]),
    ("nan-condition", _set(obs=lambda o: o.__setitem__("cell_type", o["cell_type"].astype(object).where(
        np.arange(len(o)) != 4, np.nan))), ValueError, ["adata.obs['cell_type']", "NaN", "1 of 640", "notna()"]),
    ("missing-condition-key",
     lambda ctx: (lambda a: (a, lambda: GRNDiff.setup_anndata(a, condition_keys=["celltype"])))(
        _krumsiek(register=False)), KeyError, ["'celltype'", "adata.obs", "cell_type"]),
    ("missing-layer", _set(layer="counts"), KeyError, ["layer='counts'", "adata.layers", "layer=None"]),
    ("nan-continuous", _set(obs=lambda o: o.__setitem__("time", o["time"].astype(float).where(
        np.arange(len(o)) != 0, np.nan)), continuous_keys=["time"]), ValueError,
     ["adata.obs['time']", "1 NaN", "np.isfinite"]),
    ("prior-no-overlap", _no_overlap, ValueError, ["do not overlap", "TP53", "Gata2", "symbols=", "organism="]),
    ("perturbed-gene-nowhere", _perturbed_gene_nowhere, ValueError,
     ["'Xyz1'", "neither measured", "prior krumsiek11", "allow_missing_genes=True"]),
    ("unknown-label-sample", _unknown_label_sample, UnknownConditionError,
     ["'cell_type'", "'Eryy'", "Did you mean", "'Ery'", "Known values"]),
    ("unknown-key-sample", _unknown_key_sample, UnknownConditionError, ["'celltype'", "Did you mean", "cell_type"]),
    ("unknown-label-predict", _unknown_label_predict, UnknownConditionError,
     ["'cell_type'", "'Tcell'", "Known values"]),
    ("nan-condition-predict", _nan_condition_predict, UnknownConditionError, ["'cell_type'", "'NaN'", "Known values"]),
    ("genes-differ-predict", _genes_differ_predict, ValueError,
     ["adata.var_names", "3 missing", "'Gfi1'", "every gene it was trained on"]),
    ("genes-differ-load", _genes_renamed_load, ValueError,
     ["adata.var_names", "2 missing", "2 extra", "'Gata2_v2'", "retrain"]),
    ("model-file-garbage", _file_case(_garbage), ValueError, ["cannot load", "corrupted", "re-save or retrain"]),
    ("model-file-truncated", _file_case(_truncated), ValueError, ["cannot load", "truncated", "re-save or retrain"]),
    ("model-format-version", _file_case(_future_format), ValueError,
     ["model format 99", f"reads format {gd.train.checkpoint.FORMAT_VERSION}", "grndiff version that wrote it"]),
    ("not-a-model-file", _file_case(_not_a_model), ValueError, ["not a grndiff model file"]),
    ("checkpoint-truncated", _truncated_ckpt, ValueError, ["cannot load", "half.ckpt", "truncated", "retrain"]),
    ("not-registered", lambda ctx: (lambda a: (a, lambda: GRNDiff(a, prior=None, modules=None)))(
        _krumsiek(register=False)), ValueError, ["adata.uns['_grndiff']", "setup_anndata"]),
    ("nan-in-counts-layer", _counts_case(_nan_counts), ValueError,
     ["adata.layers['counts']", "1 NaN", "re-read or recompute this layer"]),
    ("int8-saturated", _set(X=_int8_saturated), ValueError, ["adata.X", "int8", "127", "float32 or int32"]),
    ("perturbation-kind-unseen", _unseen_kind, UnknownConditionError,
     ["obs['perturbation']", "['oe']", "never occur in training", "['ko', 'crispra']"]),
    ("perturbation-kind-without-gene", _kind_without_gene, UnknownConditionError,
     ["'kind'", "'perturbation' is not given", "'activation'"]),
    ("perturbation-kind-unknown-word", lambda ctx: (lambda a: (a, lambda: GRNDiff.setup_anndata(
        a, perturbation_key="perturbation", perturbation_type="crisprx")))(_kinds_data()), ValueError,
     ["perturbation_type", "'crisprx'", "crispra", "activation"]),
    ("int8-wrapped-negative", _set(X=_int8_wrapped), ValueError,
     ["adata.X", "int8", "wrapped around", "-56", "float32 or int32"]),
    ("sample-n-cells-float", _sample_call(n_cells=2.5), TypeError, ["n_cells", "whole number", "2.5"]),
    ("sample-n-cells-zero", _sample_call(n_cells=0), ValueError, ["n_cells", "≥ 1", "0"]),
    ("sample-batch-size-zero", _sample_call(batch_size=0), ValueError, ["batch_size", "≥ 1", "got 0"]),
    ("sample-n-steps-zero", _sample_call(n_steps=0), ValueError, ["n_steps", "≥ 1", "got 0"]),
    ("sample-guidance-nan", _sample_call(guidance=float("nan")), ValueError, ["guidance", "finite", "nan"]),
    ("sample-method-unknown", _sample_call(method="rk4"), ValueError, ["method", "'rk4'", "euler"]),
    ("predict-zero-cells", _predict_zero_cells, ValueError, ["0 cells", "control cells"]),
    ("model-file-flipped-byte", _file_case(_flipped_byte), ValueError,
     ["cannot load", "SHA-256", "config.json", "corrupted"]),
    ("save-over-other-files", _save_over_other_files, FileExistsError,
     ["not a saved grndiff model", "notes.txt", "new or empty directory"]),
    ("backed-holdout", _backed_holdout, ValueError, ["holdout=", "backed", "adata.to_memory()"]),
    ("backed-control-source", _backed_control_source, ValueError,
     ["control cell", "streaming from disk", "source='gaussian'", "adata.to_memory()"]),
]


def _same(a, b) -> bool:
    """Deep equality of nested dict/list/array/DataFrame/sparse values (NaN == NaN)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if sp.issparse(a) or sp.issparse(b):
        return sp.issparse(a) and sp.issparse(b) and a.shape == b.shape and a.dtype == b.dtype and \
            _same(a.toarray(), b.toarray())
    if isinstance(a, (pd.DataFrame, pd.Series)):
        return type(a) is type(b) and a.equals(b) and list(map(str, a.dtypes if a.ndim == 2 else [a.dtype])) == \
            list(map(str, b.dtypes if b.ndim == 2 else [b.dtype]))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def assert_unchanged(before: ad.AnnData, after: ad.AnnData) -> None:
    assert _same(before.X, after.X), "X changed"
    assert _same(before.obs, after.obs) and list(before.obs_names) == list(after.obs_names), "obs changed"
    assert _same(before.var, after.var) and list(before.var_names) == list(after.var_names), "var changed"
    assert _same(dict(before.uns), dict(after.uns)), "uns changed"
    assert _same(dict(before.layers), dict(after.layers)), "layers changed"
    assert _same(dict(before.obsm), dict(after.obsm)), "obsm changed"
    assert _same(dict(before.varm), dict(after.varm)), "varm changed"


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_clear_error_and_anndata_unchanged(case, ctx):
    _, make, exc, fragments = case
    adata, call = make(ctx)
    before = adata.to_memory() if adata.isbacked else copy.deepcopy(adata)  # h5py handles do not deepcopy
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value.args[0]) if isinstance(info.value, KeyError) else str(info.value)
    missing = [f for f in fragments if f not in msg]
    assert not missing, f"message lacks {missing}: {msg}"
    assert_unchanged(before, adata.to_memory() if adata.isbacked else adata)


def test_all_zero_genes_are_accepted_with_floored_std(ctx):
    a = _counts()
    X = a.layers["counts"].toarray()
    X[:, 3] = 0  # a gene never detected: common, harmless
    a.layers["counts"] = sp.csr_matrix(X)
    GRNDiff.setup_anndata(a, layer="counts", condition_keys=["cell_type"])
    before = copy.deepcopy(a)
    model = _small_model(a)
    assert model.processor.scaler.std[3] == pytest.approx(0.1)
    x = model.processor.scaled_dense(a)
    assert np.isfinite(x).all() and np.all(x[:, 3] == 0)
    gen = model.sample(4, {"cell_type": "A"}, n_steps=2)
    assert np.isfinite(gen.X).all()
    assert_unchanged(before, a)


def test_reordered_genes_are_accepted_at_predict():
    train = _krumsiek(register=False)
    GRNDiff.setup_anndata(train, condition_keys=["cell_type"], control_obs={"cell_type": "progenitor"})
    model = GRNDiff(train, prior=None, modules=None, backbone="mlp", hidden=8, depth=1)  # a transport model
    a = _krumsiek(register=False)[:12].copy()
    perm = a[:, a.var_names[::-1]].copy()
    before = copy.deepcopy(perm)
    p1 = model.predict(a, {"cell_type": "Mk"}, n_steps=3)
    p2 = model.predict(perm, {"cell_type": "Mk"}, n_steps=3)
    assert np.allclose(p1.X, p2.X, atol=1e-5) and list(p2.var_names) == list(a.var_names)
    assert_unchanged(before, perm)


# ------------------------------------------------------------------ safe loading
class _Evil:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_pickle_is_refused_and_never_runs(ctx, tmp_path):
    marker = tmp_path / "PWNED"
    good = torch.load(ctx["model_dir"] / "model.pt", weights_only=True)
    (tmp_path / "m").mkdir()
    torch.save({**good, "history": _Evil(marker)}, tmp_path / "m" / "model.pt")
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": good["state_dict"], "hyper_parameters": {"x": _Evil(marker)}}, ckpt)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil(marker)))

    with pytest.raises(ValueError, match="cannot load .*never unpickles code"):
        GRNDiff.load(tmp_path / "m")
    for path in (ckpt, raw, tmp_path / "m" / "model.pt"):
        with pytest.raises(ValueError, match="cannot load .*never unpickles code"):
            safe_load(path)
        with pytest.raises(ValueError, match="cannot load .*refuses to load it"):
            AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(ValueError, match="cannot load"):
        GRNDiff.load(ckpt)
    assert not marker.exists(), "a pickled payload was executed"


def test_yaml_config_python_tags_are_rejected(tmp_path, capsys):
    from grndiff.cli import main

    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"seed_everything: !!python/object/apply:os.system [\"touch '{marker}'\"]\n"
                   "trainer: {max_steps: 1, accelerator: cpu, logger: false, enable_checkpointing: false}\n"
                   "data: {dataset: krumsiek11, prior: krumsiek11, modules: null, condition_keys: [cell_type]}\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(cfg)])
    assert "could not determine a constructor for the tag" in capsys.readouterr().err  # yaml safe loader
    assert not marker.exists(), "a YAML python tag was executed"


# ------------------------------------------------------------------ determinism
def test_same_seed_same_samples_api(ctx):
    m = ctx["model"]
    a = m.sample(16, {"cell_type": "Ery"}, n_steps=5, seed=7)
    b = m.sample(16, {"cell_type": "Ery"}, n_steps=5, seed=7)
    c = m.sample(16, {"cell_type": "Ery"}, n_steps=5, seed=8)
    assert np.array_equal(a.X, b.X) and not np.allclose(a.X, c.X)
    loaded = GRNDiff.load(ctx["model_dir"])
    assert np.array_equal(loaded.sample(16, {"cell_type": "Ery"}, n_steps=5, seed=7).X, a.X)


def test_same_seed_same_samples_cli(ctx, tmp_path):
    from grndiff.cli import main

    def run(seed, name):
        out = tmp_path / name
        main(["sample", "--ckpt", str(ctx["model_dir"]), "--n-cells", "12", "--n-steps", "4", "--seed", str(seed),
              "--conditions", "cell_type=Mk", "--out", str(out)])
        return ad.read_h5ad(out).X

    a, b, c = run(0, "a.h5ad"), run(0, "b.h5ad"), run(1, "c.h5ad")
    assert np.array_equal(a, b) and not np.allclose(a, c)


# --------------------------------------------------------------------- numerics
def _batch(model, adata, n=32):
    x = torch.as_tensor(model.processor.scaled_dense(adata[:n]))
    cond, pert, _ = model.processor.conditions.request({k: adata.obs[k].to_numpy()[:n] for k in
                                              model.processor.conditions.keys}, x.shape[0])
    return {"x": x, "cond": cond, "pert": pert} if pert is not None else {"x": x, "cond": cond}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_forward_backward_finite(ctx, dtype):
    model = _small_model(ctx["adata"])
    net = model.module.net.train()
    batch = _batch(model, ctx["adata"])
    t = torch.rand(batch["x"].shape[0])
    try:
        with torch.autocast("cpu", dtype=dtype):
            v = net(batch["x"], t, batch["cond"], None)
            loss = (v.float() - batch["x"]).square().mean()
    except RuntimeError as e:  # fp16 autocast on CPU is missing for some ops in older torch
        pytest.skip(f"{dtype} autocast unsupported on this CPU build: {e}")
    loss.backward()
    assert torch.isfinite(v.float()).all() and torch.isfinite(loss)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_extreme_library_sizes_finite_inputs_and_loss():
    a = _counts(n=40)
    X = a.layers["counts"].toarray()
    X[0] = 0
    X[0, :3] = [4, 3, 3]  # a 10-count cell
    X[1] *= 1e7 / X[1].sum()
    X[1] = np.round(X[1])  # a ~10^7-count cell
    a.layers["counts"] = sp.csr_matrix(X)
    GRNDiff.setup_anndata(a, layer="counts", condition_keys=["cell_type"])
    model = _small_model(a)
    model._ensure_source()  # fitted where first used: here, the loss below
    batch = _batch(model, a, n=40)
    assert torch.isfinite(batch["x"]).all()
    assert batch["x"].abs().max() < 1e3
    loss = model.module._loss(batch)
    assert torch.isfinite(loss)


def test_nan_loss_stops_training_before_a_checkpoint(ctx, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = _small_model(ctx["adata"])
    net, bad_at = model.module.net, 3
    calls = {"n": 0}
    real_forward = net.forward

    def poisoned(*args, **kw):  # the 4th training forward returns NaN
        out = real_forward(*args, **kw)
        if net.training:
            calls["n"] += 1
            if calls["n"] == bad_at + 1:
                out = out * float("nan")
        return out

    net.forward = poisoned
    ckdir = tmp_path / "ckpt"
    cb = ModelCheckpoint(dirpath=ckdir, every_n_train_steps=1, save_top_k=-1, save_last=True)
    with pytest.raises(FloatingPointError, match=rf"training loss became nan at step {bad_at}: stopping before a "
                                                 "broken checkpoint.*Lower the learning rate"):
        model.train(max_steps=8, batch_size=64, progress_bar=False, enable_checkpointing=True, callbacks=[cb],
                    plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0, limit_val_batches=0)
    steps = []
    for p in ckdir.glob("*.ckpt"):
        ck = torch.load(p, weights_only=True)
        steps.append(ck["global_step"])
        assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert steps and max(steps) == bad_at, sorted(steps)
    assert not list(ckdir.glob("*.tmp")) and not list(ckdir.glob(".*"))
    L.seed_everything(0, verbose=False)


# ------------------------------------------------------------ silent fallbacks warn
def _two_keys() -> ad.AnnData:
    """krumsiek11 with a condition column, no (Mk, stim) cell, and a dose in [0, 10]."""
    a = _krumsiek(register=False)
    a.obs["condition"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2, "stim", "ctrl"))
    a = a[~((a.obs["cell_type"] == "Mk") & (a.obs["condition"] == "stim")).to_numpy()].copy()
    a.obs["dose"] = np.linspace(0.0, 10.0, a.n_obs)
    GRNDiff.setup_anndata(a, condition_keys=["cell_type", "condition"], continuous_keys=["dose"])
    return a


def _grndiff_warnings(call) -> list[str]:
    from grndiff.data import conditions

    conditions._WARNED.clear()  # each test starts a fresh session
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")  # grndiff itself shows each message once
        call()
    return [str(w.message) for w in rec if issubclass(w.category, GRNDiffWarning)]


def test_sampling_fallbacks_warn_once_naming_the_fix():
    a = _two_keys()
    model = GRNDiff(a, prior=None, modules=None, backbone="mlp", hidden=8, depth=1, source="gaussian")
    before = copy.deepcopy(a)

    def unseen_twice():
        for _ in range(2):
            model.sample(4, {"cell_type": "Mk", "condition": "stim", "dose": 5.0}, n_steps=2)

    msgs = _grndiff_warnings(unseen_twice)
    assert len(msgs) == 1, msgs  # once, not per call
    assert all(f in msgs[0] for f in ("never seen in training", "cell_type='Mk', condition='stim'", "pooled",
                                      "model.predict")), msgs[0]
    assert _grndiff_warnings(lambda: model.sample(4, {"cell_type": "Mk", "condition": "ctrl", "dose": 5.0},
                                                  n_steps=2)) == []
    far = _grndiff_warnings(lambda: model.sample(4, {"cell_type": "Ery", "condition": "stim", "dose": 100.0},
                                                 n_steps=2))
    assert len(far) == 1 and "'dose'" in far[0] and "training range [0, 10]" in far[0] and "extrapolates" in far[0]
    assert _grndiff_warnings(lambda: model.sample(4, {"dose": 11.0}, n_steps=2)) == []  # near the range: fine
    gen = model.sample(3, {"cell_type": None, "condition": "stim"}, n_steps=2)
    assert gen.obs["cell_type"].isna().all() and "None" not in list(gen.obs["cell_type"].cat.categories)
    assert_unchanged(before, a)


def _float16(a):
    a.X = a.X.astype(np.float16)
    return {}


def _int8(a):
    a.X = np.round(np.asarray(a.X) * 10).astype(np.int8)
    return {}


def _deep_cell(a):
    X = np.round(np.asarray(a.X) * 10).astype(np.float32)
    X[1] = np.round(X[1] * 1e9 / X[1].sum())
    a.layers["counts"] = sp.csr_matrix(X)
    return {"layer": "counts"}


@pytest.mark.parametrize("defect, fragments", [
    (_float16, ["adata.X", "float16", "astype(np.float32)"]),
    (_int8, ["adata.X", "int8", "overflow", "astype(np.float32)"]),
    (_deep_cell, ["adata.layers['counts']", "1e+09 counts", "raw UMI counts", "<= 1e8"]),
], ids=["float16", "int8", "1e9-counts"])
def test_lossy_or_absurd_matrices_warn_at_setup(defect, fragments):
    a = _krumsiek(register=False)
    kw = defect(a)
    before = copy.deepcopy(a)
    msgs = _grndiff_warnings(lambda: GRNDiff.setup_anndata(a, condition_keys=["cell_type"], **kw))
    assert len(msgs) == 1 and all(f in msgs[0] for f in fragments), msgs
    del a.uns["_grndiff"]  # the registration is the only change
    assert_unchanged(before, a)


def test_nan_in_the_counts_layer_does_not_advise_the_counts_layer():
    a = _counts()
    _nan_counts(a)
    with pytest.raises(ValueError) as info:
        GRNDiff.setup_anndata(a, layer="counts")
    assert "layer='counts'" not in str(info.value) and "adata.layers['counts']" in str(info.value)


# ------------------------------------------------------------------ priors
def test_prior_accepts_networkx_graphs_and_every_shipped_name():
    import networkx as nx

    from grndiff.graph import GeneGraph

    a = _krumsiek()
    net = gd.datasets.krumsiek11_network()
    g = nx.DiGraph()
    g.add_weighted_edges_from(net[["source", "target", "weight"]].itertuples(index=False))

    def edges(graph):
        i = graph.edge_index.numpy()
        return sorted(zip(i[0], i[1], graph.edge_sign.numpy()))

    reference = edges(GeneGraph.for_anndata(a, net, None))
    assert edges(GeneGraph.for_anndata(a, g, None)) == reference
    assert edges(GeneGraph.for_anndata(a, "krumsiek11", None)) == reference
    model = GRNDiff(a, prior=g, modules=None, hidden=8, heads=2, depth=1, token_depth=0)
    assert edges(model.graph) == reference and model.config["prior"] == "DiGraph"


# ------------------------------------------------------------------ out of core
def test_readme_out_of_core_snippet(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- out-of-core:")[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block, "README.md (out-of-core)", "exec"), ns)
    assert isinstance(ns["model"], GRNDiff) and ns["model"].is_trained
    assert ns["cells"].n_obs == 100 and (ns["cells"].obs["cell_type"] == "Mk").all()


def test_from_h5ad_streams_from_disk_like_the_in_memory_model(tmp_path):
    from grndiff.data import BackedDataModule

    a = _krumsiek(register=False)
    a.X = sp.csr_matrix(a.X)
    a.write_h5ad(tmp_path / "k.h5ad")
    kw = dict(prior="krumsiek11", modules=None, hidden=8, heads=2, depth=1, token_depth=0)
    disk = GRNDiff.from_h5ad(tmp_path / "k.h5ad", setup={"condition_keys": ["cell_type"]}, **kw)
    assert disk._adata.isbacked and isinstance(disk.datamodule(disk._adata, val_fraction=0.1), BackedDataModule)
    GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
    memory = GRNDiff(a, **kw)
    assert np.allclose(disk.processor.scaler.mean, memory.processor.scaler.mean, atol=1e-5)
    assert np.allclose(disk.processor.scaler.std, memory.processor.scaler.std, atol=1e-5)
    disk.train(max_steps=5, batch_size=32, progress_bar=False)
    assert disk.is_trained and len(disk.history) and np.isfinite(disk.history["train_loss"]).all()
    disk.save(tmp_path / "m")
    again = GRNDiff.load(tmp_path / "m")
    s1 = disk.sample(8, {"cell_type": "Mk"}, n_steps=3, seed=1)
    s2 = again.sample(8, {"cell_type": "Mk"}, n_steps=3, seed=1)
    assert np.array_equal(s1.X, s2.X)


# ------------------------------------------------------------------ a quiet console
_TRAIN_20 = """
import grndiff as gd
from grndiff import GRNDiff
a = gd.datasets.krumsiek11()
GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
m = GRNDiff(a, prior="krumsiek11", modules=None, hidden=8, heads=2, depth=1, token_depth=0)
m.train(max_steps=20, progress_bar=False)
"""


def test_twenty_step_train_prints_nothing():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    r = subprocess.run([sys.executable, "-c", _TRAIN_20], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = (r.stdout + r.stderr).splitlines()
    assert len(printed) == 0, printed


def test_quiet_is_scoped_and_never_hides_grndiff_warnings():
    import logging

    from grndiff.data.conditions import warn
    from grndiff.train.quiet import quiet

    lightning_log = logging.getLogger("lightning.pytorch")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with quiet():
            assert not lightning_log.isEnabledFor(logging.INFO)
            warnings.warn("Found 7 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
            warn("a grndiff fallback")
        with quiet(verbose=True):
            assert lightning_log.isEnabledFor(logging.INFO)
            warnings.warn("Found 7 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
    assert lightning_log.isEnabledFor(logging.INFO)  # restored after the block
    assert [str(w.message)[:5] for w in rec] == ["a grn", "Found"]


def test_progress_where_the_user_is(ctx, monkeypatch, capfd):
    """A bar on a terminal (and in Jupyter), plain lines with the loss and the ETA in a log file,
    nothing when asked for nothing (issue: 3,000 silent steps in `make demo > log`)."""
    from grndiff import _progress
    from grndiff.train import quiet

    on, cbs = quiet.progress_callbacks(True)  # pytest's stderr is not a terminal: a log
    assert not on and len(cbs) == 1 and isinstance(cbs[0], quiet.LogProgress)
    assert quiet.progress_callbacks(False) == (False, [])
    monkeypatch.setattr(_progress, "stderr_is_terminal", lambda: True)
    on, bars = quiet.progress_callbacks(True)
    assert on and len(bars) == 1 and isinstance(bars[0], quiet.FitProgressBar)
    capfd.readouterr()
    _small_model(ctx["adata"]).train(max_steps=6, batch_size=64, val_fraction=0.2)
    out = capfd.readouterr()
    assert "training" in out.err and "6/6" in out.err
    assert not any(w in out.out + out.err for w in ("Validation", "Sanity", "Epoch", "GPU available"))


# ------------------------------------------------------------------ perturbation kinds
def test_one_model_holds_knockouts_and_activations(tmp_path):
    a = _kinds_data()
    GRNDiff.setup_anndata(a, perturbation_key="perturbation")  # default kind: knock-out
    model = GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=8, heads=2, depth=1,
                    token_depth=0, source="noise")  # (a Gaussian on all 11 axes would leave the flow nothing to do)
    enc = model.processor.conditions.perturbation
    assert enc.kinds == ["ko", "crispra"] and model.module.net.pert_embed.n_kinds == 2
    G = a.n_vars
    gata2 = list(a.var_names).index("Gata2")
    codes = enc.encode(["Gata2", "Gata2:up", "Gata2:crispra", "control"])
    assert codes[:, 0].tolist() == [gata2, gata2 + G, gata2 + G, -1]
    assert list(enc.decode(codes[:2])) == ["Gata2", "Gata2:crispra"]
    model.train(max_steps=15, batch_size=64, val_fraction=0.0, progress_bar=False)
    up = model.sample(16, {"perturbation": "Gata2", "kind": "activation"}, n_steps=4, seed=3)
    assert np.array_equal(up.X, model.sample(16, {"perturbation": "Gata2:up"}, n_steps=4, seed=3).X)
    ko = model.sample(16, {"perturbation": "Gata2"}, n_steps=4, seed=3)
    assert not np.allclose(up.X, ko.X)  # a learned flag per kind
    model.save(tmp_path / "m")
    again = GRNDiff.load(tmp_path / "m")
    assert np.array_equal(again.sample(16, {"perturbation": "Gata2:up"}, n_steps=4, seed=3).X, up.X)


def test_single_kind_embedder_is_the_multi_kind_one_restricted_to_kind_zero():
    from grndiff.nn import PerturbationEmbedder

    torch.manual_seed(0)
    G, D = 11, 8
    ei = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    one = PerturbationEmbedder(G, D, ei, torch.tensor([1, -1, 1, 1, -1]), hops=2)
    two = PerturbationEmbedder(G, D, ei, torch.tensor([1, -1, 1, 1, -1]), hops=2, n_kinds=2)
    assert "kind_flags" not in dict(one.named_parameters())  # one kind: the state dict of old models
    with torch.no_grad():
        two.flag.copy_(one.flag)
        two.prop.weight.zero_()
        two.prop.weight[:, :4].copy_(one.prop.weight)  # kind-0 channels come first
        two.prop.bias.copy_(one.prop.bias)
        two.global_mlp.load_state_dict(one.global_mlp.state_dict())
    pert, ident = torch.tensor([[0, 3], [2, -1], [-1, -1]]), torch.randn(G, D)
    for x, y in zip(one(pert, ident), two(pert, ident)):
        assert torch.allclose(x, y, atol=1e-6)
    node_up, _ = two(pert + G * (pert >= 0), ident)  # the same genes, activated
    assert not torch.allclose(node_up, two(pert, ident)[0])
