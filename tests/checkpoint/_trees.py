"""Synthetic checkpoint trees for tests: the on-disk shape of a DCP save, without torch.

A synthetic ``step_<N>/`` has what scan, retention and gc look at: DCP shard files, the
``.metadata`` completeness marker (DCP writes it last), ``train_state.pt`` and
``metadata.json``. Tests that need loadable checkpoints write real ones with
``torch.distributed.checkpoint`` instead.

Example:
    >>> root = tmp_path / "ckpt"  # doctest: +SKIP
    >>> make_root(root, [100, 200, 300], latest=300)  # doctest: +SKIP
    >>> make_checkpoint(root, 400, complete=False)  # an in-flight save  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import pwd
import shutil
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kempnerforge.checkpoint.store.files import update_latest
from kempnerforge.checkpoint.store.layout import (
    DCP_METADATA,
    LATEST_NAME,
    METADATA_JSON,
    TRAIN_STATE,
    step_dir_name,
)

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.decisions import Decision, RetentionPlan

__all__ = [
    "add_entries",
    "as_unprivileged",
    "dcp_manifest",
    "decision_for",
    "fingerprint",
    "make_checkpoint",
    "make_root",
    "set_latest",
    "set_mtime",
    "snapshot",
    "tree_listing",
    "unprivileged_dir",
]

T = TypeVar("T")


def make_checkpoint(
    root: Path,
    step: int,
    *,
    complete: bool = True,
    milestone: bool | None = None,
    tokens_seen: int | None = None,
    config: dict[str, Any] | None = None,
    files: int = 2,
    size: int = 64,
    pp_stages: int | None = None,
    metadata: bool | str | bytes = True,
    extra: dict[str, Any] | None = None,
    mtime_s: float | None = None,
) -> Path:
    """Write a synthetic ``<root>/step_<step>/`` and return its path.

    Args:
        complete: write DCP's ``.metadata`` (in every ``pp<k>/`` stage when ``pp_stages``).
        milestone: record ``"dynamic_milestone"`` in metadata.json (omitted when None).
        tokens_seen: recorded in metadata.json; ``step * 1000`` when None.
        config: the ``"checkpoint"`` table recorded in metadata.json.
        files: DCP shard files (``__<i>_0.distcp``) per directory; ``size`` bytes each.
        pp_stages: write ``pp0 .. pp{n-1}/`` stage trees and record ``"pp_stages"``.
        metadata: False writes no metadata.json; a str or bytes is written verbatim (corrupt).
        extra: more keys for metadata.json.
        mtime_s: set the mtime of the directory and of everything in it (see :func:`set_mtime`):
            an old save nobody writes to any more, for the in-flight grace rule of retention.
    """
    step_dir = root / step_dir_name(step)
    step_dir.mkdir(parents=True)
    stage_dirs = [step_dir / f"pp{k}" for k in range(pp_stages)] if pp_stages else [step_dir]
    for stage_dir in stage_dirs:
        stage_dir.mkdir(exist_ok=True)
        for i in range(files):
            (stage_dir / f"__{i}_0.distcp").write_bytes(_payload(step, i, size))
        if complete:
            shards = {f"__{i}_0.distcp": size for i in range(files)}
            (stage_dir / DCP_METADATA).write_bytes(dcp_manifest(shards))
    (step_dir / TRAIN_STATE).write_bytes(_payload(step, -1, size))
    if metadata is True:
        doc: dict[str, Any] = {
            "step": step,
            "tokens_seen": step * 1000 if tokens_seen is None else tokens_seen,
        }
        if milestone is not None:
            doc["dynamic_milestone"] = milestone
        if config is not None:
            doc["checkpoint"] = config
        if pp_stages:
            doc["pp_stages"] = pp_stages
        doc.update(extra or {})
        (step_dir / METADATA_JSON).write_text(json.dumps(doc))
    elif isinstance(metadata, str):
        (step_dir / METADATA_JSON).write_text(metadata)
    elif isinstance(metadata, bytes):
        (step_dir / METADATA_JSON).write_bytes(metadata)
    if mtime_s is not None:
        set_mtime(step_dir, mtime_s)
    return step_dir


def add_entries(step_dir: Path, count: int) -> None:
    """``count`` more files in ``step_dir``, standing in for the shards of a many-rank save.

    Hard links to one empty file: creating inodes is slow on a busy disk, and each entry costs
    a walk one ``lstat`` and a removal one ``unlink`` all the same.
    """
    fd = os.open(step_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open("__0_1.distcp", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        for i in range(1, count):
            os.link("__0_1.distcp", f"__{i}_1.distcp", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def dcp_manifest(shards: dict[str, int], *, extra_global: tuple[str, str] | None = None) -> bytes:
    """The bytes of a DCP ``.metadata`` recording one item of ``length`` bytes per shard file.

    Written opcode by opcode (pickle protocol 2), the way ``pickle.dump`` of DCP's ``Metadata``
    lays it out -- classes by module and name, instances by ``NEWOBJ`` and ``BUILD`` -- so that
    synthetic trees get a manifest the allowlisted reader accepts, without importing torch.
    ``extra_global`` plants a reference to another global (a hostile manifest).
    """

    def text(value: str) -> bytes:
        data = value.encode()
        return b"X" + len(data).to_bytes(4, "little") + data

    def integer(value: int) -> bytes:
        data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data  # LONG1: any size

    def instance(module: str, name: str, fields: dict[str, bytes]) -> bytes:
        body = b"".join(text(k) + v for k, v in fields.items())
        cls = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        return cls + b")\x81}(" + body + b"ub"

    dcp_md, dcp_fs = (
        "torch.distributed.checkpoint.metadata",
        "torch.distributed.checkpoint.filesystem",
    )
    items = b""
    for i, (name, length) in enumerate(sorted(shards.items())):
        index = instance(dcp_md, "MetadataIndex", {"fqn": text(f"t{i}"), "index": b"N"})
        info = instance(
            dcp_fs,
            "_StorageInfo",
            {"relative_path": text(name), "offset": integer(0), "length": integer(length)},
        )
        items += index + info
    planted = b""
    if extra_global is not None:
        module, name = extra_global
        planted = (
            text("planted") + b"c" + f"{module}\n{name}\n".encode() + b"X\x00\x00\x00\x00\x85R"
        )
    metadata = instance(
        dcp_md,
        "Metadata",
        {"state_dict_metadata": b"}", "storage_data": b"}(" + items + b"u", "version": text("1")},
    )
    if planted:
        metadata = metadata[:-2] + planted + b"ub"
    return b"\x80\x02" + metadata + b"."


def decision_for(plan: RetentionPlan, step: int) -> Decision:
    """The plan's decision about checkpoint ``step`` (fails the test when it has none)."""
    found = [d for d in plan.decisions if d.step == step]
    assert len(found) == 1, f"the plan has {len(found)} decisions about step {step}"
    return found[0]


