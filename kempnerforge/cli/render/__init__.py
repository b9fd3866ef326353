"""How ``kf-ckpt`` prints: every word a command shows a person, and every JSON document.

The command modules (``kempnerforge.cli.<command>``) parse options, call the library and hand
its result to a view here; the library records carry raw numbers (bytes, seconds, steps) and
this package is the only place where they become text (``1.9 GB``, ``3 h ago``, a table).

* This ``__init__`` re-exports the shared pieces: formatters (``human_age``, ``human_bytes``,
  ``render_table``, ...), the JSON documents' common parts, the error hints, and the helpers
  that print in the house format (``echo_json``, ``echo_warnings``, ``echo_notes``).
* One view module per command (``render.ls``, ``render.gc``, ``render.plan``, ``render.mark``,
  ``render.pin``, ``render.show``, ``render.stats``, ``render.diff``, ``render.trace``,
  ``render.export``): pure functions from a library result to text or to a JSON-ready dict.
  They are imported by their command only, so that a command loads its own view alone.

Usage errors about the command line itself (a bad ``--window``, two exclusive flags) stay next
to the option they check, as Click has it. The JSON documents are described in
``docs/reference/json.rst``; change both together, and bump ``FORMAT_VERSION`` when a field
changes meaning or goes away.
"""

from __future__ import annotations

from kempnerforge.cli._render import (
    FORMAT_VERSION,
    NOW_ENV,
    REMEDY_HINTS,
    catalog_warnings,
    config_document,
    echo_json,
    echo_warnings,
    error_text,
    escape,
    human_age,
    human_bytes,
    human_count,
    human_float,
    now_s,
    plural,
    reason_text,
    render_table,
    rule_text,
    skipped_document,
    sparkline,
)
from kempnerforge.cli.render._echo import echo_notes, progress_bar
from kempnerforge.cli.render._format import shape_text, step_note

__all__ = [
    "FORMAT_VERSION",
    "NOW_ENV",
    "REMEDY_HINTS",
    "catalog_warnings",
    "config_document",
    "echo_json",
    "echo_notes",
    "echo_warnings",
    "error_text",
    "escape",
    "human_age",
    "human_bytes",
    "human_count",
    "human_float",
    "now_s",
    "plural",
    "progress_bar",
    "reason_text",
    "render_table",
    "rule_text",
    "shape_text",
    "skipped_document",
    "sparkline",
    "step_note",
]
