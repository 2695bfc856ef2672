"""Prior formats: decoupler long tables, GMT gene-set files and networkx graphs.

Every prior in grndiff is one long ``pandas.DataFrame`` in decoupler's format: columns
``source, target, weight`` (``E`` rows, one per edge), plus optional per-edge columns that ride
along (DoRothEA's ``confidence``, PROGENy's ``p_value``). A regulatory network reads
"``source`` regulates ``target`` with signed strength ``weight``"; a gene-set collection reads
"gene ``target`` belongs to set ``source``" with ``weight = 1``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["source", "target", "weight"]


def from_decoupler(net: pd.DataFrame) -> pd.DataFrame:
    """Validate and normalise a decoupler-style network.

    Parameters
    ----------
    net
        Long table with columns ``source`` and ``target`` and optionally ``weight`` (any other
        columns, e.g. ``confidence``, are kept). decoupler's ``dc.op.collectri()`` output, a CSV
        read with pandas, or a hand-made table all work.

    Returns
    -------
    pandas.DataFrame
        ``E`` rows with columns ``source`` (str), ``target`` (str), ``weight`` (float64), then
        the extra columns; a fresh copy with a ``RangeIndex``.

    Notes
    -----
    - A missing ``weight`` column means unsigned, unweighted edges: ``weight = 1.0``.
    - Duplicate ``(source, target)`` rows are merged into one edge at the position of the first
      occurrence; the merged ``weight`` is the **mean** of the duplicates (so two identical
      ``+1`` rows stay ``+1``, and a ``+1``/``-1`` conflict becomes ``0`` = sign unknown), and
      extra columns keep their first value. The result never depends on the row order beyond
      "first occurrence wins".
    - Rows with a missing ``source``/``target`` or a non-numeric / infinite ``weight`` are an error,
      not silently dropped.
    """
    if not isinstance(net, pd.DataFrame):
        raise TypeError(
            f"a prior network must be a pandas DataFrame with columns source, target[, weight]; got "
            f"{type(net).__name__}. Use grndiff.priors.from_networkx(G) for a networkx graph or "
            "grndiff.priors.load(path) for a file.")
    missing = [c for c in ("source", "target") if c not in net.columns]
    if missing:
        raise ValueError(
            f"the prior table lacks column(s) {missing}; it has {list(net.columns)}. Rename the regulator "
            "column to 'source' and the target-gene column to 'target' (decoupler's long format), "
            "e.g. net.rename(columns={'tf': 'source'}).")
    out = net.copy()
    for col in ("source", "target"):
        bad = out[col].isna()
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())[:5].tolist()
            raise ValueError(f"prior column '{col}' has {int(bad.sum())} missing gene names (rows {rows}); "
                             "drop those rows first, e.g. net.dropna(subset=['source', 'target']).")
        out[col] = out[col].astype(str).str.strip()
        empty = out[col] == ""
        if empty.any():
            raise ValueError(f"prior column '{col}' has {int(empty.sum())} empty gene names; drop those rows.")
    if "weight" not in out.columns:
        out["weight"] = 1.0
    w = pd.to_numeric(out["weight"], errors="coerce").astype(float)
    bad = ~np.isfinite(w.to_numpy())
    if bad.any():
        ex = out.loc[bad, "weight"].head(3).tolist()
        raise ValueError(f"prior column 'weight' has {int(bad.sum())} non-numeric, missing or infinite values "
                         f"(e.g. {ex}); use numbers (signed: + activation, - repression) or drop the column "
                         "for unweighted edges.")
    out["weight"] = w
    extra = [c for c in out.columns if c not in COLUMNS]
    out = out[COLUMNS + extra]
    if out.duplicated(["source", "target"]).any():
        agg = {"weight": "mean", **{c: "first" for c in extra}}
        out = out.groupby(["source", "target"], sort=False, as_index=False).agg(agg)[COLUMNS + extra]
    return out.reset_index(drop=True)


def read_gmt(path: str | os.PathLike) -> pd.DataFrame:
    """Read a GMT gene-set file into a long table.

    Parameters
    ----------
    path
        GMT file: one set per line, ``name<TAB>description<TAB>gene1<TAB>gene2...`` (MSigDB,
        Enrichr). Empty gene fields are ignored; a gene listed twice in one set counts once;
        sets with no genes are skipped.

    Returns
    -------
    pandas.DataFrame
        Columns ``source`` (set name), ``target`` (gene), ``weight`` (1.0); one row per
        membership, sets and genes in file order.
    """
    rows: list[tuple[str, str, float]] = []
    with open(path, encoding="utf-8") as fh:
        for ln, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if len(parts) < 2 or not parts[0].strip():
                raise ValueError(f"{path}, line {ln}: not a GMT line. Expected "
                                 "'set_name<TAB>description<TAB>gene1<TAB>gene2...' (tab-separated).")
            name = parts[0].strip()
            for gene in dict.fromkeys(g.strip() for g in parts[2:] if g.strip()):  # ordered, unique
                rows.append((name, gene, 1.0))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_gmt(sets: pd.DataFrame, path: str | os.PathLike, description: str = "") -> None:
    """Write a long gene-set table as a GMT file (inverse of :func:`read_gmt`).

    Parameters
    ----------
    sets
        Long table ``source`` (set name), ``target`` (gene)[, ``weight``, ignored: GMT has no
        weights].
    path
        Output file.
    description
        Text for the GMT description column of every set.
    """
    sets = from_decoupler(sets)
    for col in ("source", "target"):
        if sets[col].str.contains("\t|\n").any():
            raise ValueError(f"GMT cannot store {col} names containing tabs or newlines")
    with open(path, "w", encoding="utf-8") as fh:
        for name, genes in sets.groupby("source", sort=False)["target"]:
            fh.write("\t".join([str(name), description, *genes.tolist()]) + "\n")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a prior file by its extension: ``.gmt`` gene sets, ``.csv`` (comma) or ``.tsv``/``.txt``
    (tab) long tables; ``.gz`` compression is handled by pandas.

    Returns
    -------
    pandas.DataFrame
        The normalised long table (see :func:`from_decoupler`).
    """
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".gmt":
        return read_gmt(p)
    if kind == ".csv":
        return from_decoupler(pd.read_csv(p))
    if kind in (".tsv", ".txt", ".tab"):
        return from_decoupler(pd.read_csv(p, sep="\t"))
    raise ValueError(f"cannot tell the format of prior file {p.name!r}: use a .csv/.tsv long table "
                     "(source, target, weight) or a .gmt gene-set file.")


