"""A corpus of hostile inputs fed to every command and to the manager.

The two promises under test: loading or listing a checkpoint never runs code from it, and gc
never trades good checkpoints for a broken one. Every case checks the exit code, that no
traceback is printed, and that no complete checkpoint was lost. Cases that need a file system
of their own (full, read-only) mount a small tmpfs and are skipped, with the reason, where the
tests cannot mount one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from kempnerforge.checkpoint.export._dcp_meta import read_dcp_metadata
from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.layout import LOCK_NAME, TRASH_NAME
from kempnerforge.checkpoint.store.verify import verify_checkpoint
from kempnerforge.cli.main import cli
from kempnerforge.config import CheckpointConfig
from kempnerforge.errors import CorruptCheckpointError
from tests._cli import invoke, run_installed
from tests.checkpoint._trees import (
    dcp_manifest,
    fingerprint,
    make_checkpoint,
    make_root,
)
from tests.checkpoint.export._ckpt import dcp_save, trained_model

MARKER = "PWNED"


def run(*args: str) -> Result:
    """``kf-ckpt ARGS`` in-process; an exception escaping the command fails the test."""
    result = invoke(*args, now_s=None)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that would create ``marker`` if anything unpickled them with plain pickle."""

    class System:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    class Eval:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (eval, (f"open({str(marker)!r}, 'w').close()",))

    class Exec:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    return {
        "os.system": pickle.dumps(System()),
        "eval": pickle.dumps(Eval()),
        "builtins.exec": pickle.dumps(Exec()),
        # Inside an otherwise valid DCP manifest, as one of its fields.
        "planted in a manifest": dcp_manifest({"__0_0.distcp": 64}, extra_global=("os", "system")),
    }


@pytest.fixture(scope="module")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root of three real DCP checkpoints (steps 100, 200, 300), written once per module."""
    root = tmp_path_factory.mktemp("real") / "ckpt"
    model, optimizer = trained_model()
    manager = CheckpointManager(CheckpointConfig(dir=str(root), keep_last_n=0), model, optimizer)
    for step in (100, 200, 300):
        manager.save(step)
    manager.close()
    return root


def _copy_tree(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# ---- 1. .metadata pickles that run code ---------------------------------------------------------


@pytest.mark.parametrize("payload", ["os.system", "eval", "builtins.exec", "planted in a manifest"])
def test_planted_metadata_never_runs_in_any_command_or_the_manager(
    tmp_path: Path, real_root: Path, payload: str
) -> None:
    root = _copy_tree(real_root, tmp_path / "ckpt")
    marker = tmp_path / MARKER
    (root / "step_300" / ".metadata").write_bytes(_payloads(marker)[payload])
    before = fingerprint(root / "step_200")

    ls = run("ls", str(root), "--json")
    assert ls.exit_code == 0
    status = {c["step"]: c["status"] for c in json.loads(ls.stdout)["checkpoints"]}
    assert status == {100: "complete", 200: "complete", 300: "corrupt"}
    assert run("gc", str(root), "--keep-last-n", "1").exit_code == 0
    shown = run("show", str(root), "--step", "300")
    assert shown.exit_code == 1 and "is corrupt" in shown.stderr
    exported = run("export", str(root / "step_300"), "-o", str(tmp_path / "out"))
    assert exported.exit_code == 1 and not (tmp_path / "out").exists()
    # The manager: an explicit load_path is refused; a resume falls back past it.
    model, optimizer = trained_model(seed=1)
    manager = CheckpointManager(CheckpointConfig(dir=str(root)), model, optimizer)
    with pytest.raises(CorruptCheckpointError, match="is corrupt"):
        manager.load(path=root / "step_300")
    assert manager.load()[0] == 200
    with pytest.raises(CorruptCheckpointError, match=r"is not a DCP metadata type"):
        read_dcp_metadata(root / "step_300")
    assert not marker.exists()
    assert (root / "step_200").is_dir() and fingerprint(root / "step_200") == before


def test_the_manager_reads_metadata_through_the_allowlist_even_past_verification(
    tmp_path: Path, real_root: Path
) -> None:
    """A file swapped in after the checks: DCP's own metadata read is the allowlisted one."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from kempnerforge.checkpoint.export._dcp_meta import SafeFileSystemReader, load_error

    root = _copy_tree(real_root, tmp_path / "ckpt")
    marker = tmp_path / MARKER
    tree = root / "step_300"
    (tree / ".metadata").write_bytes(_payloads(marker)["os.system"])
    with pytest.raises(CorruptCheckpointError, match="is not a DCP metadata type"):
        SafeFileSystemReader(tree).read_metadata()
    with pytest.raises(CorruptCheckpointError, match="is not a DCP metadata type"):
        try:
            dcp.load({"w": torch.zeros(2)}, storage_reader=SafeFileSystemReader(tree), no_dist=True)
        except CheckpointException as exc:
            raise load_error(exc, tree) from exc
    assert not marker.exists()


