"""The AnnData side of grndiff: registration, normalisation, condition codes, batches.

::

    setup_anndata(adata, layer="counts", condition_keys=["cell_type", "condition"])
    proc = ExpressionProcessor().fit(adata)          # layer kind, gene scaler, condition encoders
    dm = GRNDataModule(proc.prepare(adata), proc.scaler, adata.obs, batch_size=128)

A backed AnnData (``anndata.read_h5ad(path, backed="r")``) is streamed from disk instead
(:mod:`grndiff.data.ondisk`, :mod:`grndiff.data.backed`). Gene perturbations and their kinds are
encoded by :mod:`grndiff.data.perturbation`. Fallbacks the user should know about raise a
:class:`GRNDiffWarning` once.

Nothing here imports :mod:`grndiff.nn`, :mod:`grndiff.flow` or :mod:`grndiff.train`.
"""
from . import ondisk
from .backed import BackedCellDataset, BackedCSR, BackedDataModule, streaming_scaler
from .condition_set import ConditionSet
from .conditions import (
    CategoricalEncoder,
    ContinuousEncoder,
    GRNDiffWarning,
    HierarchicalEncoder,
    SetEncoder,
    UnknownConditionError,
    register_condition_kind,
    split_combo,
)
from .datamodule import GRNDataModule, holdout_mask, split_indices
from .dataset import BatchIndex, CellBatchSampler, CellDataset, ControlPairing, match_groups
from .normalize import (
    LOG_MAX,
    MIN_STD,
    GeneScaler,
    check_values,
    counts_from_log1p,
    detect_kind,
    estimate_library_sizes,
    log1p_cp10k,
    log1p_normalized_copy,
)
from .perturbation import PerturbationEncoder, perturbed_genes
from .processor import CellData, ExpressionProcessor
from .setup import get_setup, setup_anndata

__all__ = [
    "ondisk",  # the submodule (grndiff.model: `from .data import ondisk`)
    "register_condition_kind",
    "BackedCSR", "BackedCellDataset", "BackedDataModule", "BatchIndex", "CategoricalEncoder", "CellBatchSampler",
    "CellData", "CellDataset", "ConditionSet",
    "ContinuousEncoder", "ControlPairing", "GRNDiffWarning", "ExpressionProcessor", "GRNDataModule", "GeneScaler",
    "HierarchicalEncoder", "LOG_MAX", "MIN_STD", "PerturbationEncoder", "SetEncoder", "UnknownConditionError",
    "check_values", "detect_kind", "get_setup", "holdout_mask", "log1p_cp10k", "log1p_normalized_copy",
    "match_groups", "perturbed_genes", "setup_anndata", "split_combo", "split_indices", "streaming_scaler",
    "counts_from_log1p", "estimate_library_sizes",
]
