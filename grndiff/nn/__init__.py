"""Pure-torch model components (no AnnData). Axis glossary: B cells, G genes, E edges,
P module tokens, D hidden, H heads."""
from .ablations import MLPVelocity, gene_token_transformer, modules_only
from .backbones import BACKBONES, backbone_options, build_backbone, register_backbone
from .blocks import AdaLNBlock, FinalLayer, FullAttention, GraphDiTBlock, TokenBlock, modulate
from .conditions import ConditionEmbedder, ConditionSpec, PerturbationEmbedder, register_condition_embedder
from .count_decoder import NBAutoencoder, fit_nb_autoencoder, nb_log_prob
from .embed import GeneEmbedder, TimestepEmbedder
from .graph_attention import GraphAttention
from .latent_tokens import LatentTokenVelocity  # registers backbone="latent_tokens"
from .pooling import ModulePooling
from .sequence import SequenceVelocity, graph_order  # registers backbone="ssm"
from .transformer import GRNTransformer
from .velocity import VelocityField

__all__ = [
    "BACKBONES", "backbone_options", "build_backbone", "register_backbone",
    "AdaLNBlock", "ConditionEmbedder", "ConditionSpec", "FinalLayer", "FullAttention", "GRNTransformer",
    "GeneEmbedder", "GraphAttention", "GraphDiTBlock", "LatentTokenVelocity", "MLPVelocity", "ModulePooling",
    "PerturbationEmbedder", "SequenceVelocity", "TimestepEmbedder", "TokenBlock", "VelocityField",
    "gene_token_transformer", "graph_order", "modulate", "modules_only", "register_condition_embedder",
    "NBAutoencoder", "fit_nb_autoencoder", "nb_log_prob",
]
