"""The priors shipped with grndiff (offline, the default) and the optional online path.

The files live in the repository's top-level ``priors/`` folder, next to a ``manifest.json``
(name, organism, kind, file, sha256, rows, licence, citation) and a ``README.md``. pyproject.toml
maps that folder to the package ``grndiff._priors`` (``[tool.setuptools.package-dir]``), so an
installed, non-editable grndiff carries the same files.
"""
from __future__ import annotations

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
    dirs = []
    try:  # installed wheel (and editable installs made after the package-dir mapping)
        dirs.append(Path(str(files("grndiff._priors"))))
    except (ModuleNotFoundError, TypeError):
        pass
    return dirs + [Path(__file__).resolve().parents[2] / "priors"]  # a source checkout


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


def prior_path(name: str, organism: str = "human") -> Path:
    """Path of a shipped prior file.

    Parameters
    ----------
    name
        Shipped name, e.g. ``"collectri"`` (see :func:`list_priors`); case-insensitive.
    organism
        ``"human"`` or ``"mouse"``.
    """
    key, org = str(name).strip().lower(), str(organism).strip().lower()
    for m in _manifest():
        if m["name"] == key and m["organism"] == org:
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
        ``go_bp``; :func:`list_priors` says which organisms; ``krumsiek11``, the toy network of
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
            df = read_table(prior_path(name_or_path, organism))
        else:
            raise FileNotFoundError(f"prior file {str(name_or_path)!r} does not exist. Shipped priors load by "
                                    "name, e.g. load('collectri'); see grndiff.priors.list_priors().")
    else:
        raise TypeError(f"prior must be a shipped name, a file path, a DataFrame or a networkx graph; got "
                        f"{type(name_or_path).__name__}")
    if confidence is not None:
        df = _filter_confidence(df, confidence)
    return df


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
