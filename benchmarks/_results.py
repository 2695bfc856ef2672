"""Shared writer for benchmark results (kernel, generation, perturbation, performance, ...).

Every benchmark produces *tidy records*, one number per row::

    {"dataset": str, "method": str, "seed": int, "group": str, "metric": str, "value": float | None}

and writes them with :func:`write_results` to ``benchmarks/results/<name>.json`` ::

    {"command": "python benchmarks/kernel.py", "commit": "34959f7", "machine": "…",
     ...extra..., "records": [...]}

plus ``benchmarks/results/<name>.md``, the human table rendered from the same records by
:func:`records_to_markdown` (rows = method, columns = metric, one table per dataset).
Nothing written here may contain a hostname or an absolute path of the machine that ran it.

Import from a script in ``benchmarks/`` (its folder is ``sys.path[0]``)::

    from _results import record, write_results
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
FIELDS = ("dataset", "method", "seed", "group", "metric", "value")
_RESERVED = ("command", "commit", "machine", "records")

__all__ = [
    "FIELDS", "RESULTS_DIR", "command_string", "git_commit", "machine_description", "record",
    "mark_stale", "records_to_markdown", "validate_records", "write_results",
]


# ------------------------------------------------------------------------------ records
def record(dataset: str, method: str, metric: str, value, seed: int = 0, group: str = "all") -> dict:
    """One tidy row (key order = :data:`FIELDS`). Non-finite values are stored as ``None``."""
    if value is not None:
        value = float(value)
        if not math.isfinite(value):
            value = None
    return {"dataset": str(dataset), "method": str(method), "seed": int(seed), "group": str(group),
            "metric": str(metric), "value": value}


def validate_records(records: Iterable[Mapping]) -> list[dict]:
    """Check every row has exactly :data:`FIELDS` and a numeric (or null) value; return plain dicts."""
    out = []
    for i, r in enumerate(records):
        if set(r) != set(FIELDS):
            raise ValueError(f"record {i} has keys {sorted(r)}, expected {list(FIELDS)}")
        v = r["value"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"record {i}: value must be a number or None, got {v!r}")
        out.append(record(r["dataset"], r["method"], r["metric"], v, r["seed"], r["group"]))
    return out


# ------------------------------------------------------------------------------ provenance
def git_commit() -> str:
    """Short HEAD commit (read-only git) when this benchmark process started, or ``"unknown"``: a
    long run keeps naming the code it started from, whatever is committed while it runs."""
    return _START_COMMIT


def _head() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        return res.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_START_COMMIT = _head()  # read once, when the benchmark imports this module


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """Short, host-anonymous description: CPU model, usable cores, torch version."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 0
    parts = [_cpu_model(), f"{cores} cores"]
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            torch = None
    if torch is not None:
        parts.append(f"torch {torch.__version__}")
    return ", ".join(parts)


def _portable(arg: str) -> str:
    """Make an argument free of this machine's absolute paths (relative to the repo if inside it)."""
    if not os.path.isabs(arg):
        return arg
    p = Path(arg).resolve()
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return f"<{p.name}>"


def command_string(argv: Sequence[str] | None = None) -> str:
    """``python <script relative to the repo> <args>`` for the running (or given) argv."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "python"
    parts = ["python", _portable(os.path.abspath(argv[0]))]
    for a in argv[1:]:
        if "=" in a and a.startswith("--"):
            k, v = a.split("=", 1)
            parts.append(f"{k}={_portable(v)}")
        else:
            parts.append(_portable(a))
    return " ".join(parts)


# ------------------------------------------------------------------------------ rendering
def _fmt(v) -> str:
    if v is None:
        return "–"
    a = abs(v)
    if float(v).is_integer() and a < 1e6:
        return str(int(v))
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}" if a >= 100 else f"{v:.2f}"
    return f"{v:.3g}"


def _ordered_unique(xs: Iterable) -> list:
    seen: dict = {}
    for x in xs:
        seen.setdefault(x, None)
    return list(seen)


def _spread(vals: list) -> str:
    """``mean ± sd (n=k)`` of the seeds' values (sample sd); one value is shown with ``(n=1)``."""
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{_fmt(mean)} (n=1)"
    sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    sd_text = f"{sd:.1f}" if abs(mean) >= 10 else f"{sd:.3f}"  # the mean's precision: 1e-16 reads as 0.000
    return f"{_fmt(mean)} ± {sd_text} (n={len(vals)})"


SUMMARY_GROUPS = ("all", "strong")