# ---- 2. truncated, empty and short ----------------------------------------------------------------


def test_metadata_truncated_at_every_byte_is_never_complete(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [200, 300], latest=300)
    step_dir = root / "step_100"
    dcp_save({"model": {"w": torch.ones(2)}, "step": 3}, step_dir)  # a small real checkpoint
    whole = (step_dir / ".metadata").read_bytes()
    assert verify_checkpoint(step_dir).complete and len(whole) < 4096
    for cut in range(len(whole)):
        (step_dir / ".metadata").write_bytes(whole[:cut])
        verdict = verify_checkpoint(step_dir)
        assert not verdict.complete and verdict.corrupt, cut
        with pytest.raises(CorruptCheckpointError):
            read_dcp_metadata(step_dir)
    catalog = scan(root, verify=True)
    assert [(c.step, c.complete, c.corrupt) for c in catalog.checkpoints] == [
        (100, False, True),
        (200, True, False),
        (300, True, False),
    ]
    assert run("gc", str(root), "--keep-last-n", "1").exit_code == 0
    assert [c.step for c in scan(root).checkpoints] == [100, 300]  # corrupt: kept


def test_gc_never_trades_good_checkpoints_for_an_empty_manifest(tmp_path: Path) -> None:
    """The reported case: latest -> step_300 with a 0-byte .metadata, gc --keep-last-n 1."""
    root = tmp_path / "ckpt"
    make_root(root, [100, 200, 300], latest=300)
    (root / "step_300" / ".metadata").write_bytes(b"")
    good = {s: fingerprint(root / f"step_{s}") for s in (100, 200)}
    ls = run("ls", str(root))
    assert ls.exit_code == 0 and "corrupt" in ls.stdout
    assert "remove it by hand" in ls.stderr
    result = run("gc", str(root), "--keep-last-n", "1", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["deleted"] == [100]  # 200 is the newest complete one now; 300 is kept
    assert {d["step"]: d["reason"] for d in doc["decisions"]}[300] == "latest"
    assert fingerprint(root / "step_200") == good[200] and (root / "step_300").is_dir()


@pytest.mark.parametrize("damage", ["missing shard", "short shard", "shard is a directory"])
def test_missing_or_short_shards_are_corrupt_and_kept(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200, 300], latest=300)
    shard = root / "step_200" / "__1_0.distcp"
    if damage == "missing shard":
        shard.unlink()
    elif damage == "short shard":
        shard.write_bytes(b"x" * 10)
    else:
        shard.unlink()
        shard.mkdir()
    result = run("gc", str(root), "--keep-last-n", "1", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["deleted"] == [100]  # 200 does not count toward keep_last_n, and stays
    assert {d["step"]: d["reason"] for d in doc["decisions"]}[200] == "corrupt"
    assert (root / "step_200").is_dir() and (root / "step_300").is_dir()


# ---- 3. hostile metadata.json and recorded configs ------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _huge(path: Path) -> None:
    with open(path, "wb") as fh:
        fh.truncate(17 * 2**20)  # sparse: over the 16 MiB that is ever read


HOSTILE_JSON = {
    "nested 10,000 deep": lambda p: p.write_text('{"a":' * 10_000 + "1" + "}" * 10_000),
    "nested 40 deep": lambda p: p.write_text('{"checkpoint": ' + "[" * 40 + "]" * 40 + "}"),
    "a 5,000-digit number": lambda p: p.write_text('{"step": ' + "9" * 5000 + "}"),
    "wrong types": lambda p: p.write_text('{"step": "x", "tokens_seen": [], "checkpoint": 3}'),
    "huge file": _huge,
    "not UTF-8": lambda p: p.write_bytes(b'{"step": "\xff"}'),
    "a FIFO": _fifo,
}


@pytest.mark.parametrize("kind", list(HOSTILE_JSON))
def test_hostile_metadata_json_degrades_to_a_warning(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200, 300], latest=300)
    path = root / "step_200" / "metadata.json"
    path.unlink()
    HOSTILE_JSON[kind](path)
    ls = run("ls", str(root))
    assert ls.exit_code == 0 and "step_200" in ls.stderr
    assert run("gc", str(root), "--keep-last-n", "2").exit_code == 0
    assert [c.step for c in scan(root).checkpoints] == [200, 300]
    plan = run("plan", "--max-steps", "100", "--set", f"checkpoint.dir={root}")
    assert plan.exit_code == 0


