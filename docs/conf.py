"""Sphinx configuration: the API reference from the docstrings, and the Markdown pages beside it.

Build (what CI runs):  sphinx-build -E -W --keep-going -n -b html docs docs/_build/html
Nothing is fetched at build time: no intersphinx, and names of torch, Pyro and NumPy in type
hints are left unlinked (see ``nitpick_ignore_regex``). MathJax is loaded by the browser.
"""

import sys
from pathlib import Path

import pyrodiff

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "pyrodiff"
author = "pyrodiff contributors"
copyright = "pyrodiff contributors"
release = pyrodiff.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "myst_parser",
    "pyrodiff_api",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext", "results"]
root_doc = "index"

# Broken cross-references fail the build (with -W): a :class: to a renamed class, a type
# hint naming a class that no page documents.
nitpicky = True
# Third-party names cannot resolve without their inventories, which would be fetched from
# the web; they are shown as code, unlinked.
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(torch|pyro|numpy|np|matplotlib|sklearn|tqdm|argparse|enum|typing|collections"
        r"|pathlib|dataclasses|contextlib|json|io|os|abc|types|builtins)(\..*)?",
    ),
    (
        r"py:.*",
        r"(Tensor|nn\.Module|Path|Figure|Axes|Generator|Callable|Iterator|Iterable"
        r"|Sequence|Mapping|Any|Enum|NDArray|ndarray)",
    ),
    (r"py:data", r"Ellipsis"),  # tuple[int, ...]
]
# docs/training.md shows a metrics.jsonl line elided with "…", which is not JSON; Pygments
# falls back to plain highlighting, which is what that block wants.
suppress_warnings = ["misc.highlighting_failure"]

autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
autodoc_preserve_defaults = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
# an Attributes: section becomes fields of the class, not a second entry beside autodoc's
napoleon_use_ivar = True

typehints_fully_qualified = False
typehints_defaults = "comma"
always_document_param_types = False
typehints_use_signature = False
typehints_use_signature_return = False

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"pyrodiff {release}"
html_static_path = []
