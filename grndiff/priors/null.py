"""Null models of a prior network, for ablations: is it the biology, or would any graph do?

- :func:`shuffle_edges` keeps every node's in- and out-degree (the hubs stay hubs) and rewires
  who regulates whom: the standard "degree-preserving randomisation" of network biology
  (Maslov & Sneppen 2002, Science 296:910).
- :func:`random_graph` keeps only the number of edges and the node set: a uniform random
  (Erdős–Rényi ``G(n, E)``) directed graph.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._io import COLUMNS, from_decoupler


def shuffle_edges(net: pd.DataFrame, seed: int = 0, n_swaps_per_edge: float = 10.0,
                  permute_weights: bool = False) -> pd.DataFrame:
    """Degree-preserving shuffle by directed double-edge swaps.

    Each accepted swap picks two edges ``a → b`` and ``c → d`` and rewires them to ``a → d`` and
    ``c → b``. A swap is rejected when it would create a self-loop or an edge that already
    exists, so the result is again a simple directed graph.

    Parameters
    ----------
    net
        Long table ``source, target, weight`` (+ extra columns); duplicates are merged first
        (:func:`~grndiff.priors.from_decoupler`). Gene-set tables work too (set sizes and the
        number of sets each gene belongs to are kept).
    seed
        Seed of the random generator: the same seed gives the same graph.
    n_swaps_per_edge
        Swap *attempts* per edge (``E × n_swaps_per_edge`` in total); 10 mixes real networks well.
    permute_weights
        ``False`` (default): an edge keeps its ``weight`` (sign) and extra columns while its
        target is swapped, so every regulator keeps its own multiset of signed out-weights.
        ``True``: additionally permute the weights over all edges at random.

    Returns
    -------
    pandas.DataFrame
        Same columns and number of rows; every node has the same out-degree (as ``source``) and
        in-degree (as ``target``) as in ``net``. Self-edges present in ``net`` may be swapped
        away (never created).
    """
    net = from_decoupler(net)
    E = len(net)
    rng = np.random.default_rng(seed)
    nodes, codes = np.unique(np.concatenate([net["source"].to_numpy(str), net["target"].to_numpy(str)]),
                             return_inverse=True)
    src, tgt = codes[:E].tolist(), codes[E:].tolist()  # plain ints: fast in the loop below
    n = len(nodes)
    present = {a * n + b for a, b in zip(src, tgt)}  # edge a→b as the integer a·n + b
    n_try = int(round(n_swaps_per_edge * E)) if E > 1 else 0
    picks = rng.integers(0, E, size=(n_try, 2))
    for e1, e2 in picks.tolist():
        a, b, c, d = src[e1], tgt[e1], src[e2], tgt[e2]
        if a == c or b == d or a == d or c == b:  # no-op, or would make a self-loop
            continue
        ad, cb = a * n + d, c * n + b
        if ad in present or cb in present:  # would duplicate an edge
            continue
        present.difference_update((a * n + b, c * n + d))
        present.update((ad, cb))
        tgt[e1], tgt[e2] = d, b
    out = net.copy()
    out["target"] = nodes[np.asarray(tgt, dtype=np.int64)]
    if permute_weights:
        out["weight"] = rng.permutation(out["weight"].to_numpy())
    return out


def random_graph(net: pd.DataFrame, seed: int = 0, genes=None) -> pd.DataFrame:
    """Uniform random directed graph with as many edges as ``net``.

    Parameters
    ----------
    net
        Long table ``source, target, weight``; only its edge count and weights are used (and
        its node set, unless ``genes`` is given).
    seed
        Seed of the random generator.
    genes
        Node set to draw edges over (e.g. ``adata.var_names``, so every edge lands among the
        measured genes); default: every node that appears in ``net``.

    Returns
    -------
    pandas.DataFrame
        ``E`` rows ``source, target, weight``: ``E`` distinct ordered pairs drawn uniformly
        without self-loops or duplicates; the weights are a random permutation of ``net``'s, so
        the share of activating/repressing edges is kept.
    """
    net = from_decoupler(net)
    E = len(net)
    if genes is None:
        nodes = np.unique(np.concatenate([net["source"].to_numpy(str), net["target"].to_numpy(str)]))
    else:
        nodes = np.asarray(list(dict.fromkeys(str(g) for g in genes)), dtype=object)
    n = len(nodes)
    n_pairs = n * (n - 1)
    if E > n_pairs:
        raise ValueError(f"{E} edges do not fit in a directed graph without self-loops on {n} nodes "
                         f"(at most {n_pairs}); pass more genes= or a smaller network.")
    rng = np.random.default_rng(seed)
    k = rng.choice(n_pairs, size=E, replace=False) if E else np.zeros(0, dtype=np.int64)
    src = k // max(n - 1, 1)
    r = k % max(n - 1, 1)
    tgt = r + (r >= src)  # skip the diagonal: targets 0..n-1 without src
    weight = rng.permutation(net["weight"].to_numpy())
    return pd.DataFrame({"source": nodes[src].astype(str), "target": nodes[tgt].astype(str),
                         "weight": weight})[COLUMNS]
