"""Sphinx configuration of bumps-mpi's documentation site: `make docs` builds it into docs/_build/html,
every warning an error. Pages are Markdown (MyST); the Python API's guide is a notebook (myst-nb, not
executed here: the test suite runs its cells); the references are generated from the code (_ext)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

from bumps_mpi.version import __version__  # noqa: E402  (the installed checkout's version)

project = "bumps-mpi"
author = "the bumps-mpi developers"
copyright = "2026, the bumps-mpi developers"
release = version = __version__

extensions = [
    "myst_nb",  # MyST Markdown pages and the notebook
    "sphinx.ext.autodoc",
    "sphinx_click",
    "sphinxcontrib.openapi",
    "bumps_docs",  # the settings' references and the service's OpenAPI description, from the code
]
exclude_patterns = ["_build", "_generated/*.json", "jupyter_execute"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
smartquotes = False  # "--time" stays two hyphens, as the user types it
nb_execution_mode = "off"  # the notebook's fits need MPI (and a cluster): tests/test_docs.py runs its cells
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"

html_theme = "furo"
html_title = f"bumps-mpi {release}"
html_static_path: list[str] = []