def seed_spread_markdown(rows: list[dict]) -> str:
    """One table of ``mean ± sd (n=seeds)`` per (method, group) over the seeds of ``rows`` (one
    dataset's records); only the summary groups (``all``/``strong``) where a dataset has them."""
    groups = {r["group"] for r in rows}
    keep = [g for g in SUMMARY_GROUPS if g in groups] or sorted(groups)
    rows = [r for r in rows if r["group"] in keep]
    metrics = _ordered_unique(r["metric"] for r in rows)
    cells: dict = {}
    for r in rows:
        if r["value"] is not None:
            cells.setdefault((r["method"], r["group"], r["metric"]), {})[r["seed"]] = r["value"]
    lines = ["| method | group | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
    for m, g in _ordered_unique((r["method"], r["group"]) for r in rows):
        lines.append(f"| {m} | {g} | " + " | ".join(_spread(list(cells.get((m, g, k), {}).values()))
                                                    for k in metrics) + " |")
    return "\n".join(lines)


def records_to_markdown(records: Iterable[Mapping]) -> str:
    """Render tidy records as Markdown: one table per dataset, rows = method, columns = metric.

    If a dataset has several seeds or groups, they become extra row labels; duplicate
    (row, metric) cells are averaged and shown as ``mean (n=k)``. Rows and columns keep the
    order of first appearance. A dataset with several seeds first gets a table of the seed
    spread (``mean ± sd (n=seeds)``, :func:`seed_spread_markdown`): compare methods there, and call
    no difference smaller than the spread a win.
    """
    records = validate_records(records)
    blocks = []
    for ds in _ordered_unique(r["dataset"] for r in records):
        rows = [r for r in records if r["dataset"] == ds]
        multi_seed = len({r["seed"] for r in rows}) > 1
        if multi_seed:
            blocks.append(f"### {ds}: mean ± sd over seeds\n\n" + seed_spread_markdown(rows))
        multi_group = len({r["group"] for r in rows}) > 1
        key_names = ["method"] + (["group"] if multi_group else []) + (["seed"] if multi_seed else [])

        def key(r):
            return tuple(r[k] for k in key_names)  # noqa: B023

        metrics = _ordered_unique(r["metric"] for r in rows)
        cells: dict = {}
        for r in rows:
            cells.setdefault((key(r), r["metric"]), []).append(r["value"])
        lines = [f"### {ds}", "", "| " + " | ".join(key_names + metrics) + " |",
                 "|" + "---|" * len(key_names) + "---:|" * len(metrics)]
        for k in _ordered_unique(key(r) for r in rows):
            out = [str(x) for x in k]
            for m in metrics:
                vals = [v for v in cells.get((k, m), []) if v is not None]
                if not vals:
                    out.append("–")
                elif len(vals) == 1:
                    out.append(_fmt(vals[0]))
                else:
                    out.append(f"{_fmt(sum(vals) / len(vals))} (n={len(vals)})")
            lines.append("| " + " | ".join(out) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _render_document(name: str, obj: Mapping) -> str:
    head = [f"# Benchmark: {name}", "",
            f"- command: `{obj['command']}`",
            f"- commit: `{obj['commit']}`",
            f"- machine: {obj['machine']}"]
    notes = None
    for k, v in obj.items():
        if k in _RESERVED:
            continue
        if k == "notes":
            notes = v
            continue
        text = v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=False)
        head.append(f"- {k}: {text}")
    parts = ["\n".join(head), records_to_markdown(obj["records"]).rstrip()]
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes) if isinstance(notes, (list, tuple)) else str(notes))
    return "\n\n".join(parts) + "\n"


def write_results(name: str, records: Iterable[Mapping], command: str, extra: Mapping | None = None,
                  out_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md`` (default ``benchmarks/results``).

    ``extra`` holds additional top-level JSON keys (e.g. ``config``); plain scalars/dicts are also
    listed under the Markdown header, and a ``notes`` string or list is rendered after the tables.
    Returns the two paths.
    """
    extra = dict(extra or {})
    clash = set(extra) & set(_RESERVED)
    if clash:
        raise ValueError(f"extra may not override {sorted(clash)}")
    obj = {"command": command, "commit": git_commit(), "machine": machine_description(), **extra,
           "records": validate_records(records)}
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(obj, indent=1) + "\n")
    md_path.write_text(_render_document(name, obj))
    return json_path, md_path


def mark_stale(name: str, reason: str, out_dir: str | os.PathLike | None = None) -> None:
    """Mark ``<name>.json``/``.md`` as stale: a ``stale`` key with ``reason`` in the JSON and a banner
    on top of the Markdown, so a table no one re-ran at the current code says so where it is read.

    ``python benchmarks/_results.py --stale NAME "REASON"`` does it from the shell.
    """
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    obj = json.loads(json_path.read_text())
    obj = {**{k: v for k, v in obj.items() if k != "records"}, "stale": reason, "records": obj["records"]}
    json_path.write_text(json.dumps(obj, indent=1) + "\n")
    body = md_path.read_text() if md_path.exists() else _render_document(name, obj)
    md_path.write_text(_stale_banner(reason) + body)


def _stale_banner(reason: str) -> str:
    return f"> **Stale:** {reason}\n\n"


def render(name: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Rewrite ``<name>.md`` from ``<name>.json`` (the numbers are the JSON's; only the layout is
    today's): for a table written before a change of the Markdown layout."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    obj = json.loads((out / f"{name}.json").read_text())
    body = _render_document(name, obj)
    if obj.get("stale"):
        body = _stale_banner(obj["stale"]) + body
    (out / f"{name}.md").write_text(body)
    return out / f"{name}.md"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Benchmark results helpers")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--stale", nargs=2, metavar=("NAME", "REASON"),
                   help="mark benchmarks/results/NAME.{json,md} as stale with REASON")
    g.add_argument("--render", metavar="NAME", help="rewrite benchmarks/results/NAME.md from NAME.json")
    a = ap.parse_args()
    if a.stale:
        mark_stale(*a.stale)
    else:
        print(render(a.render))


def finish(save, t_start: float, summary) -> list[dict]:
    """Write a benchmark's results a last time (``save() -> (paths, records)``), say where and how
    long it took (``t_start``: ``time.perf_counter()`` at the start), print ``summary(records)``
    lines; returns the records."""
    paths, recs = save()
    print(f"[{time.perf_counter() - t_start:5.0f}s] wrote {paths[0]}")
    for line in summary(recs):
        print(line)
    return recs