def test_the_manager_retention_round_survives_hostile_metadata_json(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200], latest=200)
    (root / "step_100" / "metadata.json").write_text('{"a":' * 10_000 + "1" + "}" * 10_000)
    (root / "step_200" / ".metadata").write_bytes(b"")  # and a corrupt one: kept
    model, optimizer = trained_model()
    manager = CheckpointManager(CheckpointConfig(dir=str(root), keep_last_n=1), model, optimizer)
    manager.save(300)
    manager.close()
    assert [c.step for c in scan(root).checkpoints] == [200, 300]
    assert verify_checkpoint(root / "step_300").complete


def test_unknown_keys_in_a_recorded_config_warn_once(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    config = {"keep_last_n": 1, "interval": 100, "from_the_future": True}
    make_root(root, [100, 200], latest=200, config=config)
    ls = run("ls", str(root))
    assert ls.exit_code == 0
    assert ls.stderr.count("from_the_future") == 1 and "ignored" in ls.stderr
    gc = run("gc", str(root), "--json")
    assert gc.exit_code == 0 and json.loads(gc.stdout)["deleted"] == [100]


# ---- 4. job files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[chekpoint]\nkeep_last_n = 1\n", "did you mean [checkpoint] instead of [chekpoint]?"),
        (b"[checkpoint]\ndir = '\xff'\n", "is not UTF-8 text"),
        (b"[checkpoint\n", "is not valid TOML"),
        (b"[checkpoint]\nkeep_lst_n = 1\n", "did you mean 'keep_last_n'?"),
    ],
)
def test_bad_job_files_exit_2_and_delete_nothing(tmp_path: Path, content: bytes, message: str):
    root = tmp_path / "ckpt"
    make_root(root, [100, 200, 300], latest=300)
    (tmp_path / "job.toml").write_bytes(content)
    for command in ("ls", "gc"):
        result = run(command, str(root), "-c", str(tmp_path / "job.toml"))
        assert result.exit_code == 2 and message in result.stderr
    assert [c.step for c in scan(root).checkpoints] == [100, 200, 300]


# ---- 5. file systems: read-only, unreadable, full, over-long paths ---------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` for the block; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_export_to_a_read_only_file_system_is_a_message(tmp_path: Path, real_root: Path) -> None:
    with tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        result = run("export", str(real_root), "-o", str(ro / "out"))
        assert result.exit_code == 1
        assert "Read-only file system (EROFS)" in result.stderr
        assert list(ro.iterdir()) == []


def test_export_to_a_full_file_system_leaves_nothing(tmp_path: Path, real_root: Path) -> None:
    with tmpfs(tmp_path / "full", "size=16k") as full:
        with contextlib.suppress(OSError), open(full / "filler", "wb") as fh:
            while True:  # every block in use
                fh.write(b"x" * 1024)
                fh.flush()
        result = run("export", str(real_root), "-o", str(full / "out"), "--dtype", "float32")
        assert result.exit_code == 1
        assert "No space left on device (ENOSPC)" in result.stderr
        assert "nothing was published" in result.stderr
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_gc_frees_space_on_a_full_disk_by_deleting_in_place(tmp_path: Path) -> None:
    # nr_inodes: every inode in use, so that creating .kf-trash fails with ENOSPC.
    with tmpfs(tmp_path / "full", "size=4m,nr_inodes=48") as full:
        root = full / "ckpt"
        root.mkdir()
        (root / LOCK_NAME).touch()
        steps: list[int] = []
        with contextlib.suppress(OSError):
            for step in range(100, 10_000, 100):
                make_checkpoint(root, step, files=1)
                steps.append(step)
        with contextlib.suppress(OSError):  # the last one may be half-written: drop it
            for leftover in root.glob(f"step_{step}"):
                subprocess.run(["rm", "-rf", str(leftover)], check=True)
        steps = [s for s in steps if (root / f"step_{s}").is_dir()]
        with contextlib.suppress(OSError):
            while True:  # take the inodes freed by that, too
                (root / f"filler{len(steps)}{os.urandom(4).hex()}").touch()
        with pytest.raises(OSError):
            (root / TRASH_NAME).mkdir()
        result = run("gc", str(root), "--keep-last-n", "2")
        assert result.exit_code == 0, result.stderr
        assert "deleted in place" in result.stderr
        assert [c.step for c in scan(root).checkpoints] == steps[-2:]
        assert not (root / TRASH_NAME).exists()


def test_an_unreadable_root_is_a_message(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200], latest=200)
    root.chmod(0o000)
    try:
        from tests.checkpoint._trees import as_unprivileged

        tmp_path.chmod(0o755)
        tmp_path.parent.chmod(0o755)

        def listing() -> tuple[int, str]:
            result = CliRunner().invoke(cli, ["gc", str(root), "--keep-last-n", "1"])
            return result.exit_code, result.stderr

        code, err = as_unprivileged(listing)
    finally:
        root.chmod(0o755)
    assert code in (1, 2) and "Permission denied" in err and "Traceback" not in err
    assert [c.step for c in scan(root).checkpoints] == [100, 200]


