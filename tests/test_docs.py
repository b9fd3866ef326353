"""The documentation covers the whole surface: every command, option and config field.

The CLI reference page is generated from the Click commands (sphinx-click), so it can never miss
an option; these tests hold the hand-written pages to the same standard, and run the doctest
examples of the pages so that they stay true. ``make docs`` builds the site with warnings as
errors.
"""

from __future__ import annotations

import dataclasses
import doctest
import json
import os
import pkgutil
import re
import shlex
import shutil
import textwrap
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kempnerforge.checkpoint.store.files import update_latest
from kempnerforge.checkpoint.store.retention import IN_FLIGHT_GRACE_S
from kempnerforge.cli.main import COMMANDS, cli
from kempnerforge.config import (
    CheckpointConfig,
    DynamicCheckpointWindow,
    config_to_dict,
    load_config,
)
from tests.checkpoint._trees import dcp_manifest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = DOCS / "reference" / "cli.rst"  # the sphinx-click page: not hand-written prose
# Pages whose ``kf-ckpt`` console output is re-run against the worked-example root below.
CHECKED_OUTPUT = [
    *sorted((DOCS / "concepts").glob("*.rst")),
    DOCS / "quickstart.rst",
    *(DOCS / "guides" / f"{name}.rst" for name in ("export", "resume", "custom-window")),
]


def _pages(*, prose_only: bool) -> dict[Path, str]:
    pages = {
        path: path.read_text(encoding="utf-8")
        for path in sorted(DOCS.rglob("*.rst"))
        if "_build" not in path.parts and not (prose_only and path == GENERATED)
    }
    assert pages, f"no .rst page under {DOCS}"
    return pages


PROSE = "\n".join(_pages(prose_only=True).values())


def _mentioned(token: str) -> bool:
    """``token`` (``--dry-run``, ``-o``, ``checkpoint.dir``) appears as a whole word."""
    return re.search(rf"(?<![\w.-]){re.escape(token)}(?![\w-])", PROSE) is not None


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli, info_name="kf-ckpt")
    found = {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}
    assert all(found.values()), (
        f"commands that do not load: {[n for n, c in found.items() if not c]}"
    )
    return found  # type: ignore[return-value]


def _options() -> list[tuple[str, str]]:
    pairs = [
        (f"(group) {p.name}", opt)
        for p in cli.params
        if isinstance(p, click.Option)
        for opt in p.opts
    ]
    for name, command in _commands().items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                pairs += [(name, opt) for opt in (*param.opts, *param.secondary_opts)]
    return pairs


def _config_keys() -> list[str]:
    keys = [f"checkpoint.{f.name}" for f in dataclasses.fields(CheckpointConfig)]
    keys += [
        f"checkpoint.dyn_ckpt_window.{f.name}" for f in dataclasses.fields(DynamicCheckpointWindow)
    ]
    return keys


def test_every_command_is_documented() -> None:
    missing = [name for name in _commands() if not _mentioned(f"kf-ckpt {name}")]
    assert missing == [], f"commands never shown as 'kf-ckpt NAME' in the docs: {missing}"
    assert set(_commands()) == set(COMMANDS)


@pytest.mark.parametrize(("command", "option"), _options())
def test_every_option_is_documented(command: str, option: str) -> None:
    assert _mentioned(option), f"kf-ckpt {command} {option} appears in no docs page"


def test_every_argument_is_documented() -> None:
    missing = [
        f"kf-ckpt {name} {param.human_readable_name}"
        for name, command in _commands().items()
        for param in command.params
        if isinstance(param, click.Argument)
        and not _mentioned(param.human_readable_name.strip("[]."))
    ]
    assert missing == []


@pytest.mark.parametrize("key", _config_keys())
def test_every_config_field_is_documented(key: str) -> None:
    assert _mentioned(key), f"config field {key} appears in no docs page"


def test_cli_reference_is_generated_from_click() -> None:
    text = GENERATED.read_text(encoding="utf-8")
    assert ".. click:: kempnerforge.cli.main:cli" in text
    assert ":prog: kf-ckpt" in text
    assert ":nested: full" in text


def test_api_reference_covers_the_config_module() -> None:
    page = DOCS / "reference" / "api" / "kempnerforge.config.checkpoint.rst"
    text = page.read_text(encoding="utf-8")
    for name in ("AsyncCheckpointMode", "DynamicCheckpointWindow", "CheckpointConfig"):
        assert f".. autoclass:: {name}" in text


def test_every_public_module_has_an_api_page() -> None:
    """Public modules of the library (not the CLI, not ``_private`` ones) are autodoc'ed."""
    import kempnerforge

    modules = [
        info.name
        for info in pkgutil.walk_packages(kempnerforge.__path__, "kempnerforge.")
        if not any(part.startswith("_") for part in info.name.split("."))
        and not info.name.startswith("kempnerforge.cli")
    ]
    assert "kempnerforge.checkpoint.manager" in modules
    missing = []
    for name in modules:
        page = DOCS / "reference" / "api" / f"{name}.rst"
        if not page.is_file() or name not in page.read_text(encoding="utf-8"):
            missing.append(name)
    assert missing == [], "modules without a page under docs/reference/api/"


