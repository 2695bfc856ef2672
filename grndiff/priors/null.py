"""Null models of a prior network, for ablations: is it the biology, or would any graph do?

- :func:`shuffle_edges` keeps every node's in- and out-degree (the hubs stay hubs) and rewires
  who regulates whom: the standard "degree-preserving randomisation" of network biology
  (Maslov & Sneppen 2002, Science 296:910).
- :func:`random_graph` keeps only the number of edges and the node set: a uniform random
  (Erdős–Rényi ``G(n, E)``) directed graph.
- :func:`rewire` rewires a chosen fraction of the edges degree-preservingly: the graph-quality
  curve (25 / 50 / 75 % wrong edges) between the real prior and its shuffle.

A null must be matched *among the genes the model sees*: pass ``genes=`` (e.g. ``adata.var_names``)
and every function first keeps only the edges whose two ends are both in ``genes``, then
randomises. Without it, a 300-gene model would be handed a null with CollecTRI's full edge
count (43,478 edges against the 54 real ones among those genes).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._io import COLUMNS, from_decoupler


def restrict(net: pd.DataFrame, genes=None) -> pd.DataFrame:
    """The edges of ``net`` whose source and target are both in ``genes`` (all edges if ``None``)."""
    net = from_decoupler(net)
    if genes is None:
        return net
    keep = set(str(g) for g in genes)
    mask = net["source"].astype(str).isin(keep) & net["target"].astype(str).isin(keep)
    return net[mask.to_numpy()].reset_index(drop=True)


def _swap_targets(src: list, tgt: list, n: int, movable: np.ndarray, n_try: int, rng) -> None:
    """Directed double-edge swaps among the edges ``movable`` (in place on ``tgt``).

    Each accepted swap picks two edges ``a → b`` and ``c → d`` and rewires them to ``a → d`` and
    ``c → b``; it is rejected when it would create a self-loop or an edge that already exists.
    """
    present = {a * n + b for a, b in zip(src, tgt)}  # edge a→b as the integer a·n + b
    if movable.size < 2 or n_try <= 0:
        return
    picks = movable[rng.integers(0, movable.size, size=(n_try, 2))]
    for e1, e2 in picks.tolist():
        a, b, c, d = src[e1], tgt[e1], src[e2], tgt[e2]
        if a in (c, d) or b in (c, d):  # no-op, or would make a self-loop
            continue
        ad, cb = a * n + d, c * n + b
        if ad in present or cb in present:  # would duplicate an edge
            continue
        present.difference_update((a * n + b, c * n + d))
        present.update((ad, cb))
        tgt[e1], tgt[e2] = d, b


def _codes(net: pd.DataFrame):
    E = len(net)
    nodes, codes = np.unique(np.concatenate([net["source"].to_numpy(str), net["target"].to_numpy(str)]),
                             return_inverse=True)
    return nodes, codes[:E].tolist(), codes[E:].tolist()  # plain ints: fast in the swap loop


def shuffle_edges(net: pd.DataFrame, seed: int = 0, n_swaps_per_edge: float = 10.0,
                  permute_weights: bool = False, genes=None) -> pd.DataFrame:
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
    genes
        Keep only the edges among these genes (e.g. ``adata.var_names``) *before* shuffling, so
        the null has the real prior's edge count and degrees among the genes a model sees.

    Returns
    -------
    pandas.DataFrame
        Same columns and number of rows as ``net`` (restricted to ``genes``); every node has the
        same out-degree (as ``source``) and in-degree (as ``target``). Self-edges of ``net``
        stay in place and none is created, so the null has as many edges *between distinct
        genes* as ``net`` (a shuffled self-edge would become a new regulator–target pair, and
        the gene graph adds a self-loop to every gene anyway).
    """
    net = restrict(net, genes)
    E = len(net)
    rng = np.random.default_rng(seed)
    nodes, src, tgt = _codes(net)
    movable = np.flatnonzero(np.asarray(src) != np.asarray(tgt))  # self-edges stay: see Returns
    _swap_targets(src, tgt, len(nodes), movable, int(round(n_swaps_per_edge * movable.size)), rng)
    out = net.copy()
    out["target"] = nodes[np.asarray(tgt, dtype=np.int64)] if E else out["target"]
    if permute_weights:
        out["weight"] = rng.permutation(out["weight"].to_numpy())
    return out


def rewire(net: pd.DataFrame, fraction: float, genes=None, seed: int = 0,
           n_swaps_per_edge: float = 10.0) -> pd.DataFrame:
    """Rewire a ``fraction`` of the edges, keeping every node's in- and out-degree.

    ``round(fraction · E)`` edges (self-edges excepted) are drawn at random and their targets are
    mixed by directed double-edge swaps among themselves (as :func:`shuffle_edges`, restricted to
    those edges); the other edges stay as they are. ``fraction=1`` is a full degree-preserving shuffle, ``0`` the
    prior itself. An edge keeps its weight (sign) while its target moves.

    Parameters
    ----------
    net
        Long table ``source, target, weight``.
    fraction
        Share of edges to rewire, in ``[0, 1]``.
    genes
        Keep only the edges among these genes first (see :func:`shuffle_edges`).
    seed
        Seed of the random generator (which edges, which swaps).

    Returns
    -------
    pandas.DataFrame
        Same rows as ``net`` (restricted to ``genes``) with rewired targets. A chosen edge can land
        back on a real pair by chance (another real edge's target), so the share of real edges kept
        is close to, and at least, ``1 − fraction``.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction={fraction!r} must be between 0 and 1 (the share of edges to rewire)")
    net = restrict(net, genes)
    E = len(net)
    rng = np.random.default_rng(seed)
    nodes, src, tgt = _codes(net)
    loose = np.flatnonzero(np.asarray(src) != np.asarray(tgt))  # self-edges stay, as in shuffle_edges
    k = min(int(round(float(fraction) * E)), loose.size)
    movable = np.sort(rng.choice(loose, size=k, replace=False))
    _swap_targets(src, tgt, len(nodes), movable, int(round(n_swaps_per_edge * movable.size)), rng)
    out = net.copy()
    if E:
        out["target"] = nodes[np.asarray(tgt, dtype=np.int64)]
    return out


def random_graph(net: pd.DataFrame, seed: int = 0, genes=None) -> pd.DataFrame:
    """Uniform random directed graph with as many edges as ``net`` has among ``genes``.

    Parameters
    ----------
    net
        Long table ``source, target, weight``; only its edge count and weights are used (and
        its node set, unless ``genes`` is given).
    seed
        Seed of the random generator.
    genes
        Node set to draw edges over (e.g. ``adata.var_names``). The edges of ``net`` among
        these genes are counted first (:func:`restrict`), so the null has as many edges as the
        real prior among the genes a model sees; default: every node and edge of ``net``.

    Returns
    -------
    pandas.DataFrame
        ``E`` rows ``source, target, weight`` (``E`` = edges of ``net`` among ``genes``):
        distinct ordered pairs drawn uniformly without self-loops or duplicates; the weights are a
        random permutation of ``net``'s, so the share of activating/repressing edges is kept.
    """
    net = restrict(net, genes)
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