def set_mtime(path: Path, mtime_s: float) -> None:
    """Set the access and modification time of ``path`` and everything under it (no follow)."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (mtime_s, mtime_s), follow_symlinks=False)
    os.utime(path, (mtime_s, mtime_s), follow_symlinks=False)


def make_root(
    root: Path, steps: Iterable[int], *, latest: int | None = None, **kwargs: Any
) -> Path:
    """A checkpoint root with a complete checkpoint per step; ``latest`` names one of them."""
    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        make_checkpoint(root, step, **kwargs)
    if latest is not None:
        update_latest(root, latest)
    return root


def set_latest(root: Path, target: str) -> None:
    """Point ``<root>/latest`` at an arbitrary (possibly hostile) ``target``."""
    link = root / LATEST_NAME
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)


def tree_listing(path: Path) -> dict[str, str]:
    """Every entry under ``path`` (relative path -> kind and size or link target), no follow."""
    listing: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(path))
            if full.is_symlink():
                listing[rel] = f"link -> {os.readlink(full)}"
            elif full.is_dir():
                listing[rel] = "dir"
            else:
                listing[rel] = f"file {full.stat().st_size}"
    return listing


def snapshot(root: Path) -> dict[str, dict[str, str]]:
    """``tree_listing`` of every real directory directly under ``root``, by name."""
    return {
        entry.name: tree_listing(Path(entry.path))
        for entry in os.scandir(root)
        if entry.is_dir(follow_symlinks=False)
    }


def fingerprint(path: Path) -> dict[str, tuple[str, int, int, str]]:
    """Kind, size, mode and content hash of everything under ``path`` (no symlink followed)."""
    found: dict[str, tuple[str, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()[:16]
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(full)
            kind = stat.filemode(st.st_mode)[0]
            found[os.path.relpath(full, path)] = (kind, st.st_size, st.st_mode, digest)
    return found


@contextlib.contextmanager
def unprivileged_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory an unprivileged user can work in (``tmp_path`` unless the tests run as root).

    As root, pytest's ``tmp_path`` sits under a 0700 directory, so a world-writable directory
    is made under the system temp dir instead and removed afterwards.
    """
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="kf-ckpt-test-"))
    try:
        path.chmod(0o777)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_unprivileged(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a forked child without root privileges and return its (pickled) result.

    Permission bits only bind a process that is not root: when the tests run as root the child
    drops to ``nobody`` first. Forking (rather than starting a new interpreter) keeps every
    imported module available although ``nobody`` may not read the virtualenv.
    """
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            import pytest

            pytest.skip("running as root and there is no 'nobody' user to drop to")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            outcome: tuple[str, Any] = ("ok", fn())
        except BaseException:
            outcome = ("error", traceback.format_exc())
        try:
            with os.fdopen(write_fd, "wb") as fh:
                pickle.dump(outcome, fh)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"unprivileged child failed:\n{value}")
    return value


def _payload(step: int, index: int, size: int) -> bytes:
    seed = f"{step}:{index}:".encode()
    return (seed * (size // len(seed) + 1))[:size]
