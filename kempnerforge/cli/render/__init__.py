"""How ``kf-ckpt`` prints: every word a command shows a person, and every JSON document.

The command modules (``kempnerforge.cli.<command>``) parse options, call the library and hand
its result to a view here; the library records carry raw numbers (bytes, seconds, steps) and
this package is the only place where they become text (``1.9 GB``, ``3 h ago``, a table).
The library's own messages (errors, notes, skip reasons), which also reach training logs, are
printed as they come, with the command-line hint of an error's remedy added here.

* This ``__init__`` re-exports the shared pieces: the formatters (``_format``: ``human_age``,
  ``human_bytes``, ``render_table``, ...), retention decisions in words (``_decisions``), the
  parts the JSON documents share (``_documents``), the error hints (``_errors``), and the
  helpers that print in the house format (``_echo``: ``echo_json``, ``echo_warnings``,
  ``echo_notes``, ``progress_bar``).
* One view module per command (``render.ls``, ``render.collect``, ``render.plan``, ``render.mark``,
  ``render.pin``, ``render.show``, ``render.stats``, ``render.diff``, ``render.weight_trace``,
  ``render.export``): pure functions from a library result to text or to a JSON-ready dict.
  They are imported by their command only, so that a command loads its own view alone.
  ``_pending`` is the part of the ``ls`` view about saves not yet published.

Usage errors about the command line itself (a bad ``--window``, two exclusive flags) stay next
to the option they check, as Click has it. The JSON documents are described in
``docs/reference/json.rst``; change both together, and bump ``FORMAT_VERSION`` when a field
changes meaning or goes away.
"""

from __future__ import annotations

from kempnerforge.cli._text import escape
from kempnerforge.cli.render._decisions import reason_text
from kempnerforge.cli.render._documents import (
    FORMAT_VERSION,
    catalog_warnings,
    config_document,
    skipped_document,
)
from kempnerforge.cli.render._echo import echo_json, echo_notes, echo_warnings, progress_bar
from kempnerforge.cli.render._errors import REMEDY_HINTS, error_text
from kempnerforge.cli.render._format import (
    NOW_ENV,
    human_age,
    human_bytes,
    human_count,
    human_duration,
    human_float,
    now_s,
    plural,
    render_table,
    shape_text,
    sparkline,
    step_note,
)

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
    "human_duration",
    "human_float",
    "now_s",
    "plural",
    "progress_bar",
    "reason_text",
    "render_table",
    "shape_text",
    "skipped_document",
    "sparkline",
    "step_note",
]
