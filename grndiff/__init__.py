"""grndiff — graph-based gene-regulatory diffusion (rectified-flow) models of single-cell expression.

Submodules load on first use, so ``import grndiff`` stays fast::

    import grndiff as gd
    adata = gd.datasets.kang2018()
    gd.GRNDiff.setup_anndata(adata, layer="counts", condition_keys=["cell_type", "condition"])
    model = gd.GRNDiff(adata, prior="collectri", modules="hallmark")
"""
from __future__ import annotations

import importlib

from . import _openmp  # noqa: F401  (first: OpenMP's wait policy must be set before torch loads)

__version__ = "0.1.0"

_SUBMODULES = {"priors", "graph", "data", "datasets", "nn", "flow", "train", "metrics", "baselines", "tl", "pl"}
_ATTRS = {"GRNDiff": "grndiff.model", "GeneGraph": "grndiff.graph", "setup_anndata": "grndiff.data"}

__all__ = sorted(_SUBMODULES | set(_ATTRS) | {"__version__"})


def _import(module: str):
    # Lightning, scanpy and decoupler import tqdm.auto, which in Jupyter without ipywidgets warns
    # "IProgress not found" at import. grndiff's own progress never needs ipywidgets, so import
    # that one module first with its warning silenced (only it: a catch_warnings around all imports
    # would undo the filters that other packages install when imported)
    import sys
    if "ipykernel" in sys.modules and "tqdm.autonotebook" not in sys.modules:
        import contextlib
        import warnings
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found")
            with contextlib.suppress(ImportError):
                importlib.import_module("tqdm.autonotebook")
    return importlib.import_module(module)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _import(f"grndiff.{name}")
    if name in _ATTRS:
        return getattr(_import(_ATTRS[name]), name)
    raise AttributeError(f"module 'grndiff' has no attribute {name!r}")


def __dir__():
    return __all__
