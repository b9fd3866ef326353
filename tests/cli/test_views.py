"""The CLI is thin: a command module parses, calls the library and echoes what its view renders;
the views (``kempnerforge/cli/render/<command>.py``) are pure functions that print nothing."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from kempnerforge.cli.main import COMMANDS
from tests.test_layering import PACKAGE, imports_of

RENDER = PACKAGE / "cli" / "render"
COMMAND_MODULES = sorted({spec[0] for spec in COMMANDS.values()})

ECHO_HELPERS = {"echo_json", "echo_notes", "echo_warnings", "progress_bar", "now_s"}
"""What a command may take from ``kempnerforge.cli.render`` itself: printing, never wording."""


def _imported_names(path: Path, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_a_command_takes_only_printing_helpers_and_its_own_view(module: str) -> None:
    path = Path(importlib.import_module(module).__file__ or "")
    formatters = _imported_names(path, "kempnerforge.cli.render") - ECHO_HELPERS
    assert formatters == set(), f"{module} formats text itself; move it to its view"
    views = {
        node.module.removeprefix("kempnerforge.cli.render.")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("kempnerforge.cli.render.")
    }
    assert views <= {module.rsplit(".", 1)[1]}, f"{module} uses another command's view"


def test_every_command_has_a_view() -> None:
    views = {path.stem for path in RENDER.glob("*.py") if not path.stem.startswith("_")}
    assert views == {module.rsplit(".", 1)[1] for module in COMMAND_MODULES}


@pytest.mark.parametrize("view", sorted(p.name for p in RENDER.glob("*.py") if p.stem[0] != "_"))
def test_a_view_is_pure(view: str) -> None:
    found = imports_of(RENDER / view)
    assert not {"click", "sys"} & found, f"{view} prints or exits; views return text and dicts"
    calls = {
        node.func.id
        for node in ast.walk(ast.parse((RENDER / view).read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not {"print", "open", "echo_json", "echo_warnings", "echo_notes"} & calls


def test_the_checks_see_a_formatter_in_a_command(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from kempnerforge.cli.render import echo_json, human_bytes\n")
    assert _imported_names(module, "kempnerforge.cli.render") - ECHO_HELPERS == {"human_bytes"}
