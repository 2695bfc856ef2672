"""scanpy conventions for public functions that write into an AnnData, and the layering rule."""
import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import grndiff as gd
from grndiff.model import GRNDiff

WRITERS = [gd.tl.pathway_tokens, gd.tl.embed]


@pytest.mark.parametrize("fn", WRITERS, ids=lambda f: f.__name__)
def test_writer_signature(fn):
    params = list(inspect.signature(fn).parameters.values())
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # model-bound tools take (model, adata); everything else is keyword-only
    assert positional in (["adata"], ["model", "adata"]), positional
    options = [p for p in params if p.name not in ("model", "adata")]
    assert all(p.kind is p.KEYWORD_ONLY for p in options), [p.name for p in options if p.kind is not p.KEYWORD_ONLY]
    names = {p.name for p in options}
    assert {"key_added", "copy"} <= names
    assert inspect.signature(fn).parameters["copy"].default is False


@pytest.fixture(scope="module")
def token_model():
    adata = gd.datasets.krumsiek11()
    GRNDiff.setup_anndata(adata, condition_keys=["cell_type"])
    modules = {"erythroid": ["Gata1", "Fog1", "EKLF", "SCL"], "myeloid": ["Cebpa", "Pu.1", "cJun", "EgrNab", "Gfi1"]}
    import pandas as pd
    mod_df = pd.DataFrame([(k, g, 1.0) for k, gs in modules.items() for g in gs],
                          columns=["source", "target", "weight"])
    model = GRNDiff(adata, prior=gd.datasets.krumsiek11_network(), modules=mod_df,
                    graph_kwargs={"min_module_size": 3}, hidden=16, depth=2, token_depth=1)
    model.train(max_steps=20, max_epochs=100, progress_bar=False)
    return model, adata


@pytest.mark.parametrize("fn", WRITERS, ids=lambda f: f.__name__)
def test_copy_false_writes_in_place_and_copy_true_leaves_input(fn, token_model):
    model, adata = token_model
    a = adata.copy()
    before_obsm, before_uns = set(a.obsm.keys()), set(a.uns.keys())
    out = fn(model, a, key_added="mykey", copy=True)
    assert out is not None and set(a.obsm.keys()) == before_obsm and set(a.uns.keys()) == before_uns
    assert any(k.startswith("mykey") for k in out.obsm)
    res = fn(model, a, key_added="mykey")
    assert res is None and any(k.startswith("mykey") for k in a.obsm)
    key = [k for k in a.obsm if k.startswith("mykey")][0]
    assert np.asarray(a.obsm[key]).shape[0] == a.n_obs


def test_pathway_tokens_params_and_rank(token_model, tmp_path):
    model, adata = token_model
    a = adata.copy()
    gd.tl.pathway_tokens(model, a)
    assert list(a.obsm["grndiff_tokens"].columns) == model.token_names == ["erythroid", "myeloid"]
    assert a.uns["grndiff_tokens"]["params"]["t"] == 1.0  # key_added is the full key, as in tl.embed
    table = gd.tl.rank_tokens(a, "cell_type", reference="progenitor")
    assert set(table["group"]) == {"Ery", "Mk", "Mo", "Neu"} and (table["rank"] >= 1).all()
    # stored like sc.tl.rank_genes_groups, and the AnnData still writes
    stored = a.uns["rank_tokens"]
    assert stored["params"] == {"groupby": "cell_type", "reference": "progenitor", "key": "grndiff_tokens"}
    assert stored["table"].equals(table)
    b = a.copy()
    tab2, c = gd.tl.rank_tokens(b, "cell_type", reference="progenitor", key_added="r2", copy=True)
    assert "r2" not in b.uns and "r2" in c.uns and tab2.equals(table)
    a.write_h5ad(tmp_path / "tokens.h5ad")
    # the prefix form of earlier versions still reads
    b.obsm["old_tokens"] = b.obsm["grndiff_tokens"]
    assert gd.tl.rank_tokens(b, "cell_type", reference="progenitor", key="old").equals(table)


def test_lower_layers_never_import_higher_ones():
    """priors → graph → data → nn → flow → train → api; nn and flow never import AnnData; the
    numeric side packages (metrics, baselines) and the shipped datasets never import the model."""
    order = ["priors", "graph", "data", "nn", "flow", "train"]
    api = {"model", "cli", "tl", "pl", "demo"}
    higher_than = {m: set(order[i + 1:]) | api for i, m in enumerate(order)}
    for side in ("metrics", "baselines", "datasets"):
        higher_than[side] = {"nn", "flow", "train"} | api
    root = Path(gd.__file__).parent
    for layer in [*order, "metrics", "baselines", "datasets"]:
        path = root / layer if (root / layer).is_dir() else root / f"{layer}.py"
        files = list(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                mods = []
                if isinstance(node, ast.ImportFrom):
                    mods = [node.module] if node.module else [a.name for a in node.names]
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                for m in mods:
                    name = m.lstrip(".").replace("grndiff.", "").split(".")[0]
                    assert name not in higher_than[layer], f"{f.name} ({layer}) imports {m}"
                    if layer in ("nn", "flow"):
                        assert name not in ("anndata", "scanpy", "data"), f"{f.name} imports {m}"


def _grndiff_modules() -> dict[str, Path]:
    """Every module of the grndiff package (dotted name → file), packages as their ``__init__``."""
    root = Path(gd.__file__).parent
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = ["grndiff", *f.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


_IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if m == "grndiff" or m.startswith("grndiff.")]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + "\\n" + traceback.format_exc())
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported on its own (no grndiff module loaded before it): an import cycle that
    only the usual import order hides fails here with ImportError. One interpreter, grndiff.*
    cleared from sys.modules between modules (third-party packages stay loaded, so it is fast)."""
    import os
    import subprocess
    import sys

    names = sorted(_grndiff_modules())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(gd.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, f"modules that fail to import first:\n{res.stdout}\n{res.stderr[-3000:]}"


def _module_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported: not those inside functions, nor
    under ``if TYPE_CHECKING:`` (class bodies and top-level if/try/with blocks count)."""
    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from visit(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    yield from visit(getattr(node, field, []) or [])
    yield from visit(tree.body)


def _module_import_graph() -> dict[str, set[str]]:
    """grndiff module → the grndiff modules it imports at module level (relative imports resolved).

    ``from pkg import name`` counts ``pkg.name`` when that is a module, and ``pkg`` itself unless
    ``pkg`` is a package above the importing module (already in ``sys.modules`` then: importing
    its submodule does not wait for its ``__init__``)."""
    modules = _grndiff_modules()
    graph = {}
    for name, f in modules.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _module_level_imports(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                if f"{mod}.{a.name}" in modules:  # a submodule: `from . import sibling` needs only the
                    targets.add(f"{mod}.{a.name}")  # package object, which an ancestor always is by then
                    if not name.startswith(mod + "."):
                        targets.add(mod)
                else:  # a name that mod's code defines
                    targets.add(mod)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or ``None`` if it is acyclic."""
    state, stack = {}, []  # state: 1 = on the current path, 2 = done

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (cycle := dfs(v)):
                return cycle
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (cycle := dfs(u)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle_and_none_without():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_grndiff_modules_at_module_level():
    """Imports inside functions (the lazy ones that break cycles on purpose) do not count."""
    graph = _module_import_graph()
    assert "grndiff.data.ondisk" in graph["grndiff.data"] and "grndiff.flow.sources" in graph["grndiff.flow"]
    cycle = _find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " → ".join(cycle)
