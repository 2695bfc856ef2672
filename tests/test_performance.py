"""Scale: the out-of-core reader (grndiff.data.backed), bf16 on CPU, and DDP through the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from grndiff.data import BackedCSR, BackedDataModule, GeneScaler, log1p_cp10k, streaming_scaler
from grndiff.data import backed as backed_mod
from grndiff.train import FlowModule

ROOT = Path(__file__).resolve().parents[1]
N, G = 1000, 12


@pytest.fixture(scope="module")
def h5ad_counts(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = sp.random(N, G, density=0.3, format="csr", random_state=0,
                  data_rvs=lambda n: rng.integers(1, 30, n)).astype(np.float32)
    path = tmp_path_factory.mktemp("backed") / "tiny.h5ad"
    adata = ad.AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(N)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(G)]))
    adata.layers["counts"] = X.copy()
    adata.write_h5ad(path)
    return path, X


def test_reader_blocks_equal_the_matrix(h5ad_counts):
    path, X = h5ad_counts
    r = BackedCSR(path, layer="counts")
    assert r.shape == (N, G) and r.nnz == X.nnz
    assert (r.read_rows(37, 400) != X[37:400]).nnz == 0
    assert (sp.vstack([b for _, b in r.blocks(333)]) != X).nnz == 0
    with pytest.raises(KeyError, match="layers"):
        BackedCSR(path, layer="nope")


def test_streaming_scaler_matches_in_memory_fit(h5ad_counts):
    path, X = h5ad_counts
    ref = GeneScaler().fit(log1p_cp10k(X))
    s = streaming_scaler(path, value_kind="counts", block_size=97)
    np.testing.assert_allclose(s.mean, ref.mean, atol=1e-6)
    np.testing.assert_allclose(s.std, ref.std, atol=1e-6)


def test_backed_epoch_covers_each_cell_once_with_correct_values(h5ad_counts):
    path, X = h5ad_counts
    scaler = GeneScaler().fit(log1p_cp10k(X))
    dm = BackedDataModule(path, scaler, batch_size=32, block_size=50, blocks_per_fetch=4, val_fraction=0.1,
                          cond={"id": np.arange(N)})
    assert dm.train_rows == (0, 900) and dm.val_rows == (900, 1000)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_set)
    ids = np.concatenate([b["cond"]["id"].numpy() for b in batches])
    assert len(np.unique(ids)) == ids.size and ids.max() < 900  # no repeats, no validation cells
    assert ids.size >= 900 - 4 * 50  # drop_last loses less than one batch per fetch
    assert not np.array_equal(ids, np.sort(ids))  # shuffled
    want = scaler.transform(log1p_cp10k(X)[ids[:32]].toarray())
    np.testing.assert_allclose(batches[0]["x"].numpy(), want, atol=1e-5)
    second = np.concatenate([b["cond"]["id"].numpy() for b in dm.train_dataloader()])
    assert not np.array_equal(ids, second)  # a new order every epoch
    val = np.concatenate([b["cond"]["id"].numpy() for b in dm.val_dataloader()])
    np.testing.assert_array_equal(val, np.arange(900, 1000))


def test_backed_ranks_get_disjoint_equal_shares(h5ad_counts, monkeypatch):
    path, X = h5ad_counts
    scaler = GeneScaler().fit(log1p_cp10k(X))
    seen, lengths = [], []
    for rank in range(3):
        monkeypatch.setattr(backed_mod, "_rank_world", lambda rank=rank: (rank, 3))
        dm = BackedDataModule(path, scaler, batch_size=16, block_size=64, blocks_per_fetch=2, cond={"id": np.arange(N)})
        b = list(dm.train_dataloader())
        lengths.append(len(b))
        assert len(b) == len(dm.train_set)
        seen.append(np.concatenate([x["cond"]["id"].numpy() for x in b]))
    assert len(set(lengths)) == 1  # DDP ranks stay in step
    allid = np.concatenate(seen)
    assert len(np.unique(allid)) == allid.size


def _tiny_module() -> FlowModule:
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    inputs = {"n_genes": G, "edge_index": edge_index, "edge_sign": torch.ones(6), "edge_weight": torch.ones(6),
              "edge_type": torch.zeros(6, dtype=torch.long), "membership": None, "condition_specs": [],
              "perturbation": False}
    return FlowModule(inputs, net_kwargs={"hidden": 16, "heads": 2, "depth": 1, "token_depth": 0}, warmup_steps=1,
                      ema_decay=0.0)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_training_from_backed_file(h5ad_counts, precision):
    """A few Lightning steps streamed from disk; bf16-mixed (CPU autocast) stays finite."""
    path, _ = h5ad_counts
    torch.manual_seed(0)
    module = _tiny_module()
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    dm = BackedDataModule(path, value_kind="counts", batch_size=32, block_size=100)  # scaler streamed from the file
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Record()])
    trainer.fit(module, datamodule=dm)
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.slow
def test_ddp_fit_through_cli(tmp_path):
    """`grndiff fit ... --trainer.strategy ddp --trainer.devices 2` on CPU (gloo), as a subprocess."""
    # --verbose: Lightning's own closing line ("max_steps=5 reached") is what says both ranks finished
    cmd = [sys.executable, "-m", "grndiff.cli", "fit", "--verbose", "--config", "configs/tiny.yaml",
           "--trainer.strategy", "ddp",
           "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.max_steps", "5",
           "--trainer.default_root_dir", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", PYTHONWARNINGS="ignore")
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired as e:  # never hang CI
        pytest.fail(f"DDP fit did not finish in 240 s: {str(e.stderr)[-2000:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "max_steps=5" in res.stderr + res.stdout
