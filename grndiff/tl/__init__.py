"""Tools that write into an AnnData, scanpy style: ``fn(model, adata, *, key_added=..., copy=False)``."""
from .tokens import embed, pathway_tokens, rank_tokens

__all__ = ["embed", "pathway_tokens", "rank_tokens"]
