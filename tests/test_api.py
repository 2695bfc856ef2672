"""GRNDiff end to end on krumsiek11 (tiny): train, sample, predict, save/load, CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import grndiff as gd
from grndiff.model import GRNDiff

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def krumsiek():
    adata = gd.datasets.krumsiek11()
    GRNDiff.setup_anndata(adata, condition_keys=["cell_type"])
    return adata


@pytest.fixture(scope="module")
def trained(krumsiek):
    model = GRNDiff(krumsiek, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=32, depth=2,
                    token_depth=0, ema_decay=0.99, warmup_steps=10, lr=3e-3)
    model.train(max_steps=150, max_epochs=1000, batch_size=64, progress_bar=False)
    return model


def test_sample_returns_anndata_with_conditions(trained, krumsiek):
    gen = trained.sample(40, conditions={"cell_type": "Mk"}, n_steps=10, seed=0)
    assert gen.shape == (40, krumsiek.n_vars)
    assert list(gen.var_names) == list(krumsiek.var_names)
    assert (gen.obs["cell_type"] == "Mk").all()
    assert gen.uns["grndiff"]["params"]["seed"] == 0
    assert np.isfinite(gen.X).all() and gen.X.min() >= 0
    assert not trained.history.empty


def test_save_load_round_trip_identical_samples(trained, tmp_path):
    trained.save(tmp_path / "m")
    loaded = GRNDiff.load(tmp_path / "m")
    a = trained.sample(16, {"cell_type": "Mo"}, n_steps=6, seed=3)
    b = loaded.sample(16, {"cell_type": "Mo"}, n_steps=6, seed=3)
    assert np.array_equal(a.X, b.X)
    with pytest.raises(FileExistsError):
        trained.save(tmp_path / "m")


def test_gaussian_source_starts_at_the_group_gaussian_and_round_trips(krumsiek, tmp_path):
    model = GRNDiff(krumsiek, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=16, depth=1,
                    source={"name": "gaussian", "k": 5, "residual": 1.0}, lr=1e-12, warmup_steps=1)
    assert model.module.hparams.prediction == "velocity"  # v ≡ 0 at init: the flow starts as the source
    model.train(max_steps=2, max_epochs=10, batch_size=64, val_fraction=0.0, progress_bar=False)
    assert model.module.source.fitted
    X = krumsiek.X.toarray() if hasattr(krumsiek.X, "toarray") else np.asarray(krumsiek.X)
    for ct in ("Ery", "Mk"):
        gen = model.sample(3000, {"cell_type": ct}, n_steps=2, seed=0, clip=False)
        real = X[(krumsiek.obs["cell_type"] == ct).to_numpy()]
        np.testing.assert_allclose(gen.X.mean(0), real.mean(0), atol=0.05)
    model.save(tmp_path / "g")
    loaded = GRNDiff.load(tmp_path / "g")
    a = model.sample(10, {"cell_type": "Mo"}, n_steps=3, seed=4)
    assert np.array_equal(a.X, loaded.sample(10, {"cell_type": "Mo"}, n_steps=3, seed=4).X)
    # a format-1 model saved before `source_space` existed (flat config, no `scale` buffer) loads as "scaled"
    payload = torch.load(tmp_path / "g" / "model.pt", weights_only=True)
    cfg = payload["config"]
    payload["config"] = {"backbone": cfg["backbone"], "prior": cfg["prior"], "modules": cfg["modules"],
                         "organism": cfg["organism"], "match_keys": None, "source": "gaussian", "source_comps": 5,
                         "source_residual": 1.0, "source_coupling": "lowrank", **cfg["options"],
                         "net_kwargs": {"hidden": 16, "depth": 1}}
    payload["state_dict"] = {k.replace("source.dist.", "source_dist."): v for k, v in payload["state_dict"].items()
                             if k not in ("source.dist.scale", "source._fitted")}
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "g" / "model.pt")
    meta = json.loads((tmp_path / "g" / "config.json").read_text())
    meta.pop("model_sha256")  # format-1 saves carried no checksum (a changed model.pt with one is refused)
    (tmp_path / "g" / "config.json").write_text(json.dumps(meta))
    old = GRNDiff.load(tmp_path / "g")
    assert old.module.hparams.source == {"name": "gaussian", "k": 5, "residual": 1.0, "coupling": "lowrank",
                                         "space": "scaled"}
    assert torch.equal(old.module.source.dist.scale, torch.ones(krumsiek.n_vars))
    assert old.sample(10, {"cell_type": "Mo"}, n_steps=3, seed=4).shape == (10, krumsiek.n_vars)


def test_lowrank_coupling_keeps_the_gaussian_low_rank_state(krumsiek):
    """The Gaussian source's low-rank coupling: training pairs keep x₁'s k coordinates and the velocity is projected
    off the k axes, so a generated cell sits exactly at its source draw on them and moves off them."""
    model = GRNDiff(krumsiek, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=16, depth=1,
                    token_depth=0, source=gd.flow.GaussianSource(k=3, coupling="lowrank"), lr=3e-3,
                    warmup_steps=5)
    model.train(max_steps=40, max_epochs=100, batch_size=64, val_fraction=0.0, progress_bar=False)
    mod = model.module
    cond, pert, _ = model.processor.conditions.request({"cell_type": "Ery"}, 64)
    x0 = mod.source.draw(64, cond, pert, seed=0)
    x1 = mod.generate(x0, cond, pert, n_steps=6)
    # the source's axes live in log1p units (space="log"): scaled data times the scaler's std
    s = mod.source.dist.scale
    torch.testing.assert_close(s, torch.as_tensor(model.processor.scaler.std, dtype=torch.float32))
    assert s.std() > 0  # krumsiek's genes differ in spread: this is not the identity
    W = mod.source.dist.basis * s[:, None]  # (G, k): coordinates of scaled data are (x * s) @ basis
    torch.testing.assert_close(x1 @ W, x0 @ W, atol=1e-4, rtol=1e-4)
    assert (x1 - x0).abs().max() > 1e-2  # the residual did move
    # the training target has no component on the k axes either
    xs = torch.randn(32, krumsiek.n_vars, generator=torch.Generator().manual_seed(0))
    c = mod.source.dist.couple(xs, torch.ones(32, dtype=torch.long))
    torch.testing.assert_close((xs - c) @ W, torch.zeros(32, W.shape[1]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="ot_pairing"):  # OT would re-pair what the coupling built
        GRNDiff(krumsiek, prior=None, modules=None, backbone="mlp", hidden=8, depth=1, ot_pairing=True)
    with pytest.raises(ValueError, match="space"):
        GRNDiff(krumsiek, prior=None, modules=None, backbone="mlp", hidden=8, depth=1,
                source={"name": "gaussian", "space": "pca"})
    with pytest.raises(TypeError, match="unknown options"):
        GRNDiff(krumsiek, prior=None, modules=None, backbone="mlp", hidden=8, depth=1,
                source={"name": "gaussian", "comps": 3})
    plain = GRNDiff(krumsiek, prior=None, modules=None, backbone="mlp", hidden=8, depth=1,
                    source={"name": "gaussian", "space": "scaled"})
    assert torch.equal(plain.module.source.dist.scale, torch.ones(krumsiek.n_vars))


def test_predict_on_a_generative_source_is_a_clear_error(trained, krumsiek):
    """A Gaussian-source model cannot transport: predict() used to return the control cells
    almost unchanged; now it says what to set."""
    ctrl = krumsiek[krumsiek.obs["cell_type"] == "Mo"][:30].copy()
    before = ctrl.copy()
    with pytest.raises(ValueError, match="source='shifted_control'"):
        trained.predict(ctrl, {"cell_type": "Ery"}, n_steps=10)
    assert np.array_equal(ctrl.X, before.X)  # input untouched


@pytest.mark.slow  # a subprocess end to end
@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(config):
    """A misspelt key in a shipped config fails here, not after a user's data has loaded."""
    r = subprocess.run([sys.executable, "-m", "grndiff.cli", "fit", "--config", f"configs/{config}", "--print_config"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "model:" in r.stdout and "data:" in r.stdout


@pytest.mark.slow  # a subprocess end to end
def test_cli_fast_dev_run_and_sample(tmp_path):
    r = subprocess.run([sys.executable, "-m", "grndiff.cli", "fit", "--config", "configs/tiny.yaml",
                        "--trainer.fast_dev_run=true"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "tiny"
    r = subprocess.run([sys.executable, "-m", "grndiff.cli", "fit", "--config", "configs/tiny.yaml",
                        f"--export={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    gen_path = tmp_path / "gen.h5ad"
    r = subprocess.run([sys.executable, "-m", "grndiff.cli", "sample", "--ckpt", str(out), "--n-cells", "25",
                        "--conditions", "cell_type=Mk", "--n-steps", "5", "--out", str(gen_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import anndata as ad
    gen = ad.read_h5ad(gen_path)
    assert gen.n_obs == 25 and (gen.obs["cell_type"] == "Mk").all()


@pytest.mark.slow
def test_readme_perturbation_snippet():
    """The README's perturbation snippet runs (with a few steps) and its prediction really moves."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- perturbation:")[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "max_steps=400" in block
    block = block.replace("max_steps=400", "max_steps=3, progress_bar=False")
    ns: dict = {"gd": gd, "adata": gd.datasets.kang2018()}
    exec(compile(block, "README.md (perturbation)", "exec"), ns)
    table = gd.metrics.top_changes(ns["pred"], ns["truth"], ns["ctrl"], n_top=8)
    assert len(table) == 8 and table.index[0] in ns["adata"].var_names
    # the interferon response is predicted: the top genes go up, as they do in truth
    assert (np.sign(table["predicted Δ"]) == np.sign(table["true Δ"])).mean() >= 0.75
    assert table["predicted Δ"].abs().mean() > 0.5 * table["true Δ"].abs().mean()


def test_predict_without_the_flow_is_the_source_estimate_alone():
    a = gd.datasets.krumsiek11()
    a.obs["treat"] = np.where(np.arange(a.n_obs) % 2 == 0, "ctrl", "drug")
    X = np.asarray(a.X, dtype=np.float32).copy()
    X[a.obs["treat"].to_numpy() == "drug", 0] += 0.5  # the drug raises gene 0
    a.X = X
    GRNDiff.setup_anndata(a, condition_keys=["cell_type", "treat"], control_obs={"treat": "ctrl"})
    # k = 3 axes: with 11 genes the default 100 would fix every coordinate and leave the flow nothing to move
    m = GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=8, depth=1, token_depth=0,
                source={"name": "shifted_control", "k": 3}, lr=3e-3, warmup_steps=2)
    m.train(max_steps=30, batch_size=32, progress_bar=False)
    ctrl = a[(a.obs["treat"] == "ctrl").to_numpy()][:40].copy()
    shifted = m.predict(ctrl, {"treat": "drug"}, flow=False, clip=False)
    cond, pert, _ = m.processor.conditions.request({"cell_type": ctrl.obs["cell_type"].to_numpy(), "treat": "drug"}, 40)
    x0 = m.module.source.transport(torch.as_tensor(m.processor.scaled_dense(ctrl)), cond, pert)
    expected = m.processor.to_anndata(x0.numpy(), ctrl.obs[[]].copy(), {}, clip=False).X
    np.testing.assert_allclose(shifted.X, expected, atol=1e-5)
    assert shifted.uns["grndiff"]["params"]["flow"] is False
    assert (shifted.X[:, 0] - np.asarray(ctrl.X)[:, 0]).mean() > 0.25  # the drug's shift, no network
    with_flow = m.predict(ctrl, {"treat": "drug"}, n_steps=4, clip=False)
    assert np.abs(with_flow.X - shifted.X).max() > 1e-3  # the trained flow moved the cells further
