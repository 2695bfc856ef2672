"""Priors: regulatory networks and gene sets as long ``source, target, weight`` tables.

Shipped files (``priors/``, with sources, licences and checksums) load offline by name; an
optional online path goes through decoupler. Null models support ablations.
"""
from ._io import (from_decoupler, from_networkx, list_priors, load, load_online, prior_path, read_gmt,
                  to_networkx, verify_checksums, write_gmt)
from .null import random_graph, shuffle_edges

__all__ = ["from_decoupler", "from_networkx", "list_priors", "load", "load_online", "prior_path", "random_graph",
           "read_gmt", "shuffle_edges", "to_networkx", "verify_checksums", "write_gmt"]
