"""Sphinx configuration: API reference (autodoc + numpydoc), the docs/*.md pages (MyST) and the
committed tutorial notebooks (myst-nb, never executed here). Build with `make docs` (offline)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's grndiff, whatever is installed

# The notebooks live in tutorials/ (where users open them); Sphinx reads sources only below docs/,
# so they are copied into docs/tutorials/ (ignored by git) before every build.
_NB_DIR = DOCS / "tutorials"
_NB_DIR.mkdir(exist_ok=True)
for _stale in _NB_DIR.glob("*.ipynb"):
    _stale.unlink()
for _nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(_nb, _NB_DIR / _nb.name)

import grndiff  # noqa: E402

project = "grndiff"
author = "grndiff developers"
copyright = "grndiff developers, BSD-3-Clause"
version = release = grndiff.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
root_doc = "index"

# notebooks are rendered with the outputs committed in tutorials/; nothing is executed here
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # notebooks open with a level-1 title and use ## sections freely

autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": False}
autodoc_typehints = "none"  # numpydoc renders the documented types; annotations stay in the signature text
autodoc_mock_imports: list[str] = []
numpydoc_show_class_members = False  # autodoc lists members already; avoids autosummary stubs
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False

html_theme = "furo"
html_title = f"grndiff {release}"
html_static_path: list[str] = []
autodoc_inherit_docstrings = False  # Lightning hooks (train_dataloader ...) would bring Lightning's docstring markup
