"""Loading priors: shipped files (offline, the default), user files, decoupler/networkx objects.

Every network is a long ``pandas.DataFrame`` with columns ``source, target, weight`` (decoupler's
format); gene sets are the same table with ``source`` = set name, ``target`` = gene, ``weight`` = 1.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import pandas as pd

COLUMNS = ["source", "target", "weight"]


def _prior_dir() -> Path:
    """The shipped ``priors/`` folder: package data ``grndiff._priors`` when installed, else the repo's."""
    try:
        from importlib.resources import files
        p = Path(str(files("grndiff._priors")))
        if (p / "manifest.json").exists():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    p = Path(__file__).resolve().parents[2] / "priors"
    if (p / "manifest.json").exists():
        return p
    raise FileNotFoundError("the shipped priors (priors/manifest.json) are missing from this installation")


@lru_cache(maxsize=1)
def _manifest() -> list[dict]:
    return json.loads((_prior_dir() / "manifest.json").read_text())["priors"]


def list_priors() -> pd.DataFrame:
    """The shipped priors: name, organism, kind (``network``/``gene_sets``), file, rows, licence, citation."""
    return pd.DataFrame(_manifest())[["name", "organism", "kind", "file", "rows", "licence", "citation"]]


def prior_path(name: str, organism: str = "human") -> Path:
    """Path of a shipped prior file."""
    for m in _manifest():
        if m["name"] == name.lower() and m["organism"] == organism.lower():
            return _prior_dir() / m["file"]
    known = sorted({(m["name"], m["organism"]) for m in _manifest()})
    raise ValueError(f"no shipped prior {name!r} for organism {organism!r}; shipped: {known}. "
                     "Pass a CSV/TSV/GMT path or a DataFrame instead.")


def verify_checksums() -> dict[str, bool]:
    """sha256 of each shipped file against the manifest → {file: ok}."""
    out = {}
    for m in _manifest():
        data = (_prior_dir() / m["file"]).read_bytes()
        out[m["file"]] = hashlib.sha256(data).hexdigest() == m["sha256"]
    return out


def read_gmt(path) -> pd.DataFrame:
    """Read a GMT file (``name<TAB>description<TAB>gene...``) → long ``source, target, weight=1``."""
    rows = []
    with open(path) as fh:
        for ln, line in enumerate(fh, 1):
            parts = line.rstrip("\n\r").split("\t")
            if len(parts) < 2 or not parts[0]:
                if line.strip():
                    raise ValueError(f"{path}:{ln}: not a GMT line (name<TAB>description<TAB>genes...)")
                continue
            for g in dict.fromkeys(p for p in parts[2:] if p):  # keep order, drop duplicates
                rows.append((parts[0], g, 1.0))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_gmt(df: pd.DataFrame, path, description: str = "grndiff") -> None:
    """Write a long gene-set table to GMT (one line per ``source``, genes in table order)."""
    df = from_decoupler(df)
    with open(path, "w") as fh:
        for name, genes in df.groupby("source", sort=False)["target"]:
            fh.write("\t".join([str(name), description, *map(str, genes)]) + "\n")


def from_decoupler(df: pd.DataFrame) -> pd.DataFrame:
    """Validate and normalise a decoupler-style net → ``source, target, weight`` (+ extra columns).

    Missing ``weight`` → 1. Duplicate (source, target) rows are merged: their weights are summed
    and clipped to the sign range of the inputs is NOT done — the sum is kept, deterministically,
    in first-appearance order.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame with columns source,target[,weight], got {type(df).__name__}")
    missing = [c for c in ("source", "target") if c not in df.columns]
    if missing:
        raise ValueError(f"prior table lacks column(s) {missing}; it has {list(df.columns)}. "
                         "Rename to decoupler's long format: source, target, weight.")
    out = df.copy()
    if "weight" not in out.columns:
        out["weight"] = 1.0
    out["source"], out["target"] = out["source"].astype(str), out["target"].astype(str)
    out["weight"] = pd.to_numeric(out["weight"], errors="coerce")
    if out["weight"].isna().any():
        raise ValueError(f"prior weight column has {int(out['weight'].isna().sum())} non-numeric or missing values")
    extra = [c for c in out.columns if c not in COLUMNS]
    if out.duplicated(["source", "target"]).any():
        agg = {"weight": "sum", **{c: "first" for c in extra}}
        out = out.groupby(["source", "target"], sort=False, as_index=False).agg(agg)
    return out[COLUMNS + extra].reset_index(drop=True)


def from_networkx(G) -> pd.DataFrame:
    """A networkx (Di)Graph → long table (edge attribute ``weight``, default 1)."""
    rows = [(str(u), str(v), float(d.get("weight", 1.0))) for u, v, d in G.edges(data=True)]
    return pd.DataFrame(rows, columns=COLUMNS)


def to_networkx(df: pd.DataFrame):
    """Long table → ``networkx.DiGraph`` with ``weight`` edge attributes."""
    import networkx as nx
    df = from_decoupler(df)
    G = nx.DiGraph()
    G.add_weighted_edges_from(df[COLUMNS].itertuples(index=False, name=None))
    return G


def load(name_or_path, organism: str = "human", *, confidence=None) -> pd.DataFrame:
    """Load a prior → long ``source, target, weight`` DataFrame.

    Parameters
    ----------
    name_or_path
        A shipped name (``collectri``, ``dorothea``, ``progeny``, ``hallmark``, ``reactome``,
        ``go_bp``; see :func:`list_priors`), a ``.csv``/``.tsv``/``.gmt`` path, or a DataFrame.
    organism
        ``"human"`` or ``"mouse"`` for shipped names.
    confidence
        DoRothEA only: keep these confidence levels, e.g. ``("A", "B")``.
    """
    if isinstance(name_or_path, pd.DataFrame):
        return from_decoupler(name_or_path)
    s = str(name_or_path)
    p = Path(s)
    if not p.exists() and p.suffix.lower() not in (".csv", ".tsv", ".gmt", ".txt"):
        p = prior_path(s, organism)
    elif not p.exists():
        raise FileNotFoundError(f"prior file {s} does not exist")
    if p.suffix.lower() == ".gmt":
        return read_gmt(p)
    df = pd.read_csv(p, sep="\t" if p.suffix.lower() in (".tsv", ".txt") else ",")
    df = from_decoupler(df)
    if confidence is not None:
        if "confidence" not in df.columns:
            raise ValueError(f"{p.name} has no confidence column (only DoRothEA does)")
        df = df[df["confidence"].isin(list(confidence))].reset_index(drop=True)
    return df


def load_online(name: str, organism: str = "human", **kwargs) -> pd.DataFrame:
    """Optional online path through ``decoupler.op.<name>`` (needs network; never the default)."""
    import decoupler as dc
    fn = getattr(getattr(dc, "op", None), name, None)
    if fn is None:
        raise ValueError(f"decoupler has no online loader dc.op.{name}")
    try:
        return from_decoupler(fn(organism=organism, **kwargs))
    except Exception as e:
        raise ConnectionError(f"dc.op.{name} failed ({type(e).__name__}: {e}); use the shipped prior "
                              f"grndiff.priors.load({name!r}) offline instead") from e