@pytest.mark.parametrize("command", ["ls", "gc", "show", "export"])
def test_paths_over_the_os_limit_are_messages(tmp_path: Path, command: str) -> None:
    long = str(tmp_path / ("x" * 300))
    args = [command, long] + (["-o", str(tmp_path / "out")] if command == "export" else [])
    result = run(*args)
    assert result.exit_code in (1, 2) and "File name too long" in result.stderr


def test_an_over_long_export_output_is_a_message(tmp_path: Path, real_root: Path) -> None:
    result = run("export", str(real_root), "-o", str(tmp_path / ("y" * 300) / "z"))
    assert result.exit_code in (1, 2) and "File name too long" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---- 6. huge plan inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        [],
        ["--set", "checkpoint.interval=1", "--set", "checkpoint.keep_last_n=0"],
        [
            "--set",
            "checkpoint.dyn_ckpt_window.start=0",
            "--set",
            "checkpoint.dyn_ckpt_window.stop=1000000000000",
        ],
    ],
)
def test_plan_of_a_trillion_steps_is_summarised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("plan", "--max-steps", str(10**12), "--json", *settings)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["save_count"] == sum(r["count"] for r in doc["runs"]) and len(doc["runs"]) <= 6
    assert len(result.stdout) < 10_000


# ---- 7. writes where they do not belong ------------------------------------------------------------


@pytest.mark.parametrize("where", ["step_300", "step_300/sub", "step_999", TRASH_NAME, LOCK_NAME])
def test_export_refuses_managed_paths_of_a_root(tmp_path: Path, real_root: Path, where: str):
    root = _copy_tree(real_root, tmp_path / "ckpt")
    before = sorted(p.name for p in root.iterdir())
    result = run("export", str(root), "--step", "100", "-o", str(root / where))
    assert result.exit_code == 2 and "will not write the export" in result.stderr
    assert sorted(p.name for p in root.iterdir()) == before
    assert sorted(p.name for p in (root / "step_300").iterdir()) == sorted(
        p.name for p in (real_root / "step_300").iterdir()
    )


@pytest.mark.parametrize("command", ["ls", "gc"])
def test_a_step_directory_given_as_the_root_is_refused(tmp_path: Path, command: str) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200], latest=200)
    before = sorted(p.name for p in (root / "step_100").iterdir())
    result = (
        run(command, str(root / "step_100"), "--keep-last-n", "1")
        if command == "gc"
        else run(command, str(root / "step_100"))
    )
    assert result.exit_code == 2
    assert "is a checkpoint (step 100), not a checkpoint root" in result.stderr
    assert f"kf-ckpt show {root / 'step_100'}" in result.stderr
    assert sorted(p.name for p in (root / "step_100").iterdir()) == before  # no lock file


def test_show_and_export_follow_the_latest_link(tmp_path: Path, real_root: Path) -> None:
    shown = run("show", str(real_root / "latest"), "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["step"] == 300
    exported = run("export", str(real_root / "latest"), "-o", str(tmp_path / "out"))
    assert exported.exit_code == 0 and "of step 300" in exported.stderr


def test_an_absolute_latest_inside_the_root_is_honoured(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200])
    os.symlink(root.resolve() / "step_100", root / "latest")
    ls = run("ls", str(root), "--json")
    assert ls.exit_code == 0 and json.loads(ls.stdout)["latest"] == 100
    assert "not inside the root" not in ls.stderr


# ---- 8. words: quiet cron, escaped names -----------------------------------------------------------


def test_in_flight_saves_do_not_warn_and_names_are_escaped(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200], latest=200)
    make_checkpoint(root, 300, complete=False, metadata=False)  # a save in flight
    (root / "evil\x1b[31mname").mkdir()
    ls = run("ls", str(root))
    assert ls.exit_code == 0
    assert "no metadata.json" not in ls.stderr
    assert "evil\\x1b[31mname" in ls.stderr and "\x1b" not in ls.stderr


def test_the_installed_script_refuses_a_planted_manifest(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200], latest=200)
    marker = tmp_path / MARKER
    (root / "step_200" / ".metadata").write_bytes(_payloads(marker)["os.system"])
    for args in (["ls", str(root)], ["gc", str(root), "--keep-last-n", "1"]):
        done = run_installed(*args, cwd=tmp_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr
        assert "step_200 is corrupt" in done.stderr
    assert not marker.exists() and (root / "step_100").is_dir() and (root / "step_200").is_dir()
