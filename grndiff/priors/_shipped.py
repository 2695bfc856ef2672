"""The priors shipped with grndiff (offline, the default) and the optional online path.

The files live in the repository's top-level ``priors/`` folder, next to a ``manifest.json``
(name, organism, kind, file, sha256, rows, licence, citation) and a ``README.md``. pyproject.toml
maps that folder to the package ``grndiff._priors`` (``[tool.setuptools.package-dir]``), so an
installed, non-editable grndiff carries the same files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import pandas as pd

from ._io import from_decoupler, from_networkx, read_table

_CONFIDENCE_LEVELS = ("A", "B", "C", "D", "E")


def _candidate_dirs() -> list[Path]:
    # a source checkout first: its own priors/ folder, next to the package imported (an editable
    # install made from another checkout maps grndiff._priors to *that* checkout's folder)
    dirs = [Path(__file__).resolve().parents[2] / "priors"]
    # installed wheel (and editable installs made after the package-dir mapping)
    with contextlib.suppress(ModuleNotFoundError, TypeError):
        dirs.append(Path(str(files("grndiff._priors"))))
    return dirs


def prior_dir() -> Path:
    """Folder holding the shipped prior files and ``manifest.json``.

    Returns
    -------
    pathlib.Path
        The package data ``grndiff._priors`` when installed, else the source tree's ``priors/``.
    """
    for d in _candidate_dirs():
        if (d / "manifest.json").is_file():
            return d
    raise FileNotFoundError(
        "the shipped priors (priors/manifest.json) are missing from this grndiff installation; "
        "reinstall grndiff, or pass your own prior as a DataFrame or a CSV/TSV/GMT path.")


@lru_cache(maxsize=1)
def _manifest() -> tuple[dict, ...]:
    with open(prior_dir() / "manifest.json", encoding="utf-8") as fh:
        return tuple(json.load(fh)["priors"])


def list_priors() -> pd.DataFrame:
    """The priors shipped with grndiff.

    Returns
    -------
    pandas.DataFrame
        One row per file: ``name``, ``kind`` (``network`` or ``gene_sets``), ``organism``,
        ``file``, ``rows`` (rows of the long table :func:`load` returns), ``licence``,
        ``citation``.
    """
    cols = ["name", "kind", "organism", "file", "rows", "licence", "citation"]
    return pd.DataFrame([{c: m[c] for c in cols} for m in _manifest()], columns=cols)


def _entry(name: str, organism: str = "human") -> dict | None:
    """The manifest entry of a shipped prior, or ``None``."""
    key, org = str(name).strip().lower(), str(organism).strip().lower()
    return next((m for m in _manifest() if m["name"] == key and m["organism"] == org), None)


def edge_kind(name, organism: str = "human") -> str:
    """What a shipped network's edges are: ``"signalling"`` (protein signalling, e.g.
    ``omnipath_signaling``) or ``"regulation"`` (TF → target, the default for every other prior,
    files and DataFrames included)."""
    if isinstance(name, str):
        m = _entry(name, organism)
        if m is not None:
            return str(m.get("edge_kind", "regulation"))
    return "regulation"


def prior_path(name: str, organism: str = "human") -> Path:
    """Path of a shipped prior file.

    Parameters
    ----------
    name
        Shipped name, e.g. ``"collectri"`` (see :func:`list_priors`); case-insensitive.
    organism
        ``"human"`` or ``"mouse"``.
    """
    key = str(name).strip().lower()
    m = _entry(name, organism)
    if m is not None:
        return prior_dir() / m["file"]
    have = sorted(f"{m['name']} ({m['organism']})" for m in _manifest())
    orgs = sorted(m["organism"] for m in _manifest() if m["name"] == key)
    hint = (f" {key!r} is shipped for organism {orgs} only." if orgs else "")
    raise ValueError(f"no shipped prior {name!r} for organism {organism!r}.{hint} Shipped: {', '.join(have)}. "
                     "Or pass a DataFrame (source, target, weight) or a .csv/.tsv/.gmt path.")


def verify_checksums() -> dict[str, bool]:
    """Check each shipped file against the sha256 recorded in ``manifest.json``.

    Returns
    -------
    dict
        ``{file name: True if the checksum matches}``.
    """
    out = {}
    for m in _manifest():
        digest = hashlib.sha256((prior_dir() / m["file"]).read_bytes()).hexdigest()
        out[m["file"]] = digest == m["sha256"]
    return out


def load(name_or_path, organism: str = "human", *, confidence=None) -> pd.DataFrame:
    """Load a prior as a long ``source, target, weight`` table.

    Parameters
    ----------
    name_or_path
        A shipped name (``collectri``, ``dorothea``, ``progeny``, ``hallmark``, ``reactome``,
        ``go_bp``, ``omnipath_signaling``; :func:`list_priors` says which organisms; ``krumsiek11``, the toy network of
        :func:`grndiff.datasets.krumsiek11`), a path to a ``.csv``/``.tsv`` long table or a ``.gmt``
        file, a DataFrame (validated by :func:`~grndiff.priors.from_decoupler`) or a networkx graph
        (:func:`~grndiff.priors.from_networkx`).
    organism
        ``"human"`` or ``"mouse"``; used for shipped names only.
    confidence
        DoRothEA-style tables only: keep edges whose ``confidence`` is one of these levels,
        e.g. ``("A", "B")``. ``None`` keeps all.

    Returns
    -------
    pandas.DataFrame
        ``E`` rows: ``source``, ``target``, ``weight`` (+ extra columns such as
        ``confidence``). Gene sets: ``source`` = set name, ``target`` = gene, ``weight`` = 1.0.
        A signalling network (``omnipath_signaling``) also has ``edge_kind`` = ``"signalling"``,
        which :class:`~grndiff.graph.GeneGraph` turns into its own edge type; its complexes are
        split into their members (:func:`split_complexes`).

    Examples
    --------
    >>> net = load("collectri")                          # doctest: +SKIP
    >>> sets = load("hallmark")                          # doctest: +SKIP
    >>> net = load("dorothea", confidence=("A", "B"))    # doctest: +SKIP
    """
    if isinstance(name_or_path, pd.DataFrame):
        df = from_decoupler(name_or_path)
    elif hasattr(name_or_path, "edges") and hasattr(name_or_path, "nodes"):  # a networkx graph
        df = from_networkx(name_or_path)
    elif isinstance(name_or_path, str) and name_or_path == "krumsiek11":  # the toy data set's own network
        from ..datasets import krumsiek11_network
        df = from_decoupler(krumsiek11_network())
    elif isinstance(name_or_path, (str, os.PathLike)):
        p = Path(name_or_path)
        if p.is_file():
            df = read_table(p)
        elif isinstance(name_or_path, str) and not p.suffix and os.sep not in name_or_path:
            df = _read_shipped(name_or_path, organism)
        else:
            raise FileNotFoundError(f"prior file {str(name_or_path)!r} does not exist. Shipped priors load by "
                                    "name, e.g. load('collectri'); see grndiff.priors.list_priors().")
    else:
        raise TypeError(f"prior must be a shipped name, a file path, a DataFrame or a networkx graph; got "
                        f"{type(name_or_path).__name__}")
    if confidence is not None:
        df = _filter_confidence(df, confidence)
    return df


def _read_shipped(name: str, organism: str) -> pd.DataFrame:
    """A shipped file as a long table, with the manifest's ``columns`` renaming (e.g. OmniPath's
    ``interaction`` → ``weight``), ``complexes`` splitting and ``edge_kind`` applied."""
    path = prior_path(name, organism)  # raises the "no shipped prior" message
    m = _entry(name, organism)
    if not m.get("columns") and not m.get("complexes") and "edge_kind" not in m:
        return read_table(path)
    raw = pd.read_csv(path, sep="\t" if path.suffix.lower() in (".tsv", ".txt") else ",")
    df = from_decoupler(raw.rename(columns=dict(m.get("columns") or {})))
    if m.get("complexes"):
        df = split_complexes(df, sep=m["complexes"])
    if "edge_kind" in m:
        df["edge_kind"] = str(m["edge_kind"])
    return df


def split_complexes(net: pd.DataFrame, sep: str = "_") -> pd.DataFrame:
    """Replace protein complexes written ``A_B_C`` by their members.

    An edge from a complex becomes one edge from each member, an edge to a complex one edge to
    each member (complex → complex: every member pair), with the same weight; empty members (a
    leading ``_``) are dropped. Edges that then join the same pair are merged as in
    :func:`~grndiff.priors.from_decoupler` (mean weight, first occurrence's position).

    Parameters
    ----------
    net
        Long table ``source, target, weight`` (E rows).
    sep
        Separator of complex members.

    Returns
    -------
    pandas.DataFrame
        Long table without ``sep`` in any gene name (E' ≥ rows without complexes).
    """
    net = from_decoupler(net)
    if not (net["source"].str.contains(sep, regex=False) | net["target"].str.contains(sep, regex=False)).any():
        return net
    out = net.copy()
    for col in ("source", "target"):
        out[col] = out[col].map(lambda n: [p for p in n.split(sep) if p])
        out = out.explode(col, ignore_index=True)
    return from_decoupler(out.dropna(subset=["source", "target"]))


def combine(priors, *, kinds=None, organism: str = "human") -> pd.DataFrame:
    """Union of several priors as one long table whose edges remember where they came from.

    Parameters
    ----------
    priors
        A list of priors, each anything :func:`load` takes (shipped name, path, DataFrame,
        networkx graph), e.g. ``["collectri", "omnipath_signaling"]``.
    kinds
        One ``"regulation"`` / ``"signalling"`` per prior, or ``None``: a shipped name's own kind
        (:func:`edge_kind`), else the table's ``edge_kind`` column, else ``"regulation"``.
    organism
        For shipped names.

    Returns
    -------
    pandas.DataFrame
        ``source, target, weight, prior, edge_kind`` (one row per gene pair). ``prior`` names the
        prior an edge came from (its shipped name, or ``"prior<k>"`` for the k-th non-name); a pair
        found in several priors is one edge with the mean weight (so a +1/−1 conflict becomes 0,
        sign unknown) and the ``prior``/``edge_kind`` of the first prior listing it.

    Examples
    --------
    >>> net = combine(["collectri", "omnipath_signaling"])     # doctest: +SKIP
    >>> net.groupby("edge_kind").size()                        # doctest: +SKIP
    """
    items = list(priors)
    if not items:
        raise ValueError("combine() needs at least one prior, e.g. ['collectri', 'omnipath_signaling']")
    kinds = [None] * len(items) if kinds is None else list(kinds)
    if len(kinds) != len(items):
        raise ValueError(f"kinds has {len(kinds)} entries for {len(items)} priors")
    parts = []
    for k, (p, kind) in enumerate(zip(items, kinds)):
        df = load(p, organism)
        if kind is None:
            kind = edge_kind(p, organism) if isinstance(p, str) else None
        if kind is not None:
            df["edge_kind"] = str(kind)
        elif "edge_kind" not in df.columns:
            df["edge_kind"] = "regulation"
        bad = sorted(set(df["edge_kind"].astype(str)) - set(EDGE_KINDS))
        if bad:
            raise ValueError(f"edge kinds must be one of {EDGE_KINDS}, got {bad} for prior {k}")
        df["prior"] = str(p).strip().lower() if isinstance(p, str) and not Path(p).suffix else f"prior{k}"
        parts.append(df[["source", "target", "weight", "prior", "edge_kind"]])
    return from_decoupler(pd.concat(parts, ignore_index=True))


EDGE_KINDS = ("regulation", "signalling")


def _filter_confidence(df: pd.DataFrame, confidence) -> pd.DataFrame:
    if "confidence" not in df.columns:
        raise ValueError("confidence= filters DoRothEA-style priors, but this prior has no 'confidence' column "
                         f"(columns: {list(df.columns)}); drop confidence= or load('dorothea').")
    levels = [confidence] if isinstance(confidence, str) else list(confidence)
    levels = [str(c).upper() for c in levels]
    unknown = sorted(set(levels) - set(_CONFIDENCE_LEVELS))
    if unknown or not levels:
        raise ValueError(f"confidence levels must be among {_CONFIDENCE_LEVELS}, got {unknown or levels}; "
                         "e.g. confidence=('A', 'B').")
    return df[df["confidence"].astype(str).str.upper().isin(levels)].reset_index(drop=True)


# decoupler >= 2 names the resources like this; anything else goes through dc.op.resource(name)
_ONLINE = {"collectri": "collectri", "dorothea": "dorothea", "progeny": "progeny", "hallmark": "hallmark"}


def load_online(name: str, organism: str = "human", **kwargs) -> pd.DataFrame:
    """Fetch a (possibly newer) prior through decoupler's online resources. Never the default.

    Parameters
    ----------
    name
        ``collectri``, ``dorothea``, ``progeny``, ``hallmark`` (``dc.op.<name>``), or any
        resource name ``dc.op.resource`` knows (e.g. ``"PanglaoDB"``).
    organism
        Passed to decoupler (``"human"``, ``"mouse"``, ...).
    **kwargs
        Passed to the decoupler function, e.g. ``license="commercial"`` or ``levels=["A"]``.

    Returns
    -------
    pandas.DataFrame
        The normalised long table (:func:`~grndiff.priors.from_decoupler`).

    Notes
    -----
    Needs network access to OmniPath; the shipped :func:`load` works offline and is what the
    models, tests and benchmarks use.
    """
    try:
        import decoupler as dc
    except ImportError as e:  # pragma: no cover - decoupler is a dependency
        raise ImportError("load_online needs decoupler: pip install decoupler") from e
    key = str(name).strip().lower()
    try:
        if key in _ONLINE:
            net = getattr(dc.op, _ONLINE[key])(organism=organism, **kwargs)
        else:
            net = dc.op.resource(name, organism=organism, **kwargs)
    except Exception as e:  # offline, proxy, changed API: one clear message
        raise RuntimeError(
            f"could not fetch {name!r} ({organism}) through decoupler ({type(e).__name__}: {e}). This needs "
            f"network access to OmniPath. Offline, use the shipped copy: grndiff.priors.load({key!r}, "
            f"organism={organism!r}) (see grndiff.priors.list_priors()).") from e
    return from_decoupler(net)
