"""Tools that write into an AnnData, scanpy style: ``fn(model, adata, *, key_added=..., copy=False)``,
and read-outs of a trained model's modules."""
from .modules import module_enrichment, module_genes
from .tokens import embed, pathway_tokens, rank_tokens

__all__ = ["embed", "module_enrichment", "module_genes", "pathway_tokens", "rank_tokens"]
