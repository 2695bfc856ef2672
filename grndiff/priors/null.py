"""Null models of a regulatory graph, for ablations: is it the biology or just any graph?"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._io import COLUMNS, from_decoupler


def shuffle_edges(df: pd.DataFrame, seed: int = 0, n_swaps_per_edge: int = 10) -> pd.DataFrame:
    """Degree-preserving shuffle: repeated directed double-edge swaps
    ``(a→b, c→d) → (a→d, c→b)`` that create neither self-loops nor duplicate edges.

    Every node keeps its out-degree and in-degree; each edge keeps its weight (sign) and moves
    with its source. Seeded.
    """
    df = from_decoupler(df)
    src = df["source"].to_numpy().copy()
    tgt = df["target"].to_numpy().copy()
    E = len(df)
    rng = np.random.default_rng(seed)
    edges = set(zip(src, tgt))
    for _ in range(n_swaps_per_edge * E):
        i, j = rng.integers(0, E, size=2)
        a, b, c, d = src[i], tgt[i], src[j], tgt[j]
        if i == j or a == d or c == b or (a, d) in edges or (c, b) in edges:
            continue
        edges.difference_update({(a, b), (c, d)})
        edges.update({(a, d), (c, b)})
        tgt[i], tgt[j] = d, b
    out = df.copy()
    out["target"] = tgt
    return out


def random_graph(df: pd.DataFrame, seed: int = 0, genes=None) -> pd.DataFrame:
    """Uniform random directed graph with the same number of edges over the same nodes (or
    ``genes``): no self-loops, no duplicates; weights drawn from the original ones. Seeded."""
    df = from_decoupler(df)
    nodes = np.array(sorted(set(df["source"]) | set(df["target"])) if genes is None else list(genes))
    n, E = len(nodes), len(df)
    if E > n * (n - 1):
        raise ValueError(f"{E} edges do not fit in a simple directed graph on {n} nodes")
    rng = np.random.default_rng(seed)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < E:
        k = E - len(chosen)
        a, b = rng.integers(0, n, size=2 * k), rng.integers(0, n, size=2 * k)
        for x, y in zip(a, b):
            if x != y and len(chosen) < E:
                chosen.add((int(x), int(y)))
    pairs = np.array(sorted(chosen))
    rng.shuffle(pairs)
    w = rng.permutation(df["weight"].to_numpy())
    return pd.DataFrame({"source": nodes[pairs[:, 0]], "target": nodes[pairs[:, 1]], "weight": w})[COLUMNS]
