"""Priors: regulatory networks and gene sets as long ``source, target, weight`` tables.

Shipped files (the repository's ``priors/`` folder, with sources, licences and checksums) load
offline by name; an optional online path goes through decoupler; null models support ablations.

Examples
--------
>>> import grndiff as gd
>>> net = gd.priors.load("collectri")        # TF → target, weight ±1   # doctest: +SKIP
>>> sets = gd.priors.load("hallmark")        # set → gene, weight 1     # doctest: +SKIP
>>> null = gd.priors.shuffle_edges(net, seed=0)                         # doctest: +SKIP
>>> both = gd.priors.combine(["collectri", "omnipath_signaling"])     # doctest: +SKIP
"""
from ._io import from_decoupler, from_networkx, read_gmt, read_table, to_networkx, write_gmt
from ._shipped import (
    EDGE_KINDS,
    combine,
    edge_kind,
    list_priors,
    load,
    load_online,
    prior_dir,
    prior_path,
    split_complexes,
    verify_checksums,
)
from .null import random_graph, restrict, rewire, shuffle_edges

__all__ = ["EDGE_KINDS", "combine", "edge_kind", "split_complexes", "from_decoupler", "from_networkx", "list_priors",
           "load", "load_online", "prior_dir", "prior_path",
           "random_graph", "read_gmt", "read_table", "restrict", "rewire", "shuffle_edges", "to_networkx",
           "verify_checksums",
           "write_gmt"]