def test_every_api_page_documents_a_public_module_that_exists() -> None:
    """No page is left behind when a module moves, is renamed or goes private."""
    import importlib.util

    stale = []
    for page in sorted((DOCS / "reference" / "api").glob("*.rst")):
        text = page.read_text(encoding="utf-8")
        directive = re.search(r"^\.\. automodule:: (\S+)", text, re.M)
        name = page.stem
        if (
            directive is None
            or directive.group(1) != name
            or any(part.startswith("_") for part in name.split("."))
            or importlib.util.find_spec(name) is None
        ):
            stale.append(page.name)
    assert stale == [], "API pages naming no public module (or another module than their name)"


def test_every_page_is_in_a_toctree() -> None:
    """Sphinx only warns about orphans when it builds; catch them here too."""
    listed: set[str] = {"index"}
    for path, text in _pages(prose_only=False).items():
        for block in re.findall(r"\.\. toctree::\n((?:[ \t]+.*\n|\n)*)", text):
            for line in block.splitlines():
                entry = line.strip()
                if entry and not entry.startswith(":"):
                    rel = (path.parent / entry).relative_to(DOCS) if path.parent != DOCS else entry
                    listed.add(str(rel))
    pages = {str(p.relative_to(DOCS).with_suffix("")) for p in _pages(prose_only=False)}
    assert pages - listed == set(), "pages missing from every toctree"
    assert listed - pages == set(), "toctree entries without a page"


@pytest.mark.parametrize("page", [p for p, t in _pages(prose_only=True).items() if ">>> " in t])
def test_doctest_examples_in_the_docs_hold(page: Path) -> None:
    result = doctest.testfile(str(page), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest example(s) fail in {page}"


def _console_examples(page: Path) -> list[tuple[list[str], str]]:
    """``(argv, output)`` of each ``$ kf-ckpt ...`` line shown with its output in ``page``."""
    found = []
    text = page.read_text(encoding="utf-8")
    for block in re.findall(r"\.\. code-block:: console\n\n((?:[ ]{3}.*\n|\n)+)", text):
        lines = textwrap.dedent(block).rstrip("\n").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ kf-ckpt "):
                continue
            output = []
            for rest in lines[i + 1 :]:
                if rest.startswith("$ "):
                    break
                output.append(rest.rstrip())
            if any(output):
                found.append((shlex.split(line[2:])[1:], "\n".join(output).rstrip() + "\n"))
    return found


def _worked_example(base: Path) -> None:
    """The root of the retention worked example: 26 GB checkpoints as sparse files."""
    (base / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "job.toml", base / "examples" / "job.toml")
    config = load_config(base / "examples" / "job.toml")
    root = base / "runs" / "demo" / "checkpoints"
    for step in (1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 400, 500, 600, 700, 800):
        step_dir = root / f"step_{step}"
        step_dir.mkdir(parents=True)
        killed = step in (400, 800)  # 400: an abandoned save; 800: the save in flight
        with open(step_dir / "__0_0.distcp", "wb") as fh:
            fh.truncate((11 if killed else 26) * 10**9)
        if not killed:
            (step_dir / ".metadata").write_bytes(dcp_manifest({"__0_0.distcp": 26 * 10**9}))
        metadata = {
            "step": step,
            "tokens_seen": step * 4_194_304,
            "dynamic_milestone": config.is_dynamic_milestone(step),
            "checkpoint": config_to_dict(config),
        }
        (step_dir / "metadata.json").write_text(json.dumps(metadata))
    # step_400 was killed hours ago: idle past IN_FLIGHT_GRACE_S, so retention calls it abandoned.
    idle_s = time.time() - IN_FLIGHT_GRACE_S - 2 * 3600
    for path in (*(root / "step_400").iterdir(), root / "step_400"):
        os.utime(path, (idle_s, idle_s), follow_symlinks=False)
    update_latest(root, 700)


CONSOLE = [
    pytest.param(argv, output, id=f"{page.stem}: kf-ckpt {' '.join(argv)}")
    for page in CHECKED_OUTPUT
    for argv, output in _console_examples(page)
]


def test_the_docs_show_console_output() -> None:
    assert len(CONSOLE) >= 2, "the retention page shows real gc and plan output"


@pytest.mark.parametrize(("argv", "expected"), CONSOLE)
def test_console_output_in_the_docs_is_real(
    argv: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _worked_example(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, argv, prog_name="kf-ckpt")
    assert result.exit_code == 0, result.output
    shown = "\n".join(line.rstrip() for line in result.stdout.splitlines()) + "\n"
    assert shown == expected
