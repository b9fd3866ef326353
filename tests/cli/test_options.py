"""The helpers the commands share: one scan that also selects the config, the paused collector."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import pytest
from click.testing import CliRunner

from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.records import Catalog
from kempnerforge.checkpoint.store.selection import scan_root, select_root
from kempnerforge.cli._options import gc_paused
from kempnerforge.cli.main import cli
from kempnerforge.errors import CheckpointRootError, ConfigError
from tests.checkpoint._trees import as_unprivileged, make_checkpoint, unprivileged_dir
from tests.cli._tree import JOB_TOML


def _without_time(catalog: Catalog) -> Catalog:
    return dataclasses.replace(catalog, scanned_at_s=None)


@pytest.mark.parametrize(
    ("directory", "config_path", "overrides"),
    [
        ("ckpt", None, ()),
        ("ckpt", None, ("checkpoint.keep_last_n=5",)),
        ("ckpt", "job.toml", ()),
        (None, "job.toml", ("checkpoint.keep_last_n=0",)),
        (None, None, ("checkpoint.dir=ckpt",)),
        (None, None, ()),  # CheckpointConfig().dir: "checkpoints"
    ],
)
def test_scan_root_selects_what_select_root_then_scan_do(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    directory: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(JOB_TOML)  # its checkpoint.dir is ckpt
    for root in (tmp_path / "ckpt", tmp_path / "checkpoints"):
        make_checkpoint(root, 100, config={"keep_last_n": 1, "interval": 100})
        make_checkpoint(root, 200, config={"keep_last_n": 3, "interval": 100})
    root, expected = select_root(directory, config_path, overrides)
    catalog, selection = scan_root(directory, config_path, overrides)
    assert selection == expected
    assert _without_time(catalog) == _without_time(scan(root))


def test_a_bad_override_is_named_before_a_missing_root(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"unknown key checkpoint\.keep_lats_n"):
        select_root(missing, None, ["checkpoint.keep_lats_n=2"])
    with pytest.raises(ConfigError, match=r"unknown key checkpoint\.keep_lats_n"):
        scan_root(missing, None, ["checkpoint.keep_lats_n=2"])
    with pytest.raises(CheckpointRootError, match="does not exist"):
        scan_root(missing, None, ["checkpoint.keep_last_n=2"])


def test_an_unreadable_root_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    with unprivileged_dir(tmp_path) as base:
        root = base / "ckpt"
        make_checkpoint(root, 100, config={"keep_last_n": 1})
        root.chmod(0o000)
        try:

            def run() -> tuple[int, str, str]:
                result = CliRunner().invoke(cli, ["ls", str(root)])
                return result.exit_code, result.stdout, result.stderr

            exit_code, stdout, stderr = as_unprivileged(run)
        finally:
            root.chmod(0o755)
    assert (exit_code, stdout) == (2, "")
    assert stderr.startswith(f"kf-ckpt: error: cannot read checkpoint root {root}")


@pytest.mark.parametrize("enabled_before", [True, False])
def test_gc_paused_restores_the_collector_as_it_was(enabled_before: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled_before else gc.disable)()
        with gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled_before
        with pytest.raises(RuntimeError), gc_paused():
            raise RuntimeError("boom")
        assert gc.isenabled() is enabled_before
    finally:
        (gc.enable if was else gc.disable)()


def test_ls_leaves_the_collector_on(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "ckpt", 100)
    assert gc.isenabled()
    result = CliRunner().invoke(cli, ["ls", str(tmp_path / "ckpt")])
    assert result.exit_code == 0 and "1 checkpoint" in result.stdout
    assert gc.isenabled()
