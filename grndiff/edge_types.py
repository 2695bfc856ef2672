"""The edge-type codes of a gene graph: one table, read by :mod:`grndiff.graph` (which writes them)
and :mod:`grndiff.nn` (whose attention has a learned bias row per type). No imports: every layer may
use it.

====  ======================  ==================================================================
code  name                    what the edge is
====  ======================  ==================================================================
0     prior                   a regulation edge of the prior (TF → target), in its own direction
1     reverse                 a regulation edge read backwards (target → TF)
2     self-loop               a gene to itself
3     kNN                     a co-expression neighbour (``knn`` graph augmentation)
4     signalling              a signalling edge of the prior (e.g. receptor → kinase)
5     signalling reverse      a signalling edge read backwards
====  ======================  ==================================================================
"""
from __future__ import annotations

EDGE_PRIOR, EDGE_REVERSE, EDGE_SELF, EDGE_KNN, EDGE_SIGNAL, EDGE_SIGNAL_REVERSE = 0, 1, 2, 3, 4, 5
EDGE_TYPE_NAMES = ("prior", "reverse", "self-loop", "kNN", "signalling", "signalling reverse")
PRIOR_EDGE_TYPES = (EDGE_PRIOR, EDGE_SIGNAL)  # edges read from a prior, in their own direction: a flag propagates
FROM_PRIOR_EDGE_TYPES = (EDGE_PRIOR, EDGE_REVERSE, EDGE_SIGNAL, EDGE_SIGNAL_REVERSE)  # either direction
N_EDGE_TYPES = 4  # the type-bias rows of a graph without signalling edges (prior, reverse, self-loop, kNN)
N_EDGE_TYPES_ALL = len(EDGE_TYPE_NAMES)  # rows when a graph has signalling edges
