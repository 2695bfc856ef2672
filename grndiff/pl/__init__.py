"""Plots (matplotlib, scanpy style): every function takes ``ax=`` (draw into an existing Axes),
``show=`` (``None``: show when not given an Axes and not saving) and ``save=`` (a file path); with
``show=False`` it returns the Axes (or Figure for multi-panel plots)."""
from .embedding import umap_real_vs_generated
from .model import loss_curves, module_graph
from .tokens import tokens

__all__ = ["loss_curves", "module_graph", "tokens", "umap_real_vs_generated"]
