"""Reference points every benchmark table carries, in log1p-normalised expression.

Perturbation prediction: :func:`no_change`, :class:`MeanShift`, :func:`additive`,
:class:`LinearPCARidge` (Ahlmann-Eltze et al. 2025). Generation: :class:`GaussianPCA` (the
trained latent flow with a count decoder is :class:`grndiff.train.LatentNBFlow`).
"""
from .gaussian import GaussianPCA
from .linear import LinearPCARidge, graph_gene_embedding
from .shift import MeanShift, additive, no_change

__all__ = ["no_change", "MeanShift", "additive", "LinearPCARidge", "GaussianPCA", "graph_gene_embedding"]
