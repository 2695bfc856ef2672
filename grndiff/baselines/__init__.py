"""Reference points every benchmark table carries, in log1p-normalised expression.

Perturbation prediction: :func:`no_change`, :class:`MeanShift`, :func:`additive`,
:class:`LinearPCARidge` (Ahlmann-Eltze et al. 2025). Generation: :class:`GaussianPCA`,
:class:`LatentNBFlow` (a flow in an NB autoencoder's state, counts out), :func:`train_vector_flow`.
"""
from .gaussian import GaussianPCA
from .latent_flow import LatentNBFlow, train_vector_flow
from .linear import LinearPCARidge, graph_gene_embedding
from .shift import MeanShift, additive, no_change

__all__ = ["no_change", "MeanShift", "additive", "LinearPCARidge", "GaussianPCA", "graph_gene_embedding",
           "LatentNBFlow", "train_vector_flow"]
