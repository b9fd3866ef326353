"""Sphinx configuration of the kempnerforge documentation (``make docs``).

Builds offline: no intersphinx, no remote images. Warnings are errors in ``make docs``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kempnerforge  # noqa: E402

project = "kempnerforge"
author = "KempnerForge contributors"
copyright = "2025, KempnerForge contributors"
version = kempnerforge.__version__
release = kempnerforge.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",
]

# The reference pages read like the config spec: members in source order, bases shown,
# type hints moved from the signature into the parameter list.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = True

# Quotes and ellipses only: "--dtype" in a Click help text must not become an en dash.
smartquotes_action = "qe"

exclude_patterns = ["_build"]
templates_path: list[str] = []

html_theme = "furo"
html_title = f"kempnerforge {release}"
html_static_path: list[str] = []


def _members_without_source_last() -> None:
    """Put members with no source line (a dataclass's generated ``__init__``) after the rest.

    Sphinx 9 gives such members the rank ``len(tagorder)``, which lands them between fields;
    the reference page lists ``__init__`` last. Pinned Sphinx (constraints.txt); a no-op if the
    private hook moves.
    """
    try:
        from sphinx.ext.autodoc._dynamic import _member_finder
    except ImportError:
        return
    original = getattr(_member_finder, "_sort_members", None)
    if original is None:
        return

    def sort_members(documenters, order, *, analyzer_order, **kwargs):  # type: ignore[no-untyped-def]
        if order == "bysource" and analyzer_order:
            last = max(analyzer_order.values()) + 1
            analyzer_order = {
                **{entry[0].dotted_parts: last for entry in documenters},
                **analyzer_order,
            }
        return original(documenters, order, analyzer_order=analyzer_order, **kwargs)

    _member_finder._sort_members = sort_members


_members_without_source_last()