def from_networkx(graph) -> pd.DataFrame:
    """A networkx graph → long table.

    Parameters
    ----------
    graph
        ``networkx.DiGraph`` (edges ``u → v`` read as source ``u``, target ``v``) or undirected
        ``Graph`` (each edge once, in networkx's order). Edge attribute ``weight`` gives the
        signed strength (default 1.0); node names become strings.

    Returns
    -------
    pandas.DataFrame
        ``source, target, weight``, one row per edge (multigraph parallel edges merged as in
        :func:`from_decoupler`).
    """
    if not hasattr(graph, "edges"):
        raise TypeError(f"expected a networkx graph, got {type(graph).__name__}")
    rows = [(str(u), str(v), float(d.get("weight", 1.0))) for u, v, d in graph.edges(data=True)]
    return from_decoupler(pd.DataFrame(rows, columns=COLUMNS))


def to_networkx(net: pd.DataFrame):
    """Long table → ``networkx.DiGraph``.

    Parameters
    ----------
    net
        ``source, target, weight`` (see :func:`from_decoupler`).

    Returns
    -------
    networkx.DiGraph
        One directed edge ``source → target`` per row with attribute ``weight``; extra columns
        (e.g. ``confidence``) become edge attributes too.
    """
    import networkx as nx

    net = from_decoupler(net)
    graph = nx.DiGraph()
    extra = [c for c in net.columns if c not in COLUMNS]
    cols = [net[c].tolist() for c in ["source", "target", "weight", *extra]]
    for u, v, w, *rest in zip(*cols):
        graph.add_edge(u, v, weight=float(w), **dict(zip(extra, rest)))
    return graph
