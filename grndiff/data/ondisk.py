"""Out-of-core models: a backed AnnData whose expression stays on disk, behind the usual API.

::

    model = GRNDiff.from_h5ad("atlas.h5ad", setup={"condition_keys": ["cell_type"]}, prior="collectri")
    model.train(max_steps=20_000)       # cells streamed from disk, block-shuffled
    model.sample(1000, {"cell_type": "B cells"}); model.save("atlas_model")

``from_h5ad`` opens the file with ``anndata.read_h5ad(path, backed="r")``: ``obs``/``var`` are read,
``X`` stays on disk. Everything that would load the matrix is done by streaming it in row blocks
instead (:mod:`grndiff.data.backed`): the counts-vs-log check, the per-gene scaler, the median
library size, the source's fit (on the first 20,000 cells of a shuffled pass) and training.

Limits: ``X`` must be stored as CSR (anndata's default for sparse matrices); anndata reads the
*layers* of a backed file into memory, so a file larger than memory must hold its expression in
``X``; control-cell sources (``shifted_control``, ``control``), ``holdout=`` and
``stratify_key=`` need the cells in memory and are refused with a message; the validation cells
are the last ``val_fraction`` of the file's rows.
"""
from __future__ import annotations

import os

from .backed import (  # noqa: F401  (the streamed helpers, re-exported: ondisk.streams & co. is where callers look)
    BackedDataModule,
    detect_kind_streamed,
    fit_scaler,
    library_totals,
    streams,
)
from .datamodule import GRNDataModule
from .setup import setup_anndata


def open_h5ad(path: str | os.PathLike, setup: dict | None = None):
    """``path`` opened backed (``X`` on disk) and, with ``setup``, registered:
    ``setup_anndata(adata, **setup)``."""
    import anndata as ad

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no .h5ad file at {os.fspath(path)!r}")
    adata = ad.read_h5ad(path, backed="r")
    if setup is not None:
        setup_anndata(adata, **setup)
    return adata


def check_pairing(processor, adata, with_controls: bool) -> None:
    """Refuse a source that pairs cells with control cells on a backed AnnData (not streamed yet)."""
    if with_controls and streams(adata, processor.layer):
        raise ValueError("this model's source pairs every cell with a control cell, which streaming from disk does "
                         "not do yet. Build the model with source='gaussian' (or 'noise'), or load the AnnData into "
                         "memory (adata.to_memory()).")


def datamodule(processor, adata, *, with_controls: bool, match_keys=None, batch_size: int = 64,
               val_fraction: float = 0.1, split_seed: int = 0, stratify_key: str | None = None,
               holdout: dict | None = None, **kw):
    """The data module a model trains on: :class:`~grndiff.data.GRNDataModule` over prepared cells
    in memory, or :class:`~grndiff.data.BackedDataModule` streaming a backed AnnData."""
    if not streams(adata, processor.layer):
        return GRNDataModule(processor.prepare(adata), processor.scaler, adata.obs, batch_size=batch_size,
                             val_fraction=val_fraction, split_seed=split_seed, stratify_key=stratify_key,
                             holdout=holdout, with_controls=with_controls, match_keys=match_keys,
                             control_mask=processor.control_mask(adata), **kw)
    refused = {"holdout": holdout, "stratify_key": stratify_key}
    for name, value in refused.items():
        if value:
            raise ValueError(f"{name}= needs the cells in memory, but this AnnData is backed (X on disk). Load it "
                             f"(adata = adata.to_memory()) or leave {name} out.")
    check_pairing(processor, adata, with_controls)
    if processor.check_genes(adata) is not None:
        raise ValueError("the genes of this backed AnnData are in another order than the model's; write the file "
                         "with the model's gene order: adata[:, model.var_names].write_h5ad(path)")
    block = int(min(1024, max(16, adata.n_obs // 100)))  # small files still get a validation share
    # batches are cut from one fetch of blocks: a fetch must hold a batch, a batch fit in the file
    batch_size = int(max(1, min(batch_size, int(adata.n_obs * (1 - val_fraction)) - block)))
    return BackedDataModule(adata.filename, processor.scaler, layer=None, value_kind=processor.value_kind,
                            batch_size=batch_size,
                            val_fraction=val_fraction, cond=processor.conditions.encode(adata.obs),
                            pert=processor.conditions.encode_perturbation(adata.obs), block_size=block,
                            blocks_per_fetch=max(8, -(-batch_size // block)), seed=split_seed,
                            target_sum=processor.target_sum, **kw)
