"""The layers of DESIGN.md, read from the imports: every ``import`` anywhere in a module counts,
including the lazy ones inside functions (a lazy import still couples the layers)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kempnerforge"

# (modules under this folder, imports they must not make)
RULES = [
    ("config", ("torch", "kempnerforge.checkpoint", "kempnerforge.cli")),
    (
        "checkpoint/store",
        (
            "torch",
            "safetensors",
            "kempnerforge.checkpoint.manager",
            "kempnerforge.checkpoint.export",
            "kempnerforge.cli",
        ),
    ),
    ("checkpoint/export", ("kempnerforge.checkpoint.manager", "kempnerforge.cli")),
    ("checkpoint/manager", ("kempnerforge.cli",)),
    ("errors.py", ("torch", "kempnerforge.checkpoint", "kempnerforge.config", "kempnerforge.cli")),
]


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations(where: str, forbidden: tuple[str, ...]) -> list[str]:
    target = PACKAGE / where
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    assert files, f"no module under {target}"
    bad = []
    for path in files:
        for name in sorted(imports_of(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return bad


@pytest.mark.parametrize(("where", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_imports_only_point_down_the_layers(where: str, forbidden: tuple[str, ...]) -> None:
    assert violations(where, forbidden) == []


def test_nothing_outside_the_cli_imports_the_cli() -> None:
    bad = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "cli" not in path.relative_to(PACKAGE).parts
        for name in imports_of(path)
        if name == "kempnerforge.cli" or name.startswith("kempnerforge.cli.")
    ]
    assert bad == []


def test_the_checker_sees_a_lazy_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from kempnerforge.checkpoint.manager import X\n")
    assert "kempnerforge.checkpoint.manager" in imports_of(module)


def test_no_module_is_named_like_a_standard_library_module() -> None:
    # A module named ``gc`` or ``trace`` reads as the standard library's in a traceback, an
    # import list or a ``python -m`` line; command modules take the library's job name instead.
    clashes = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if (path.parent.name if path.stem == "__init__" else path.stem).lstrip("_")
        in sys.stdlib_module_names
    )
    assert clashes == []
